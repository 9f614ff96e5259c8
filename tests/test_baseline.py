"""Day-over-day bands that fit real traffic: the weekly cycle, warm-up, no cascade after a bad day,
the same verdict whatever order days are validated in."""

import datetime as dt
import shutil

import pytest

from expectations.baseline import bands, choose
from expectations.validate import validate_day
from hap.config import HapConfig, ValidationConfig
from hap.workspace import Workspace


def _weekly(day: str) -> dict[str, float]:
    weekend = dt.date.fromisoformat(day).weekday() >= 5
    rows = 1000.0 if weekend else 2000.0
    return {"request_rows": rows, "candidate_rows": 33 * rows, "positive_rate": 0.3}


def test_the_same_weekday_is_the_baseline_once_there_is_one():
    history = {(dt.date(2026, 11, 1) + dt.timedelta(days=i)).isoformat() for i in range(14)}  # Sun 1 .. Sat 14
    base = choose("2026-11-15", ValidationConfig().day_over_day, lambda d: _weekly(d) if d in history else None)
    assert base.basis == "same weekday" and base.days == ("2026-11-08", "2026-11-01") and base.widen == 1.0
    judged = bands(_weekly("2026-11-15"), base, ValidationConfig())
    assert judged["request_rows"]["min"] <= 1000 <= judged["request_rows"]["max"]  # a Sunday vs Sundays
    # a Sunday against the trailing week (mostly weekdays) would sit far below its median
    assert 1000 < 0.6 * 2000


def test_warm_up_is_open_then_trailing_and_widened():
    cfg = ValidationConfig()
    assert (
        choose("2026-11-02", cfg.day_over_day, lambda d: _weekly(d) if d == "2026-11-01" else None).basis == "warm-up"
    )
    judged = bands(
        {"request_rows": 5.0, "candidate_rows": 1e9, "positive_rate": 0.99},
        choose("2026-11-02", cfg.day_over_day, lambda d: None),
        cfg,
    )
    assert all(j["min"] == 0 and j["max"] >= 1e18 for j in judged.values())  # open while warming up
    first_days = ("2026-11-01", "2026-11-02")  # a Sunday and a Monday
    base = choose("2026-11-03", cfg.day_over_day, lambda d: _weekly(d) if d in first_days else None)
    assert base.basis == "trailing" and base.widen == cfg.day_over_day.warmup_widen
    # Tuesday after a Sunday and a Monday: the widened band holds a weekday/weekend swing
    rows = bands(_weekly("2026-11-03"), base, cfg)["request_rows"]
    assert rows["min"] < 1000 and rows["max"] > 2000


def test_caps_hold_in_warm_up_and_shares_need_enough_requests():
    cfg = ValidationConfig()
    warm = choose("2026-11-02", cfg.day_over_day, lambda d: None)
    judged = bands({"request_rows": 5000, "leakage_share": 0.9, "top_user_positive_share": 0.5}, warm, cfg)
    assert judged["leakage_share"]["max"] == cfg.max_leakage_share
    assert judged["top_user_positive_share"]["max"] == cfg.max_top_user_positive_share
    tiny = bands({"request_rows": 20, "top_user_positive_share": 0.5}, warm, cfg)
    assert tiny["top_user_positive_share"]["max"] >= 1e18  # 20 requests: one user's share says nothing


@pytest.fixture(scope="module")
def weeks(small_sim, tmp_path_factory):
    """Ten days from a Sunday: weekdays carry twice the weekend's requests; Tuesday 11-10 lost 70%
    of its traffic (a real incident), validated in date order."""
    ws = Workspace(tmp_path_factory.mktemp("weekly"))
    days = [(dt.date(2026, 11, 1) + dt.timedelta(days=i)).isoformat() for i in range(11)]
    for day in days:
        n = 300 if dt.date.fromisoformat(day).weekday() >= 5 else 600
        small_sim.write_days(ws.data, day, 1, 180 if day == "2026-11-10" else n)
    verdicts = {day: validate_day(ws.root, day) for day in days}
    return ws, verdicts


def test_weekly_traffic_passes_in_date_order(weeks):
    _, verdicts = weeks
    normal = {d: v for d, v in verdicts.items() if d != "2026-11-10"}
    failed = {
        d: [f["message"] for t in v["tables"].values() for f in t["failed"]]
        for d, v in normal.items()
        if not v["success"]
    }
    assert not failed, failed
    assert verdicts["2026-11-01"]["day_over_day"]["request_rows"]["why"] == "no band"  # warm-up: open
    assert "same weekday" in verdicts["2026-11-08"]["day_over_day"]["request_rows"]["why"]


def test_a_bad_day_is_quarantined_without_a_cascade(weeks):
    ws, verdicts = weeks
    bad = verdicts["2026-11-10"]
    assert bad["status"] == "quarantined" and bad["rows_sound"]
    assert {f["column"] for f in bad["tables"]["daily"]["failed"]} >= {"request_rows", "candidate_rows"}
    assert verdicts["2026-11-11"]["success"]  # the next normal day passes
    # a day quarantined only by its bands still counts as a baseline day (its rows are sound): a lasting
    # change becomes the new normal; a day whose rows failed does not count
    from expectations.validate import _earlier_stats

    assert _earlier_stats(ws, "2026-11-10", HapConfig()) == bad["stats"]


def test_the_verdict_does_not_depend_on_validation_order(weeks, tmp_path):
    """Monday 11-09 validated first, in a copy with no earlier verdicts, gets the same band."""
    ws, verdicts = weeks
    fresh = Workspace(tmp_path / "fresh")
    shutil.copytree(ws.data, fresh.data)
    alone = validate_day(fresh.root, "2026-11-09")
    assert alone["success"] == verdicts["2026-11-09"]["success"]
    assert alone["day_over_day"]["request_rows"] == verdicts["2026-11-09"]["day_over_day"]["request_rows"]
