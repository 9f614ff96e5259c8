"""Claims of README.md and docs/runbook.md that had no test, each checked through the real parts:
``hap demo`` in a subprocess, Airflow's own callbacks and ``dag.test()``, the KFP local runner, GX and a
real TorchServe on 127.0.0.1.

``hap demo`` runs once for the module; its workspace (three simulated days, the last one trained,
gated and deployed to a real TorchServe) serves the deploy, rollback and request claims. A second,
undeployed workspace holds a corrupted middle day for the alert and quarantine claims.
"""

import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from hap.contract import read_partition, write_partition
from hap.workspace import Workspace
from registry.store import Registry
from serving.server import LocalTorchServe
from workflow.airflow_local import DAGS_FOLDER, run_day

DAY1, BAD, DAY3 = "2026-11-20", "2026-11-21", "2026-11-22"
HAP = Path(sys.executable).with_name("hap")


def record_alert(alert: dict) -> None:
    """The notifier named in ``$HAP_ALERT_NOTIFIER`` by the alert test: one JSON line per alert."""
    with open(os.environ["HAP_TEST_NOTIFIER_LOG"], "a") as f:
        f.write(json.dumps(alert, default=str) + "\n")


def _corrupt(ws, ds: str) -> None:
    """Labels on non-exposed rows: a row-level failure, so validation quarantines the day."""
    cand = read_partition(ws.data, "candidates", ds)
    click = cand["click"].to_numpy().copy()
    click[np.asarray(cand["source"]) == "global"] = 1
    i = cand.schema.get_field_index("click")
    write_partition(ws.data, "candidates", ds, cand.set_column(i, "click", pa.array(click, pa.int8())))


def _load_dag(name: str):
    spec = importlib.util.spec_from_file_location(name, DAGS_FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ws(tmp_path_factory, simulated_workspace):
    """Three simulated days, the middle one corrupted: nothing trained or deployed."""
    with simulated_workspace(tmp_path_factory.mktemp("claims"), DAY1, 3) as ws:
        _corrupt(ws, BAD)
        yield ws


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``hap demo`` (what ``make demo`` runs) on a small world, in a subprocess; its TorchServe stays up
    for the module (on the session's ports) and is stopped afterwards."""
    home = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "HAP_HOME": str(home)}
    env.pop("AIRFLOW_HOME", None)  # the demo keeps Airflow in its workspace, as `make demo` does
    try:
        proc = subprocess.run(
            [str(HAP), "demo", "--days", "3", "--requests", "1000", "--candidates", "300"],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        yield Workspace(home), proc
    finally:
        stop = subprocess.run([str(HAP), "serve", "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr[-3000:]
        assert not LocalTorchServe(home / "serving").is_running()


@pytest.fixture
def deployed(demo):
    """The demo's workspace with its deployed version (the test fails here if the demo did not deploy)."""
    ws, proc = demo
    prod = Registry(ws).production()
    assert prod, f"the demo deployed nothing:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return ws, prod["version"], next(m["ds"] for m in Registry(ws).versions() if m["version"] == prod["version"])


@pytest.fixture
def server(demo):
    return LocalTorchServe(demo[0].serving)


# --- README: "make demo" ---------------------------------------------------------------------------


@pytest.mark.slow
def test_hap_demo_runs_end_to_end_and_answers_http_200(demo):
    """``hap demo`` (what ``make demo`` runs): exit 0, the five stages, a ranked answer with HTTP 200."""
    _, proc = demo
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    for stage in ("[1/5] simulated 3 day(s)", "[2/5] running DAG hap_daily", "[3/5] validation:",
                  "[4/5] gate: PASS", "[5/5] sample request (300 candidates) -> HTTP 200"):  # fmt: skip
        assert stage in out, (stage, out[-4000:])
    assert re.search(r"DAG run success in", out) and "deployed version" in out, out[-4000:]
    assert re.search(r"#1 +item \d+ +score", out), out[-4000:]  # the top of the ranked answer
    # the day's report and the on-call view of the demo's workspace
    ws = demo[0]
    day = re.search(r"running DAG hap_daily for ds=(\S+)", out).group(1)
    assert f"daily report: {(ws.report_dir(day) / 'index.html').as_uri()}" in out, out[-4000:]
    status = subprocess.run([str(HAP), "--home", str(ws.root), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"SERVING   {Registry(ws).production()['version']}" in status.stdout and "healthy" in status.stdout


# --- README / runbook: alerts ----------------------------------------------------------------------


@pytest.mark.slow
def test_failed_task_and_missed_deadline_alert_file_and_notifier(ws, tmp_path, monkeypatch):
    """A failed task (the real validate task of a corrupted day through ``dag.test()``) and a missed
    deadline (the DAG's own DeadlineAlert callback, run by Airflow's callback executor with the context
    the scheduler sends) each land in ``alerts.jsonl`` and reach ``$HAP_ALERT_NOTIFIER``, naming the
    runbook section."""
    import structlog
    from airflow.api_fastapi.core_api.datamodels.dag_run import DAGRunResponse
    from airflow.sdk.execution_time.callback_supervisor import execute_callback

    notified = tmp_path / "notified.jsonl"
    monkeypatch.setenv("HAP_TEST_NOTIFIER_LOG", str(notified))
    monkeypatch.setenv("HAP_ALERT_NOTIFIER", f"{__name__}:record_alert")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    alerts_file = ws.root / "alerts" / "alerts.jsonl"

    def alerts(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    # 1. a task failure: the day fails validation, the task's on_failure_callback alerts
    n_before = len(alerts(alerts_file))
    states = run_day(BAD, ws)
    assert states["validate"] == "failed" and states["dag_run"] == "failed", states
    written = [a for a in alerts(alerts_file)[n_before:] if a["kind"] == "task_failed"]
    assert [a["task_id"] for a in written] == ["validate"], written
    assert written[0]["ds"] == BAD and "#inspect-a-failed-validation" in written[0]["hint"]
    assert "DATA FAILED VALIDATION" in written[0]["error"]
    sent = [a for a in alerts(notified) if a["kind"] == "task_failed"]
    assert sent == written, (sent, written)

    # 2. a late run: the DAG's DeadlineAlert callback, as the scheduler's executor calls it
    monkeypatch.setenv("HAP_RUN_DEADLINE_H", "6")  # run_day turns it off for dag.test(); the DAG has it on
    monkeypatch.setenv("HAP_HOME", str(ws.root))
    daily = _load_dag("hap_daily").daily_dag
    deadlines = daily.deadline if isinstance(daily.deadline, list) else [daily.deadline]
    assert len(deadlines) == 1 and deadlines[0].interval == dt.timedelta(hours=6)
    callback = deadlines[0].callback
    assert callback.path == "workflow.alerts.deadline_missed"
    run_id = f"scheduled__{DAY3}T00:00:00+00:00"
    # what airflow.models.deadline.Deadline.handle_miss sends: the run as DAGRunResponse JSON
    dag_run = {"dag_run_id": run_id, "dag_id": "hap_daily", "logical_date": f"{DAY3}T00:00:00Z",
               "queued_at": f"{DAY3}T00:00:05Z", "state": "running", "run_type": "scheduled"}  # fmt: skip
    assert set(dag_run) <= set(DAGRunResponse.model_fields)
    context = {"dag_run": dag_run, "deadline": {"id": "d-1", "deadline_time": f"{DAY3}T06:00:05Z"}}
    ok, error = execute_callback(callback.path, {**callback.kwargs, "context": context}, "hap_daily.py",
                                 str(DAGS_FOLDER), structlog.get_logger())  # fmt: skip
    assert ok, error
    late = [a for a in alerts(alerts_file) if a["kind"] == "deadline_missed"]
    assert len(late) == 1 and "#a-late-run" in late[0]["hint"], late
    assert late[0]["dag_id"] == "hap_daily" and late[0]["run_id"] == run_id, late[0]
    assert [a for a in alerts(notified) if a["kind"] == "deadline_missed"] == late


# --- runbook: a quarantined earlier window day is skipped ------------------------------------------


@pytest.mark.slow
def test_quarantined_window_day_is_skipped_in_training(ws, tmp_path):
    """Validating DAY3 validates the window's earlier days too and quarantines BAD; the prepare step
    (what the training pipeline runs first) then reads DAY1 and DAY3 only and says why BAD is missing."""
    from models.prepare import prepare
    from workflow.flow import load_config, validate

    cfg = load_config()
    assert cfg.window_days == 3
    validate(DAY3, ws, cfg)
    assert ws.validation_status(BAD) == "quarantined"
    assert ws.validation_status(DAY1) == ws.validation_status(DAY3) == "passed"
    manifest = prepare(str(ws.root), DAY3, cfg, str(tmp_path / "prepared"))
    assert manifest["days"] == [DAY1, DAY3]
    assert manifest["skipped_days"] == {BAD: "quarantined"} and manifest["absent_days"] == []
    assert manifest["train_requests"] > 0


# --- README: the deploy smoke compares served answers with the offline scorer ----------------------


@pytest.mark.slow
def test_smoke_with_scores_differing_from_the_offline_scorer_fails_the_deploy(deployed, server, tmp_path):
    """TorchServe has loaded version V from one archive, and the archive in the model store (what the
    offline scorer runs) has other weights: the smoke sees the scores differ, the deploy fails and the
    serving default stays where it was."""
    import torch

    from serving.archive import build_archive, mar_name
    from serving.deploy import clone_version
    from serving.errors import DeployFailed
    from workflow.flow import deploy, load_config

    ws, _, ds = deployed
    cfg = load_config()
    registry = Registry(ws)
    before = registry.production()
    served = server.default_version()
    version = clone_version(ws, before["version"], ds, 0.25)
    mar = server.model_store / mar_name(version)
    try:
        build_archive(registry.version_dir(version), version, cfg, server.model_store)
        server.register(mar.name)  # TorchServe loads these weights
        tampered = tmp_path / "tampered"
        shutil.copytree(registry.version_dir(version), tampered)
        for part in ("light", "expressive"):
            state = torch.load(tampered / part / "weights.pt", weights_only=True)
            state["head.bias"] = state["head.bias"] + 1.0  # same ranking, every score shifted
            torch.save(state, tampered / part / "weights.pt")
        build_archive(tampered, version, cfg, server.model_store)  # the archive the offline scorer reads
        with pytest.raises(DeployFailed, match=rf"scores differ.*|still serving {served}") as err:
            deploy(ds, version, ws)
        assert "scores differ from the offline evaluation" in str(err.value), err.value
        assert f"still serving {served}" in str(err.value)
        assert server.default_version() == served
        assert registry.production() == before
    finally:
        if version != server.default_version() and version in {v["modelVersion"] for v in server.versions()}:
            server.unregister(version)
        mar.unlink(missing_ok=True)
        shutil.rmtree(registry.version_dir(version), ignore_errors=True)


# --- runbook: roll back through the hap_rollback DAG -----------------------------------------------


@pytest.mark.slow
def test_rollback_dag_restores_the_previous_version_and_records_the_reason(deployed, server, monkeypatch):
    from serving.deploy import clone_version
    from workflow.flow import deploy

    ws, old, ds = deployed
    monkeypatch.setenv("HAP_HOME", str(ws.root))
    registry = Registry(ws)
    new = clone_version(ws, old, ds, 0.1)
    deploy(ds, new, ws)  # a second deployed version: register, smoke, default
    assert registry.production()["version"] == new and registry.production()["previous"] == old
    assert server.default_version() == new

    reason = f"on-call: CTR dip after the {ds} deploy"
    dag_run = _load_dag("hap_rollback").rollback_dag.test(run_conf={"reason": reason})
    assert str(dag_run.state) == "success", {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    pointer = registry.production()
    assert pointer["version"] == old and pointer["previous"] == new and reason in pointer["reason"]
    assert server.default_version() == old
    events = [json.loads(line) for line in (registry.root / "events.jsonl").read_text().splitlines()]
    last = [e for e in events if e["event"] == "set_production"][-1]
    assert last["version"] == old and reason in last["reason"]
    assert {v["modelVersion"] for v in server.versions()} >= {old, new}  # rolled-back-from kept warm


# --- README: hap request -------------------------------------------------------------------------


@pytest.mark.slow
def test_hap_request_prints_a_ranked_answer_and_save_writes_the_body(deployed, server, capsys, tmp_path):
    from workflow.cli import main

    ws, _, ds = deployed
    assert main(["--home", str(ws.root), "request", "--ds", ds, "--candidates", "300", "--seed", "3"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model_version"] == Registry(ws).production()["version"] and answer["n_candidates"] == 300
    items = answer["items"]
    assert [it["rank"] for it in items] == list(range(1, answer["m"] + 1)) and answer["m"] == 50
    assert len({it["item_id"] for it in items}) == len(items)
    assert all(it["stage"] in ("light", "expressive") and np.isfinite(it["score"]) for it in items)

    saved = tmp_path / "req.json"
    rc = main(["--home", str(ws.root), "request", "--ds", ds, "--candidates", "300", "--columns",
               "--save", str(saved)])  # fmt: skip
    assert rc == 0 and f"request written to {saved}" in capsys.readouterr().out
    body = json.loads(saved.read_text())
    assert set(body) == {"user", "items"} and len(body["items"]["item_id"]) == 300
    resp = server.predict(body)  # what was saved is a request the server answers
    assert resp.status_code == 200 and resp.json()["n_candidates"] == 300, resp.text


# --- README: environment variables ------------------------------------------------------------------


def test_every_environment_variable_the_product_reads_is_in_the_readme_table():
    """The README's table names every ``HAP_*`` variable the product's code reads, and nothing else;
    every ``orchestration.*`` override of ``hap.config.ENV_OVERRIDES`` is in it."""
    from hap.config import ENV_OVERRIDES

    root = Path(__file__).resolve().parents[1]
    packages = ("hap", "hap_runtime", "models", "workflow", "serving", "registry", "expectations", "samples",
                "components", "dags")  # fmt: skip
    in_code = {
        v for p in packages for f in (root / p).rglob("*.py") for v in re.findall(r"HAP_[A-Z0-9_]+", f.read_text())
    }
    readme = (root / "README.md").read_text()
    table = readme[readme.index("### Environment variables") :].split("\n\n")[2]
    in_table = set(re.findall(r"`(HAP_[A-Z0-9_]+)`", table))
    assert in_code == in_table, (sorted(in_code - in_table), sorted(in_table - in_code))
    assert set(ENV_OVERRIDES) <= in_table
