"""Real Great Expectations on real partitions: clean passes; corruption is named, quarantined, kept."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from expectations.validate import describe, validate_day
from hap.contract import partition_dir

DS = "2026-11-20"


@pytest.fixture
def day(workspace, small_day):
    from hap.contract import write_partition

    write_partition(workspace.data, "requests", DS, small_day.requests)
    write_partition(workspace.data, "candidates", DS, small_day.candidates)
    return workspace


def _rewrite(ws, table, fn):
    path = partition_dir(ws.data, table, DS) / "part-0.parquet"
    pq.write_table(fn(pq.read_table(path)), path)
    return path


def _failed(verdict):
    return {(f["expectation"], f.get("column")) for t in verdict["tables"].values() for f in t["failed"]}


def test_clean_day_passes(day):
    verdict = validate_day(day.root, DS)
    assert verdict["success"], describe(verdict)
    assert day.validation_status(DS) == "passed"


def test_positives_on_non_exposed_rows_fail_and_quarantine(day):
    def corrupt(t):
        click = t["click"].to_numpy().copy()
        click[np.asarray(t["source"]) == "rank"] = 1
        return t.set_column(t.schema.get_field_index("click"), "click", pa.array(click, pa.int8()))

    path = _rewrite(day, "candidates", corrupt)
    verdict = validate_day(day.root, DS)
    assert not verdict["success"]
    assert ("expect_column_values_to_be_in_set", "click") in _failed(verdict)
    assert "click" in describe(verdict) and "quarantined" in describe(verdict)
    assert day.validation_status(DS) == "quarantined"
    assert path.exists()  # kept for inspection, never deleted


def test_dropped_column_and_unknown_source_are_named(day):
    _rewrite(day, "candidates", lambda t: t.drop_columns(["item_ctr_7d"]))
    _rewrite(
        day,
        "requests",
        lambda t: t.set_column(0, "request_id", pa.array(["dup"] * t.num_rows)),
    )
    failed = _failed(validate_day(day.root, DS))
    assert ("expect_table_columns_to_match_set", None) in failed
    assert ("expect_column_values_to_be_unique", "request_id") in failed


def test_unreadable_file_gives_a_clear_verdict_not_a_traceback(day):
    path = partition_dir(day.data, "candidates", DS) / "part-0.parquet"
    with path.open("r+b") as f:
        f.truncate(500)
    verdict = validate_day(day.root, DS)
    assert not verdict["success"]
    assert ("readable_partition", None) in _failed(verdict)
    assert path.exists()


def test_revalidation_after_a_fix_unquarantines(day, small_day):
    from hap.contract import write_partition

    _rewrite(day, "candidates", lambda t: t.drop_columns(["source"]))
    assert not validate_day(day.root, DS)["success"]
    write_partition(day.data, "candidates", DS, small_day.candidates)
    assert validate_day(day.root, DS)["success"]
    assert day.validation_status(DS) == "passed"


def test_validation_leaves_the_committed_suites_unchanged(day):
    from expectations.validate import CONTEXT_ROOT

    suites = sorted((CONTEXT_ROOT / "gx" / "expectations").glob("*.json"))
    before = [p.read_bytes() for p in suites]
    validate_day(day.root, DS)
    assert [p.read_bytes() for p in suites] == before
