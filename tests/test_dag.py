"""DAG policy: every DAG parses without errors, imports nothing heavy at parse time,
and carries tags, an owner, retries, timeouts, docs and validated params."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"
DAG_FILES = sorted(DAGS.glob("*.py"))


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag


def test_every_dag_meets_the_policy(bag):
    assert set(bag.dags) == {"hap_daily", "hap_rollback"}
    for dag in bag.dags.values():
        assert dag.tags and "hap" in dag.tags, dag.dag_id
        assert dag.doc_md and "runbook" in dag.doc_md.lower(), dag.dag_id
        assert dag.max_active_runs == 1, dag.dag_id
        for t in dag.tasks:
            assert t.owner == "recsys-preranking", (dag.dag_id, t.task_id)
            assert t.execution_timeout is not None, (dag.dag_id, t.task_id)
            assert t.retries is not None, (dag.dag_id, t.task_id)


def test_daily_dag_wiring_retries_and_alerts(bag):
    dag = bag.dags["hap_daily"]
    order = ["wait_for_partition", "validate", "train", "gate", "package", "promote", "deploy", "report"]
    assert {t.task_id for t in dag.tasks} == set(order)
    # every task says on its page what it does and where to look
    assert all(t.doc_md and len(t.doc_md) > 80 for t in dag.tasks), [t.task_id for t in dag.tasks if not t.doc_md]
    assert dag.get_task("validate").upstream_task_ids == {"wait_for_partition"}
    assert dag.get_task("train").upstream_task_ids == {"validate"}
    assert dag.get_task("package").upstream_task_ids == {"gate", "train"}
    assert dag.get_task("deploy").upstream_task_ids == {"package", "promote"}
    # the report runs after everything whatever happened, and never decides the run's state
    report = dag.get_task("report")
    assert report.is_teardown and not report.on_failure_fail_dagrun
    assert report.upstream_task_ids == {"deploy"} and not report.downstream_task_ids
    assert "reports/ds=<ds>/index.html" in report.doc_md
    # every task's page links the day's report and Data Docs: the API server reads the serialized DAG
    from airflow.serialization.serialized_objects import DagSerialization

    served = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    for task in served.tasks:
        assert sorted(task.extra_links) == ["Data Docs (validation)", "HAP daily report"], task.task_id
    # XComs carry what the next task uses: the run directory, then the version; no task takes an
    # argument only to fake an ordering (those edges are ``chain``)
    handed = {
        t.task_id: [a.operator.task_id for a in t.op_args] for t in dag.tasks if hasattr(t, "op_args")
    }  # fmt: skip
    assert handed == {"wait_for_partition": [], "validate": [], "train": [], "gate": ["train"],
                      "package": ["train"], "promote": ["package"], "deploy": ["package"], "report": []}  # fmt: skip
    # bad data is not transient: a quarantine fails at once (AirflowFailException); a validator error retries once
    assert dag.get_task("validate").retries == 1
    assert dag.start_date.tzinfo is not None and dag.start_date.year <= 2015  # historical dates can be run
    train = dag.get_task("train")
    assert train.retries >= 2 and train.retry_exponential_backoff
    assert all(t.on_failure_callback for t in dag.tasks)
    sensor = dag.get_task("wait_for_partition")
    assert sensor.mode == "reschedule" and sensor.timeout > 0


def test_daily_dag_params_are_validated(bag):
    dag = bag.dags["hap_daily"]
    assert set(dag.params) == {"window_days", "skip_deploy", "force_deploy", "force_reason", "kfp_mode", "shadow",
                               "retrain"}  # fmt: skip
    ok = copy.deepcopy(dag.params)
    ok.update({"window_days": 7, "kfp_mode": "cluster", "shadow": True})
    ok.validate()
    bad_values = ({"window_days": 0}, {"window_days": "three"}, {"kfp_mode": "spark"}, {"skip_deploy": "yes"},
                  {"shadow": "maybe"}, {"retrain": "no"})  # fmt: skip
    for bad in bad_values:
        params = copy.deepcopy(dag.params)
        with pytest.raises(Exception):  # noqa: B017 - Airflow raises ParamValidationError
            params.update(bad)
            params.validate()


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_without_heavy_imports(dag_file):
    """The scheduler parses DAG files often: nothing heavy of theirs or ours may load at parse time.
    (How fast it parses is a benchmark's business, not a test's.)"""
    heavy = ("torch", "great_expectations", "pandas", "pyarrow", "kfp", "workflow.flow", "models", "serving",
             "expectations", "components", "samples")  # fmt: skip
    code = (
        "import importlib.util, json, sys;"
        f"s = importlib.util.spec_from_file_location('d', {str(dag_file)!r});"
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m);"
        f"print(json.dumps([k for k in {heavy!r} if k in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"{dag_file.name} failed to parse:\n{out.stderr[-3000:]}"
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_empty_params_keep_the_configured_window_and_kfp_mode(bag, tmp_path, monkeypatch):
    """A run's params override ``$HAP_CONFIG`` only where set: the defaults are empty, so a config that
    says ``kfp: {mode: cluster}`` is not silently turned back into a local run."""
    from workflow.flow import load_config

    config = tmp_path / "hap.yaml"
    config.write_text("window_days: 5\nkfp: {mode: cluster}\n")
    monkeypatch.setenv("HAP_CONFIG", str(config))
    params = bag.dags["hap_daily"].params.dump()
    assert params["window_days"] is None and params["kfp_mode"] is None
    cfg = load_config(params)
    assert (cfg.window_days, cfg.kfp.mode) == (5, "cluster")
    cfg = load_config({**params, "window_days": 2, "kfp_mode": "local"})
    assert (cfg.window_days, cfg.kfp.mode) == (2, "local")
