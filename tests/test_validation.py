"""Real Great Expectations on real partitions: the clean day passes, each corruption of the corpus
is caught by the expectation meant for it, the day is quarantined and kept, re-validation clears it."""

import datetime as dt
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from expectations.validate import describe, validate_day
from hap.contract import partition_dir, read_partition, write_partition
from hap.workspace import Workspace

HISTORY = ("2026-11-18", "2026-11-19")
DS = "2026-11-20"


@pytest.fixture(scope="module")
def base(small_sim, tmp_path_factory):
    """Two validated history days (the day-over-day baseline) and the day under test."""
    ws = Workspace(tmp_path_factory.mktemp("validation-base"))
    small_sim.write_days(ws.data, HISTORY[0], 3, 400)
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


def _drop_some_globals(t: pa.Table) -> pa.Table:
    g = np.flatnonzero(_mask(t, "global"))[:3]
    keep = np.ones(t.num_rows, bool)
    keep[g] = False
    return t.filter(pa.array(keep))


# name -> (table, corruption, (batch, expectation, column) that must report it)
CORPUS = {
    "dropped column": ("candidates", lambda t: t.drop_columns(["item_ctr_7d"]),
                       ("candidates", "expect_table_columns_to_match_set", None)),
    "wrong type": ("candidates", lambda t: _set(t, "item_id", pc.cast(t["item_id"], pa.string())),
                   ("schema", "expect_column_pair_values_to_be_equal", "expected_type")),
    "duplicate rows": ("candidates", lambda t: pa.concat_tables([t, t.slice(0, 10)]),
                       ("candidates", "expect_compound_columns_to_be_unique", ["request_id", "item_id"])),
    "positives on non-exposed rows": ("candidates", lambda t: _with_values(t, "click", _mask(t, "rank"), 1),
                                      ("candidates", "expect_column_values_to_be_in_set", "click")),
    "rank row at position 10": ("candidates", lambda t: _with_values(t, "rank_pos", _mask(t, "rank"), 10),
                                ("candidates", "expect_column_values_to_be_between", "rank_pos")),
    "orphan candidates": ("candidates", lambda t: _with_values(t, "request_id", _first_n(t, 3), "ghost-1"),
                          ("integrity", "expect_column_values_to_be_in_set", "known_request")),
    "empty partition": ("candidates", lambda t: t.slice(0, 0),
                        ("candidates", "expect_table_row_count_to_be_between", None)),
    "half-volume day": ("both", _half_volume, ("daily", "expect_column_values_to_be_between", "candidate_rows")),
    "NaN features": ("candidates", lambda t: _with_values(t, "item_ctr_7d", _first_n(t, 4), np.nan),
                     ("candidates", "expect_column_values_to_not_be_null", "item_ctr_7d")),
    "out-of-range ids": ("candidates", lambda t: _with_values(t, "item_id", _first_n(t, 2), -7),
                         ("candidates", "expect_column_values_to_be_between", "item_id")),
    "timestamps from another day": ("requests", _shift_ts,
                                    ("per_request", "expect_column_values_to_be_in_set", "ts_day")),
    "new content_type": ("candidates", lambda t: _with_values(t, "content_type", _first_n(t, 2), "podcast"),
                         ("candidates", "expect_column_values_to_be_in_set", "content_type")),
    "unknown source": ("candidates", lambda t: _with_values(t, "source", _mask(t, "global"), "ads"),
                       ("candidates", "expect_column_values_to_be_in_set", "source")),
    "global count off the contract": ("candidates", _drop_some_globals,
                                      ("per_request", "expect_column_pair_values_to_be_equal", "n_global")),
    "behaviour sequence too long": ("requests", _long_history,
                                    ("per_request", "expect_column_values_to_be_between", "history_len")),
    "positive rate collapse": ("candidates", lambda t: _with_values(t, "click", np.ones(t.num_rows, bool), 0),
                               ("daily", "expect_column_values_to_be_between", "positive_rate")),
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
    assert verdict["day_over_day_bounds"]["rows_min"] > 0  # bands from the two history days
    assert verdict["data_docs"] and verdict["data_docs"].endswith("index.html")


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


def test_validation_leaves_the_committed_suites_unchanged(day):
    from expectations.validate import CONTEXT_ROOT

    suites = sorted((CONTEXT_ROOT / "gx" / "expectations").glob("*.json"))
    before = [p.read_bytes() for p in suites]
    validate_day(day.root, DS)
    assert [p.read_bytes() for p in suites] == before
