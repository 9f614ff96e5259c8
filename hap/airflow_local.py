"""Run the daily DAG on the embedded Airflow (SQLite metadata DB, ``dag.test()``)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from hap.workspace import Workspace

DAGS_FOLDER = Path(os.environ.get("HAP_DAGS_FOLDER", Path(__file__).resolve().parents[1] / "dags"))
DAG_FILE = DAGS_FOLDER / "hap_daily.py"


def airflow_env(ws: Workspace) -> dict[str, str]:
    """Environment for a local Airflow whose home lives in the workspace."""
    return {
        "AIRFLOW_HOME": str(ws.airflow),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "HAP_HOME": str(ws.root),
        "GX_ANALYTICS_ENABLED": "false",
    }


def init_airflow() -> None:
    """Create the metadata DB of the current ``$AIRFLOW_HOME`` once (``airflow db migrate``)."""
    home = Path(os.environ["AIRFLOW_HOME"])
    marker = home / ".hap_db_migrated"
    if marker.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "airflow", "db", "migrate"]
    subprocess.run(cmd, env=dict(os.environ), check=True, capture_output=True, text=True)
    marker.touch()


def run_day(ds: str, ws: Workspace | None = None, conf: dict | None = None) -> dict[str, str]:
    """Run one daily DAG run for ``ds`` in-process with ``dag.test()``; return task states.

    Uses the process's ``$AIRFLOW_HOME`` if set (Airflow reads it at import), else the workspace's.
    """
    ws = ws or Workspace.from_env()
    for key, value in airflow_env(ws).items():
        if key == "HAP_HOME":
            os.environ[key] = value  # the tasks find the workspace through it
        else:
            os.environ.setdefault(key, value)
    init_airflow()
    spec = importlib.util.spec_from_file_location("hap_daily", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    day = dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC)
    dag_run = module.daily_dag.test(logical_date=day, run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    states["dag_run"] = str(dag_run.state)
    return states


def run_day_subprocess(ds: str, ws: Workspace, log_file: Path) -> dict[str, str]:
    """The same, in a child process whose (verbose) Airflow log goes to ``log_file``."""
    import json

    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **airflow_env(ws)}
    with log_file.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "hap.cli", "run-day", "--ds", ds, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"DAG run for ds={ds} produced no result (exit {proc.returncode}); see {log_file}")
    return json.loads(lines[-1])
