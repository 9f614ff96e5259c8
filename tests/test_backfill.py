"""A backfill over a date range with `airflow backfill create` through a real scheduler (`airflow standalone`
on SQLite, LocalExecutor): runs oldest first, one at a time, each day validated, trained, gated,
packaged and deployed; the newest day ends up serving."""

import json

import pytest

from registry.store import Registry
from workflow.airflow_local import StandaloneAirflow

DAYS = ["2026-11-21", "2026-11-22"]  # two days show the order and one-at-a-time; each more costs a training


@pytest.mark.slow
def test_backfill_through_a_real_scheduler_runs_days_oldest_first_one_at_a_time(
    tmp_path, free_port_block, lenient_policy, simulated_workspace
):
    env = {"HAP_SENSOR_POKE_S": "5", "HAP_GATE_POLICY": str(lenient_policy), "HAP_RETRY_DELAY_S": "5"}
    with simulated_workspace(tmp_path / "ws", "2026-11-19", 4) as ws:  # the gate is not what is tested here
        airflow = StandaloneAirflow(ws, free_port_block(3), env)
        try:
            airflow.start()
            airflow.backfill("hap_daily", DAYS[0], DAYS[-1])
            runs = airflow.wait_for_runs("hap_daily", len(DAYS), timeout=1500)
            log_tail = airflow.log_tail()  # scheduler and task logs: the why of a failed run
        finally:
            airflow.stop()
    states = sorted((r["logical_date"][:10], r["state"]) for r in runs)
    assert states == [(d, "success") for d in DAYS], f"{states}\n{log_tail}"
    assert all(r["run_id"].startswith("backfill__") for r in runs)
    by_start = sorted(runs, key=lambda r: r["start_date"])
    assert [r["logical_date"][:10] for r in by_start] == DAYS  # oldest first
    for earlier, later in zip(by_start, by_start[1:], strict=False):
        assert earlier["end_date"] <= later["start_date"]  # one day at a time
    assert sorted(p.name for p in (ws.root / "runs").iterdir()) == [f"ds={d}" for d in DAYS]
    assert [m["version"] for m in Registry(ws).versions()] == ["20261121.1", "20261122.1"]
    assert Registry(ws).production()["version"] == "20261122.1"
    assert all(json.loads((ws.run_dir(d) / "promotion.json").read_text())["deploy"] for d in DAYS)


def test_a_cli_write_that_met_a_locked_sqlite_is_run_again_and_nothing_else_is(tmp_path, monkeypatch):
    """Under load ``backfill create`` met SQLite's lock-upgrade refusal ("database is locked" at once,
    whatever the busy timeout) and the whole backfill failed; its transaction had rolled back, so the
    command is run again. Any other failure is not repeated."""
    import subprocess

    from hap.workspace import Workspace
    from workflow import airflow_local

    answers: list[subprocess.CompletedProcess] = []
    calls: list[list[str]] = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return answers.pop(0)

    monkeypatch.setattr(airflow_local.subprocess, "run", run)
    monkeypatch.setattr("time.sleep", lambda s: None)
    airflow = StandaloneAirflow(Workspace(tmp_path / "ws"), 28080)
    locked = subprocess.CompletedProcess([], 1, "", "sqlite3.OperationalError) database is locked")
    answers[:] = [locked, locked, subprocess.CompletedProcess([], 0, "created", "")]
    assert airflow.airflow("backfill", "create", locked_retries=4).stdout == "created" and len(calls) == 3
    calls.clear()
    answers[:] = [subprocess.CompletedProcess([], 1, "", "Dag hap_daily not found")]
    with pytest.raises(RuntimeError, match="not found"):
        airflow.airflow("backfill", "create", locked_retries=4)
    assert len(calls) == 1
    calls.clear()
    answers[:] = [locked] * 3
    with pytest.raises(RuntimeError, match="database is locked"):
        airflow.airflow("dags", "unpause", "hap_daily", locked_retries=2)
    assert len(calls) == 3


def test_a_component_that_dies_fails_the_wait_at_once_with_its_log(tmp_path):
    """Under load a scheduler died (it had loaded a run whose creation then rolled back) and the runs
    stayed queued until the 25-minute timeout: a dead component must fail the wait at once."""
    import subprocess
    import sys

    from hap.workspace import Workspace

    airflow = StandaloneAirflow(Workspace(tmp_path / "ws"), 28080)
    airflow.home.mkdir(parents=True)
    (airflow.home / "scheduler.log").write_text("ObjectDeletedError: Instance '<DagRun>' has been deleted\n")
    airflow.procs["scheduler"] = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    airflow.procs["scheduler"].wait()
    with pytest.raises(RuntimeError, match=r"(?s)exited \{'scheduler': 3\}.*has been deleted"):
        airflow.wait_for_runs("hap_daily", 2, timeout=1500)


def test_a_backfill_is_written_while_no_scheduler_runs(tmp_path, monkeypatch):
    import subprocess
    import sys

    from hap.workspace import Workspace
    from workflow import airflow_local

    airflow = StandaloneAirflow(Workspace(tmp_path / "ws"), 28080)
    airflow.home.mkdir(parents=True)
    scheduler_during: list[bool] = []

    def run(cmd, **kwargs):
        scheduler_during.append("scheduler" in airflow.procs)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    spawned: list[str] = []
    monkeypatch.setattr(airflow_local.subprocess, "run", run)
    monkeypatch.setattr(airflow, "_spawn", lambda name: spawned.append(name))
    airflow.procs["scheduler"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                                  start_new_session=True)  # fmt: skip
    airflow.backfill("hap_daily", "2026-11-21", "2026-11-22")
    assert scheduler_during == [False, False]  # unpause and backfill create: the scheduler was stopped
    assert spawned == ["scheduler"]  # and started again after
