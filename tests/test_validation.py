"""Real Great Expectations on real partitions: the clean day passes, each corruption of the corpus
is caught by the expectation meant for it, the day is quarantined and kept, re-validation clears it."""

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from expectations.validate import ValidatorError, describe, validate_day
from hap.contract import partition_dir, read_partition, write_partition
from hap.workspace import Workspace

DS = "2026-11-20"
# the day-over-day baseline: the same weekday a week earlier, and the two days before
HISTORY = ("2026-11-13", "2026-11-18", "2026-11-19")
PREVIOUS = "2026-11-19"


@pytest.fixture(scope="module")
def base(small_sim, tmp_path_factory):
    """Validated history days (the day-over-day baseline) and the day under test."""
    ws = Workspace(tmp_path_factory.mktemp("validation-base"))
    for day in (*HISTORY, DS):
        small_sim.write_days(ws.data, day, 1, 400)
    for day in HISTORY:
        assert validate_day(ws.root, day)["success"]
    return ws


@pytest.fixture
def day(base, tmp_path):
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(base.root, ws.root)
    return ws


def _set(t: pa.Table, name: str, values) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, values)


def _mask(t: pa.Table, source: str) -> np.ndarray:
    return np.asarray(t["source"]) == source


def _with_values(t: pa.Table, name: str, rows: np.ndarray, value) -> pa.Table:
    col = t[name].to_numpy(zero_copy_only=False).copy()
    col[rows] = value
    return _set(t, name, pa.array(col, t.schema.field(name).type, from_pandas=True))  # NaN -> null


def _first_n(t: pa.Table, n: int) -> np.ndarray:
    m = np.zeros(t.num_rows, bool)
    m[:n] = True
    return m


def _half_volume(ws: Workspace) -> None:
    req = read_partition(ws.data, "requests", DS)
    keep = req.slice(0, req.num_rows // 2)
    cand = read_partition(ws.data, "candidates", DS)
    write_partition(ws.data, "requests", DS, keep)
    write_partition(ws.data, "candidates", DS, cand.filter(pc.is_in(cand["request_id"], keep["request_id"])))


def _shift_ts(t: pa.Table) -> pa.Table:
    ts = t["ts"].to_pylist()
    ts[:5] = [v + dt.timedelta(days=1) for v in ts[:5]]
    return _set(t, "ts", pa.array(ts, t.schema.field("ts").type))


def _long_history(t: pa.Table) -> pa.Table:
    hist = t["hist_item_ids"].to_pylist()
    hist[0] = list(range(1, 80))
    return _set(t, "hist_item_ids", pa.array(hist, t.schema.field("hist_item_ids").type))


def _null_in_history(t: pa.Table) -> pa.Table:
    hist = t["hist_item_ids"].to_pylist()
    for i in range(3):
        hist[i] = [*hist[i][:-1], None]
    return _set(t, "hist_item_ids", pa.array(hist, t.schema.field("hist_item_ids").type))


def _drop_some_globals(t: pa.Table) -> pa.Table:
    g = np.flatnonzero(_mask(t, "global"))[:3]
    keep = np.ones(t.num_rows, bool)
    keep[g] = False
    return t.filter(pa.array(keep))


def _drop_rank_rows_of_some_requests(t: pa.Table) -> pa.Table:
    victims = pc.unique(t["request_id"])[:5]
    drop = pc.and_(pc.equal(t["source"], "rank"), pc.is_in(t["request_id"], victims))
    return t.filter(pc.invert(drop))


def _leak_positives_into_history(ws: Workspace) -> None:
    """A logging bug: the clicked item is written into its own request's behaviour sequence."""
    req, cand = read_partition(ws.data, "requests", DS), read_partition(ws.data, "candidates", DS)
    pos = cand.filter(pc.and_(pc.equal(cand["source"], "expose"), pc.equal(cand["click"], 1)))
    clicked: dict[str, list[int]] = {}
    for r, i in zip(pos["request_id"].to_pylist(), pos["item_id"].to_pylist(), strict=True):
        clicked.setdefault(r, []).append(i)
    hist = [
        ([*h[: 50 - len(clicked.get(r, []))], *clicked.get(r, [])])
        for r, h in zip(req["request_id"].to_pylist(), req["hist_item_ids"].to_pylist(), strict=True)
    ]
    write_partition(ws.data, "requests", DS, _set(req, "hist_item_ids", pa.array(hist, pa.list_(pa.int64()))))


def _positives_onto_one_user(ws: Workspace) -> None:
    """Every request with a click belongs to one user; the positive rate is unchanged."""
    req, cand = read_partition(ws.data, "requests", DS), read_partition(ws.data, "candidates", DS)
    with_click = pc.unique(cand.filter(pc.equal(cand["click"], 1))["request_id"])
    users = pc.if_else(pc.is_in(req["request_id"], with_click), 4242, req["user_id"])
    write_partition(ws.data, "requests", DS, _set(req, "user_id", users))


def _yesterday_rekeyed(ws: Workspace) -> None:
    """Yesterday's candidates written again under today's request ids."""
    today = read_partition(ws.data, "requests", DS)["request_id"].to_pylist()
    old = read_partition(ws.data, "candidates", PREVIOUS)
    old_ids = pc.unique(old["request_id"]).to_pylist()
    mapping = dict(zip(old_ids, today, strict=False))
    old = old.filter(pc.is_in(old["request_id"], pa.array(list(mapping))))
    rekeyed = pa.array([mapping[r] for r in old["request_id"].to_pylist()], pa.string())
    write_partition(ws.data, "candidates", DS, _set(old, "request_id", rekeyed))


def _yesterdays_request_ids(ws: Workspace) -> None:
    """Today's first 20 requests carry ids of yesterday's requests (a counter reset upstream)."""
    req, cand = read_partition(ws.data, "requests", DS), read_partition(ws.data, "candidates", DS)
    old_ids = read_partition(ws.data, "requests", PREVIOUS)["request_id"].to_pylist()[:20]
    mapping = dict(zip(req["request_id"].to_pylist()[:20], old_ids, strict=True))
    for table, t in (("requests", req), ("candidates", cand)):
        ids = pa.array([mapping.get(r, r) for r in t["request_id"].to_pylist()], pa.string())
        write_partition(ws.data, table, DS, _set(t, "request_id", ids))


def _duplicate_request(t: pa.Table) -> pa.Table:
    return pa.concat_tables([t, t.slice(0, 1)])


# name -> (table, corruption, (batch, expectation, column) that must report it)
CORPUS = {
    "dropped column": ("candidates", lambda t: t.drop_columns(["item_ctr_7d"]),
                       ("schema", "expect_column_pair_values_to_be_equal", "expected_type")),
    "wrong type": ("candidates", lambda t: _set(t, "item_id", pc.cast(t["item_id"], pa.string())),
                   ("schema", "expect_column_pair_values_to_be_equal", "expected_type")),
    "duplicate rows": ("candidates", lambda t: pa.concat_tables([t, t.slice(0, 10)]),
                       ("per_request", "expect_column_values_to_be_between", "duplicate_rows")),
    "duplicate request ids": ("requests", _duplicate_request,
                              ("per_request", "expect_column_values_to_be_between", "id_rows")),
    "positives on non-exposed rows": ("candidates", lambda t: _with_values(t, "click", _mask(t, "rank"), 1),
                                      ("candidate_values", "expect_column_values_to_be_between", "click")),
    "click = 2": ("candidates", lambda t: _with_values(t, "click", _first_n(t, 1), 2),
                  ("candidate_values", "expect_column_values_to_be_in_set", "click")),
    "rank row at position 10": ("candidates", lambda t: _with_values(t, "rank_pos", _mask(t, "rank"), 10),
                                ("candidate_values", "expect_column_values_to_be_between", "rank_pos")),
    "orphan candidates": ("candidates", lambda t: _with_values(t, "request_id", _first_n(t, 3), "ghost-1"),
                          ("per_request", "expect_column_values_to_be_between", "id_rows")),
    "empty partition": ("candidates", lambda t: t.slice(0, 0),
                        ("candidate_values", "expect_table_row_count_to_be_between", None)),
    "half-volume day": ("both", _half_volume, ("daily", "expect_column_values_to_be_between", "candidate_rows")),
    "NaN features": ("candidates", lambda t: _with_values(t, "item_ctr_7d", _first_n(t, 4), np.nan),
                     ("candidate_values", "expect_column_values_to_be_in_set", "item_ctr_7d")),
    "out-of-range ids": ("candidates", lambda t: _with_values(t, "item_id", _first_n(t, 2), -7),
                         ("candidate_values", "expect_column_values_to_be_between", "item_id")),
    "timestamps from another day": ("requests", _shift_ts,
                                    ("per_request", "expect_column_values_to_be_in_set", "ts_day")),
    "new content_type": ("candidates", lambda t: _with_values(t, "content_type", _first_n(t, 2), "Video"),
                         ("candidate_values", "expect_column_values_to_be_in_set", "content_type")),
    "unknown source": ("candidates", lambda t: _with_values(t, "source", _mask(t, "global"), "ads"),
                       ("candidate_values", "expect_column_values_to_be_in_set", "source")),
    "global count off the contract": ("candidates", _drop_some_globals,
                                      ("per_request", "expect_column_pair_values_a_to_be_greater_than_b", "n_global")),
    "rank negatives missing": ("candidates", _drop_rank_rows_of_some_requests,
                               ("per_request", "expect_column_values_to_be_between", "n_rank")),
    "behaviour sequence too long": ("requests", _long_history,
                                    ("per_request", "expect_column_values_to_be_between", "history_len")),
    "nulls inside the behaviour sequence": ("requests", _null_in_history,
                                            ("per_request", "expect_column_values_to_be_between", "history_nulls")),
    "positive rate collapse": ("candidates", lambda t: _with_values(t, "click", np.ones(t.num_rows, bool), 0),
                               ("daily", "expect_column_values_to_be_between", "positive_rate")),
    "label leakage into the history": ("both", _leak_positives_into_history,
                                       ("daily", "expect_column_values_to_be_between", "leakage_share")),
    "positives of one user": ("both", _positives_onto_one_user,
                              ("daily", "expect_column_values_to_be_between", "top_user_positive_share")),
    "yesterday re-keyed onto today": ("both", _yesterday_rekeyed,
                                      ("daily", "expect_column_values_to_be_between", "carryover_share")),
    "request ids of the day before": ("both", _yesterdays_request_ids,
                                      ("daily", "expect_column_values_to_be_between", "request_id_reuse_share")),
    "feature stuck at one value": ("requests", lambda t: _set(t, "device", pa.array(["ios"] * t.num_rows)),
                                   ("daily", "expect_column_values_to_be_between", "mode_share_device")),
}  # fmt: skip


def _failed(verdict) -> set:
    out = set()
    for batch, t in verdict["tables"].items():
        for f in t["failed"]:
            col = tuple(f["column"]) if isinstance(f.get("column"), list) else f.get("column")
            out.add((batch, f["expectation"], col))
    return out


def test_clean_day_passes(day):
    verdict = validate_day(day.root, DS)
    assert verdict["success"], describe(verdict)
    assert day.validation_status(DS) == "passed"
    rows = verdict["day_over_day"]["candidate_rows"]
    assert rows["min"] > 0 and rows["why"].startswith("median of 1 same weekday day(s) 2026-11-13")
    assert verdict["data_docs"] and verdict["data_docs"].endswith("index.html")
    assert str(day.validation_dir(DS)) in verdict["data_docs"]  # GX state lives in the workspace


@pytest.mark.parametrize("name", list(CORPUS))
def test_corruption_is_caught_by_its_expectation_and_kept(day, name):
    table, corrupt, (batch, expectation, column) = CORPUS[name]
    if table == "both":
        corrupt(day)
    else:
        path = partition_dir(day.data, table, DS) / "part-0.parquet"
        pq.write_table(corrupt(pq.read_table(path)), path)
    verdict = validate_day(day.root, DS)
    assert not verdict["success"], name
    key = (batch, expectation, tuple(column) if isinstance(column, list) else column)
    assert key in _failed(verdict), (name, _failed(verdict))
    assert day.validation_status(DS) == "quarantined"
    assert "quarantined" in describe(verdict)
    assert (partition_dir(day.data, "candidates", DS) / "part-0.parquet").exists()  # kept, never deleted


def test_messages_name_values_ids_and_bands(day):
    path = partition_dir(day.data, "candidates", DS) / "part-0.parquet"
    t = pq.read_table(path)
    first_request, first_item = t["request_id"][0].as_py(), t["item_id"][0].as_py()
    t = _with_values(t, "click", _first_n(t, 1), 2)
    t = _with_values(t, "content_type", _first_n(t, 1), "Video")
    pq.write_table(_with_values(t, "click", np.ones(t.num_rows, bool), 0), path)
    text = describe(validate_day(day.root, DS))
    assert "content_type=Video" in text and f"request {first_request} item {first_item}" in text, text
    # the positive rate is 0.0: the message shows that figure and its band, not a count of rows
    line = next(ln for ln in text.splitlines() if "positive_rate" in ln)
    assert "observed 0," in line and "band [" in line and "same weekday" in line, line
    assert "row" not in line.split("observed")[0]


def test_unreadable_file_gives_a_clear_verdict_not_a_traceback(day):
    path = partition_dir(day.data, "candidates", DS) / "part-0.parquet"
    with path.open("r+b") as f:
        f.truncate(500)
    verdict = validate_day(day.root, DS)
    assert ("candidates", "readable_partition", None) in _failed(verdict)
    assert "Parquet" in describe(verdict)
    assert path.exists()


def test_revalidation_after_a_fix_unquarantines(day, small_sim):
    path = partition_dir(day.data, "candidates", DS) / "part-0.parquet"
    good = pq.read_table(path)
    pq.write_table(good.drop_columns(["source"]), path)
    assert not validate_day(day.root, DS)["success"]
    pq.write_table(good, path)
    assert validate_day(day.root, DS)["success"]
    assert day.validation_status(DS) == "passed"


def test_a_validator_failure_is_an_error_not_a_quarantine(day):
    """The day's GX folder is unusable (a file stands where the folder goes): the data is not judged."""
    gx_dir = day.validation_dir(DS) / "gx"
    gx_dir.parent.mkdir(parents=True, exist_ok=True)
    gx_dir.write_text("not a folder")
    with pytest.raises(ValidatorError, match="not judged"):
        validate_day(day.root, DS)
    assert day.validation_status(DS) == "error"
    assert "not a quarantine" in describe(json.loads((day.validation_dir(DS) / "verdict.json").read_text()))
    proc = _hap(day, "validate", "--ds", DS)
    assert proc.returncode == 2, proc.stderr
    assert "validator failed" in proc.stderr


def _hap(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HAP_HOME": str(ws.root)}
    return subprocess.run([sys.executable, "-m", "workflow.cli", *args], env=env, capture_output=True, text=True)


def test_cli_exit_codes_and_table(day):
    proc = _hap(day, "validate", "--ds", DS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ds={DS}: PASSED") and "candidate_values" in proc.stdout, proc.stdout
    path = partition_dir(day.data, "candidates", DS) / "part-0.parquet"
    pq.write_table(_with_values(pq.read_table(path), "click", _first_n(pq.read_table(path), 1), 2), path)
    proc = _hap(day, "validate", "--ds", DS)
    assert proc.returncode == 1, proc.stderr
    assert "QUARANTINED" in proc.stdout and "click=2" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_committed_suites_are_fresh_and_never_written(day):
    """The suites in the checkout are what ``build_suites`` renders, and validating changes no file
    of the checkout (GX state lives under the workspace)."""
    from expectations.suites import SUITES_DIR, render

    assert {p.stem: p.read_text() for p in SUITES_DIR.glob("*.json")} == render(), (
        "committed suites are stale: run `python -m expectations.suites`"
    )
    checkout = Path(validate_day.__code__.co_filename).parent
    before = {p: p.stat().st_mtime_ns for p in checkout.rglob("*") if "__pycache__" not in p.parts}
    validate_day(day.root, DS)
    after = {p: p.stat().st_mtime_ns for p in checkout.rglob("*") if "__pycache__" not in p.parts}
    assert after == before


def test_four_validations_at_once_all_succeed(base, tmp_path):
    """Different days and different workspaces validated at the same time, in four processes."""
    jobs = []
    for i, ds in enumerate(("2026-11-18", "2026-11-19", DS, DS)):
        ws = Workspace(tmp_path / f"ws{i % 2}")
        if not ws.root.exists():
            shutil.copytree(base.root, ws.root)
        jobs.append((ws, ds))
    jobs[3] = (Workspace(tmp_path / "ws2"), DS)
    shutil.copytree(base.root, jobs[3][0].root)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "workflow.cli", "validate", "--ds", ds],
            env={**os.environ, "HAP_HOME": str(ws.root)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ws, ds in jobs
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for (ws, ds), p, (out, err) in zip(jobs, procs, outs, strict=True):
        assert p.returncode == 0, (ds, ws.root, out, err[-3000:])
        assert ws.validation_status(ds) == "passed"


def test_composition_bounds_come_from_the_config(day, tmp_path, monkeypatch):
    """The same day with 5 requests short of `rank` negatives: quarantined under the exact default,
    passed under bounds set through ``$HAP_CONFIG`` (what real logs need)."""
    path = partition_dir(day.data, "candidates", DS) / "part-0.parquet"
    pq.write_table(_drop_rank_rows_of_some_requests(pq.read_table(path)), path)
    assert not validate_day(day.root, DS)["success"]
    cfg = tmp_path / "bounds.yaml"
    cfg.write_text("composition:\n  rank: [0, 10]\n")
    monkeypatch.setenv("HAP_CONFIG", str(cfg))
    verdict = validate_day(day.root, DS)
    assert verdict["success"], describe(verdict)


def test_the_report_of_a_quarantined_day_renders_in_a_browser(day, page_text):
    """On-call follows the verdict's report link (a page that needs no network): it shows the
    failure with the offending value and ids and the bands, and links GX's page of the failed suite,
    which shows the failing expectation."""
    path = partition_dir(day.data, "candidates", DS) / "part-0.parquet"
    t = pq.read_table(path)
    pq.write_table(_with_values(t, "content_type", _first_n(t, 1), "Video"), path)
    verdict = validate_day(day.root, DS)
    assert not verdict["success"]
    report = page_text(verdict["report"])
    assert "QUARANTINED" in report and "content_type=Video" in report, report[:2000]
    assert f"request {t['request_id'][0].as_py()}" in report
    assert "candidate_rows" in report and "same weekday" in report  # the bands, with their baseline
    for suite in ("candidate_values", "per_request", "daily", "requests", "schema"):
        assert f"{suite} results" in report, report[:2000]
    site = day.validation_dir(DS) / "gx" / "uncommitted" / "data_docs" / "local_site"
    (page,) = sorted((site / "validations" / "candidate_values").rglob("*.html"))
    assert page.as_uri() in (day.validation_dir(DS) / "report.html").read_text()
    text = page_text(page.as_uri())
    assert "Unsuccessful Expectations 1" in text and "Video" in text, text[:3000]
