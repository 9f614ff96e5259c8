"""On-call operations through the real daily DAG (``dag.test()``), KFP runner, GX and TorchServe:
a backfill never demotes a newer model, forcing needs a reason, skip_deploy, a late partition is
waited for, and failures leave an alert naming the runbook."""

import json
import os
import shutil
import threading

import pytest

from hap.contract import partition_dir
from registry.store import Registry
from serving.server import LocalTorchServe
from workflow import runlog
from workflow.airflow_local import run_day

pytestmark = pytest.mark.slow

OLD, NEW, LATE = "2026-11-21", "2026-11-22", "2026-11-23"


@pytest.fixture(scope="module")
def ws(tmp_path_factory, simulated_workspace):
    with simulated_workspace(tmp_path_factory.mktemp("ops"), "2026-11-20", 4) as ws:
        yield ws


@pytest.fixture
def lenient_gate(lenient_policy, monkeypatch):
    """These tests are about promotion order, not the gate (tested in test_gate.py / test_e2e.py)."""
    monkeypatch.setenv("HAP_GATE_POLICY", str(lenient_policy))


def test_a_backfill_never_demotes_a_model_trained_on_newer_data(ws, lenient_gate):
    assert run_day(NEW, ws)["deploy"] == "success"
    newer = Registry(ws).production()["version"]
    states = run_day(OLD, ws, conf={"window_days": 2})
    assert states["package"] == "success" and states["promote"] == "success"
    assert states["deploy"] == "skipped" and states["dag_run"] == "success"
    promotion = json.loads((ws.run_dir(OLD) / "promotion.json").read_text())
    assert not promotion["deploy"] and "newer data" in promotion["reason"]
    assert json.loads((ws.run_dir(OLD) / "evaluation.json").read_text())["holdout"]["days"] == ["2026-11-20", OLD]
    assert Registry(ws).production()["version"] == newer  # evaluation and version kept, not deployed
    assert "20261121.1" in [m["version"] for m in Registry(ws).versions()]
    assert LocalTorchServe(ws.serving).default_version() == newer


def test_forcing_a_backfill_needs_a_reason_and_records_it(ws, lenient_gate):
    states = run_day(OLD, ws, conf={"window_days": 2, "force_deploy": True})
    assert states["promote"] == "failed" and states["deploy"] == "upstream_failed", states
    alerts = [json.loads(line) for line in (ws.root / "alerts" / "alerts.jsonl").read_text().splitlines()]
    promote = [a for a in alerts if a["task_id"] == "promote"]
    assert promote, alerts
    assert "force_reason" in promote[-1]["error"] and "runbook" in promote[-1]["hint"], promote[-1]

    reason = "on-call: 11-22 logs were replayed twice"
    states = run_day(OLD, ws, conf={"window_days": 2, "force_deploy": True, "force_reason": reason})
    assert states["deploy"] == "success", (states, (ws.run_dir(OLD) / "promotion.json").read_text())
    # the rerun's training inputs (data, config, code, production) were those of the run before: it
    # reused that trained run instead of training again, and said so
    train = runlog.read(ws, OLD)["steps"]["train"]
    assert train["state"] == "success" and train["outcome"].startswith("reused (inputs unchanged)"), train
    assert json.loads((ws.run_dir(OLD) / "lineage.json").read_text())["reused"]["by"].startswith("airflow hap_daily/")
    version = json.loads((ws.run_dir(OLD) / "promotion.json").read_text())["version"]  # what the run produced
    # versions are content-addressed per day: the forced rerun of OLD is the version the backfill made
    assert version == "20261121.1" and [m["version"] for m in Registry(ws).versions() if m["ds"] == OLD] == [version]
    pointer = Registry(ws).production()
    assert pointer["version"] == version and reason in pointer["reason"], pointer
    assert LocalTorchServe(ws.serving).default_version() == version


def test_skip_deploy_trains_gates_and_packages_only(ws, lenient_gate):
    before = Registry(ws).production()  # None when this test runs alone
    states = run_day(NEW, ws, conf={"skip_deploy": True})
    assert states["package"] == "success" and states["deploy"] == "skipped", states
    promotion = json.loads((ws.run_dir(NEW) / "promotion.json").read_text())
    assert promotion["reason"].startswith("skip_deploy") and not promotion["deploy"]
    assert promotion["version"] in [m["version"] for m in Registry(ws).versions() if m["ds"] == NEW]  # packaged
    assert Registry(ws).production() == before


def test_the_shadow_param_deploys_beside_production(ws, lenient_gate):
    """With ``shadow`` the day's version is registered and smoked but production keeps answering; the
    serving home names the shadow for production's worker to mirror to."""
    from serving.deploy import shadow_state

    before = (Registry(ws).production() or {}).get("version")
    states = run_day(NEW, ws, conf={"shadow": True})
    assert states["deploy"] == "success", states
    server = LocalTorchServe(ws.serving)
    version = json.loads((ws.run_dir(NEW) / "promotion.json").read_text())["version"]
    if before is None or before == version:  # nothing else in production: a shadow has no one to mirror
        assert Registry(ws).production()["version"] == version
    else:
        assert Registry(ws).production()["version"] == before == server.default_version()
        assert shadow_state(server)["shadow"] == version and shadow_state(server)["production"] == before
        assert version in {v["modelVersion"] for v in server.versions()}


def _sensor_reschedules(ds: str) -> list:
    """The partition sensor's reschedule records (one per poke that found nothing) in the Airflow DB,
    for the latest run of ``ds``, oldest first."""
    import datetime as dt

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session
    from sqlalchemy import select

    day = dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC)
    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance)
            .join(DagRun, (DagRun.dag_id == TaskInstance.dag_id) & (DagRun.run_id == TaskInstance.run_id))
            .where(TaskInstance.dag_id == "hap_daily", TaskInstance.task_id == "wait_for_partition")
            .where(DagRun.logical_date == day)
            .order_by(DagRun.id.desc())
        ).first()
        if ti is None:
            return []
        rows = session.scalars(TaskReschedule.stmt_for_task_instance(ti)).all()
        return [(r.start_date, r.reschedule_date) for r in rows]


def test_a_late_partition_is_waited_for(ws, lenient_gate, tmp_path):
    """The day's logs land only after the sensor has poked once and found nothing (its reschedule
    record is in the Airflow DB); the run then waits for them instead of failing."""
    import datetime as dt
    import time

    poke_s = int(os.environ["HAP_SENSOR_POKE_S"])  # 2 in tests (conftest.py)
    aside = {}
    for table in ("requests", "candidates"):
        aside[table] = tmp_path / table
        shutil.move(partition_dir(ws.data, table, LATE), aside[table])
    landed: dict[str, object] = {}
    stop = threading.Event()

    def land_after_first_poke() -> None:  # the day's logs arrive after the sensor looked for them
        deadline = time.monotonic() + 300  # never hang the suite: land anyway, the asserts then fail
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                landed["seen"] = _sensor_reschedules(LATE)
            except Exception as exc:  # a DB busy with the run: look again
                landed["error"] = repr(exc)
            if landed.get("seen"):
                break
            time.sleep(0.5)
        for table, src in aside.items():
            dest = partition_dir(ws.data, table, LATE)
            shutil.copytree(src, dest.with_name(dest.name + ".tmp"))
            os.replace(dest.with_name(dest.name + ".tmp"), dest)
        landed["at"] = dt.datetime.now(dt.UTC)

    started = dt.datetime.now(dt.UTC)
    thread = threading.Thread(target=land_after_first_poke, daemon=True)
    thread.start()
    try:
        states = run_day(LATE, ws, conf={"skip_deploy": True})
    finally:
        stop.set()
        thread.join()
    assert states["wait_for_partition"] == "success" and states["validate"] == "success", states
    assert states["dag_run"] == "success"
    assert ws.validation_status(LATE) == "passed"
    reschedules = _sensor_reschedules(LATE)
    assert landed.get("seen"), ("the partition landed without the sensor having poked", landed, reschedules)
    # the sensor poked (after this run started) and found nothing, then waited before the data landed
    first_poke, first_reschedule = reschedules[0]
    assert started <= first_poke < landed["at"], (started, reschedules, landed)
    assert (first_reschedule - first_poke).total_seconds() >= poke_s - 0.5, reschedules
