"""A 3-day backfill with `airflow backfill create` through a real scheduler (`airflow standalone`
on SQLite, LocalExecutor): runs oldest first, one at a time, each day validated, trained, gated,
packaged and deployed; the newest day ends up serving."""

import json

import pytest

from hap.airflow_local import StandaloneAirflow
from hap.config import SimConfig
from hap.registry import Registry
from hap.simulator import CascadeSimulator
from hap.workspace import Workspace
from serving.server import LocalTorchServe

pytestmark = pytest.mark.slow

DAYS = ["2026-11-20", "2026-11-21", "2026-11-22"]


def test_three_day_backfill_through_a_real_scheduler(tmp_path, free_port_block):
    ws = Workspace(tmp_path / "ws")
    CascadeSimulator(SimConfig(n_users=2000, n_items=8000)).write_days(ws.data, "2026-11-18", 5, 1000)
    policy = tmp_path / "lenient.yaml"  # about scheduling, not the gate (tested elsewhere)
    policy.write_text("metrics:\n  light.auc.overall: {floor: 0.6, max_drop: 1.0, min_examples: 1}\n")
    airflow = StandaloneAirflow(
        ws, free_port_block(3), {"HAP_SENSOR_POKE_S": "5", "HAP_GATE_POLICY": str(policy), "HAP_RETRY_DELAY_S": "5"}
    )
    try:
        airflow.start()
        airflow.backfill("hap_daily", DAYS[0], DAYS[-1])
        runs = airflow.wait_for_runs("hap_daily", 3, timeout=1500)
    finally:
        airflow.stop()
        LocalTorchServe(ws.serving).stop()
    assert sorted((r["logical_date"][:10], r["state"]) for r in runs) == [(d, "success") for d in DAYS]
    assert all(r["run_id"].startswith("backfill__") for r in runs)
    by_start = sorted(runs, key=lambda r: r["start_date"])
    assert [r["logical_date"][:10] for r in by_start] == DAYS  # oldest first
    for earlier, later in zip(by_start, by_start[1:], strict=False):
        assert earlier["end_date"] <= later["start_date"]  # one day at a time
    assert sorted(p.name for p in (ws.root / "runs").iterdir()) == [f"ds={d}" for d in DAYS]
    assert [m["version"] for m in Registry(ws).versions()] == ["20261120.1", "20261121.1", "20261122.1"]
    assert Registry(ws).production()["version"] == "20261122.1"
    assert all(json.loads((ws.run_dir(d) / "promotion.json").read_text())["deploy"] for d in DAYS)
