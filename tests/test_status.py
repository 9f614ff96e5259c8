"""``hap status`` and the step records it reads: runs, quarantines, open alerts, exit codes.

The records here are written by the real code paths (``runlog.recorded``, ``alerts.notify``,
``Workspace.record_validation``); the end-to-end view on a trained workspace is in test_e2e.py."""

import json
import subprocess
import sys

import pytest

from hap.workspace import Workspace, write_json_atomic
from workflow import runlog
from workflow.alerts import notify
from workflow.status import collect, exit_code, render


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Workspace:
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID", raising=False)
    return Workspace(tmp_path / "ws")


def _run(ws: Workspace, ds: str, run_id: str, monkeypatch, steps: dict[str, str | Exception]) -> None:
    """Record ``steps`` of one DAG run: each ends with its outcome, or fails with the exception."""
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", run_id)
    for name, result in steps.items():
        try:
            with runlog.recorded(ws, ds, name) as note:
                if isinstance(result, Exception):
                    raise result
                note["outcome"] = result
        except RuntimeError:
            pass
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID")


def test_a_step_is_recorded_with_its_state_duration_outcome_and_actor(ws, monkeypatch):
    _run(ws, "2026-11-20", "scheduled__1", monkeypatch, {"validate": "passed", "train": RuntimeError("OOM")})
    record = runlog.read(ws, "2026-11-20")
    assert record["run_id"] == "scheduled__1"
    v, t = record["steps"]["validate"], record["steps"]["train"]
    assert v["state"] == "success" and v["outcome"] == "passed" and v["seconds"] >= 0 and v["error"] is None
    assert v["by"].startswith("airflow ") and "scheduled__1" in v["by"]
    assert t["state"] == "failed" and t["error"] == "RuntimeError: OOM" and t["ended"] >= t["started"]


def test_a_new_dag_run_replaces_the_days_record_and_a_cli_step_updates_it(ws, monkeypatch):
    """Idempotent by day: a rerun of the day replaces its steps instead of adding beside them."""
    ds = "2026-11-20"
    _run(ws, ds, "scheduled__1", monkeypatch, {"validate": "passed", "train": RuntimeError("OOM")})
    _run(ws, ds, "manual__2", monkeypatch, {"validate": "passed"})
    record = runlog.read(ws, ds)
    assert record["run_id"] == "manual__2" and set(record["steps"]) == {"validate"}
    assert record["previous"]["run_id"] == "scheduled__1" and "train" in record["previous"]["steps"]
    with runlog.recorded(ws, ds, "gate") as note:  # on-call re-gates from the CLI: same run, one more step
        note["outcome"] = "PASS — all slices"
    record = runlog.read(ws, ds)
    assert record["run_id"] == "manual__2" and record["steps"]["gate"]["run_id"] == "cli"
    assert set(record["steps"]) == {"validate", "gate"}


def test_status_of_an_empty_workspace_says_nothing_serves_and_exits_1(ws):
    status = collect(ws, live=False)
    assert status["serving"] is None and status["runs"] == [] and status["alerts"] == []
    assert exit_code(status) == 1
    text = render(status)
    assert "SERVING   nothing" in text and "NEEDS ATTENTION (exit 1)" in text


def test_status_shows_runs_quarantines_and_only_unanswered_alerts(ws, monkeypatch):
    # day 1 ran through; day 2's validation failed (quarantined) and alerted; day 3's train failed and
    # alerted, and a rerun of day 3 validated and trained: both alerts are answered (day 2 stays listed
    # as quarantined); then a redeploy of day 1 failed: nothing has answered that one
    _run(ws, "2026-11-20", "r1", monkeypatch, {s: "ok" for s in ("validate", "train", "gate", "package", "promote")}
         | {"deploy": "serving 20261120.1", "report": "file:///r"})  # fmt: skip
    ws.record_validation("2026-11-21", {"ds": "2026-11-21", "success": False, "status": "quarantined",
                                        "tables": {"candidates": {"evaluated": 3, "failed": [
                                            {"expectation": "expect_x", "message": "click not in {0,1}: 2"}]}}})  # fmt: skip
    _run(ws, "2026-11-21", "r2", monkeypatch, {"validate": RuntimeError("DATA FAILED VALIDATION")})
    notify({"kind": "task_failed", "task_id": "validate", "ds": "2026-11-21", "hint": "inspect"}, ws)
    _run(ws, "2026-11-22", "r3", monkeypatch, {"validate": "passed", "train": RuntimeError("OOM")})
    notify({"kind": "task_failed", "task_id": "train", "ds": "2026-11-22", "hint": "rerun"}, ws)
    _run(ws, "2026-11-22", "r4", monkeypatch, {"validate": "passed", "train": "ok", "gate": "FAIL — light.auc.rank"})
    notify({"kind": "task_failed", "task_id": "deploy", "ds": "2026-11-20", "hint": "roll back"}, ws)

    status = collect(ws, live=False)
    runs = {r["ds"]: r for r in status["runs"]}
    assert [r["ds"] for r in status["runs"]] == ["2026-11-22", "2026-11-21", "2026-11-20"]
    assert runs["2026-11-20"]["state"] == "success" and runs["2026-11-20"]["summary"] == "serving 20261120.1"
    assert runs["2026-11-21"]["state"] == "failed" and "failed at validate" in runs["2026-11-21"]["summary"]
    assert runs["2026-11-22"]["state"] == "refused" and "gate FAIL" in runs["2026-11-22"]["summary"]
    assert status["quarantined"] == [{"ds": "2026-11-21", "status": "quarantined", "report": None,
                                      "first_failure": "candidates: click not in {0,1}: 2"}]  # fmt: skip
    assert [(a["task_id"], a["ds"]) for a in status["alerts"]] == [("deploy", "2026-11-20")]
    assert exit_code(status) == 1 and status["attention"] == [
        "no production version: nothing has been deployed",
        "1 day(s) refused by the gate since the last accepted one (newest ds=2026-11-22: light.auc.rank); "
        "serving unchanged: docs/runbook.md#the-gate-refused-a-day-or-the-day-ships-k--0",
        "1 open alert(s)",
    ]
    text = render(status)
    assert "2026-11-22  ok" in text and "FAIL" in text and "click not in {0,1}: 2" in text
    assert "deploy ds=2026-11-20: roll back" in text


def test_hap_status_cli_json_and_exit_codes(ws, monkeypatch):
    """Scripts read ``--json``; 0 means serving and nothing open, 1 needs attention, 2 a usage error."""
    registry = ws.registry / "versions" / "20261120.1"
    write_json_atomic(registry / "manifest.json", {"version": "20261120.1", "ds": "2026-11-20", "parent": None,
                                                   "metrics": {"system.k": 150}, "window_days": ["2026-11-20"],
                                                   "registered_at": "2026-11-20T01:00:00+00:00",
                                                   "content_hash": "abc", "lineage": {}})  # fmt: skip
    from registry.store import Registry

    Registry(ws).set_production("20261120.1", reason="newest gated model (ds=2026-11-20)")
    _run(ws, "2026-11-20", "r1", monkeypatch, {"validate": "passed", "deploy": "serving 20261120.1"})

    def hap(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "workflow.cli", "--home", str(ws.root), *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    proc = hap("status", "--json", "--no-live")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["serving"]["version"] == "20261120.1" and status["serving"]["k"] == 150
    assert "hap CLI" in status["serving"]["by"] and status["serving"]["reason"].startswith("newest gated")
    assert status["attention"] == []
    proc = hap("status", "--no-live")
    assert proc.returncode == 0 and "SERVING   20261120.1 (trained on ds=2026-11-20, K=150)" in proc.stdout
    assert "OK: serving, latest run fine" in proc.stdout
    # live: no TorchServe runs in this workspace, so the registry's version is not actually served
    proc = hap("status")
    assert proc.returncode == 1 and "NOT RUNNING" in proc.stdout and "TorchServe is not serving" in proc.stdout
    assert hap("status", "--runs", "many").returncode == 2


def test_refusals_in_a_row_alert_once_stay_listed_and_a_later_accepted_day_answers_them(ws, monkeypatch):
    """A refused day is its own state (not success): `run-day` exits 3 and says so in one line,
    `hap status` lists the refusals since the last accepted day under NEEDS ATTENTION, the second
    refusal in a row (``orchestration.refusal_alert_after``) alerts once, and a later accepted day
    answers all of it."""
    from workflow.flow import alert_on_refusals
    from workflow.status import EXIT_REFUSED, day_outcome

    ran = {"validate": "success", "train": "success", "gate": "success", "package": "skipped", "dag_run": "success"}
    _run(ws, "2026-11-20", "r1", monkeypatch, {"validate": "ok", "train": "ok", "gate": "PASS — all rules hold",
                                               "package": "20261120.1", "promote": "deploy — newest",
                                               "deploy": "serving 20261120.1"})  # fmt: skip
    _run(ws, "2026-11-21", "r2", monkeypatch, {"validate": "ok", "train": "ok", "gate": "FAIL — light.auc.expose"})
    assert alert_on_refusals("2026-11-21", ws, "light.auc.expose", after=2) is None  # the first: no alert yet
    outcome = day_outcome(ws, "2026-11-21", ran)
    assert outcome.state == "refused" and outcome.exit_code == EXIT_REFUSED == 3
    assert outcome.line() == (
        "ds=2026-11-21: REFUSED — gate FAIL — light.auc.expose; serving unchanged (now serving: nothing)"
    )
    assert day_outcome(ws, "2026-11-20", ran | {"package": "success"}).exit_code == 0
    assert day_outcome(ws, "2026-11-20", ran | {"dag_run": "failed", "deploy": "failed"}).exit_code == 1

    # a quarantined day in between neither accepts nor refuses
    _run(ws, "2026-11-22", "r3", monkeypatch, {"validate": RuntimeError("DATA FAILED VALIDATION")})
    _run(ws, "2026-11-23", "r4", monkeypatch, {"validate": "ok", "train": "ok", "gate": "FAIL — system.value"})
    alert = alert_on_refusals("2026-11-23", ws, "system.value", after=2)
    assert (
        alert is not None and alert["kind"] == "gate_refused" and alert["refused_days"] == ["2026-11-23", "2026-11-21"]
    )
    assert "#the-gate-refused-a-day" in alert["hint"] and alert["error"] == "system.value"
    assert alert_on_refusals("2026-11-23", ws, "system.value", after=2) is None  # a re-gate: once per day
    assert alert_on_refusals("2026-11-23", ws, "system.value", after=0) is None  # 0 turns it off
    status = collect(ws, live=False)
    assert [(a["kind"], a["ds"]) for a in status["alerts"]] == [("gate_refused", "2026-11-23")]
    assert any(a.startswith("2 day(s) refused by the gate since the last accepted one (newest ds=2026-11-23")
               for a in status["attention"]), status["attention"]  # fmt: skip
    assert "REFUSED: gate FAIL — system.value; serving unchanged" in render(status)
    long = "light.auc.expose: dropped 0.0412 > 0.02 vs production (0.6610), 95% interval [-0.061, -0.020]"
    _run(ws, "2026-11-23", "r4b", monkeypatch, {"gate": f"FAIL — {long}; {long}; system.value: below 0"})
    summary = collect(ws, live=False)["runs"][0]["summary"]
    assert summary == f"gate FAIL — {long} (+2 more); serving unchanged", summary  # whole, never cut mid-figure

    _run(ws, "2026-11-24", "r5", monkeypatch, {"validate": "ok", "train": "ok", "gate": "PASS — all rules hold"})
    status = collect(ws, live=False)
    assert status["alerts"] == [] and not any("refused" in a for a in status["attention"]), status["attention"]


def test_the_steps_line_follows_the_dags_order_and_says_when_nothing_ran():
    from workflow.status import steps_line

    states = {"report": "success", "dag_run": "success", "deploy": "skipped", "gate": "success",
              "wait_for_partition": "success", "validate": "success", "train": "success", "package": "skipped",
              "promote": "skipped", "extra_task": "success"}  # fmt: skip
    assert steps_line(states) == (
        "steps: wait_for_partition=success, validate=success, train=success, gate=success, package=skipped, "
        "promote=skipped, deploy=skipped, report=success, extra_task=success"
    )
    assert steps_line({"dag_run": "not run", "why": "no data for ds=2019-11-11"}) == (
        "no step ran (no data for ds=2019-11-11)"
    )
