"""DAG policy: parses without errors, wires the flow, imports nothing heavy at parse time."""

import json
import subprocess
import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parents[1] / "dags"


def test_dag_bag_imports_without_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags.get("hap_daily")
    assert dag is not None and dag.max_active_runs == 1
    assert {t.task_id for t in dag.tasks} == {"validate", "train", "gate", "package", "deploy"}
    assert dag.get_task("train").upstream_task_ids == {"validate"}
    assert dag.get_task("package").upstream_task_ids == {"gate"}
    assert dag.get_task("deploy").upstream_task_ids == {"package"}
    assert dag.get_task("validate").retries == 0
    assert all(t.owner == "recsys-preranking" for t in dag.tasks)


def test_dag_file_has_no_heavy_top_level_imports():
    code = (
        "import importlib.util, json, sys;"
        f"s = importlib.util.spec_from_file_location('d', {str(DAGS / 'hap_daily.py')!r});"
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m);"
        "print(json.dumps([k for k in ('torch', 'great_expectations', 'pandas', 'kfp') if k in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
