"""The simulator writes the contract exactly, deterministically, and its difficulty ordering
comes out of the cascade."""

import numpy as np
import pyarrow.compute as pc

from hap import SOURCES
from hap.contract import (
    aggregate_label,
    candidates_schema,
    partition_dir,
    read_partition,
    requests_schema,
)
from models.metrics import auc


def test_tables_match_the_contract_schemas(small_day):
    assert small_day.requests.schema == requests_schema()
    assert small_day.candidates.schema == candidates_schema()
    assert len(set(small_day.requests["request_id"].to_pylist())) == small_day.requests.num_rows


def test_per_request_composition(small_sim, small_day):
    comp = small_sim.cfg.composition
    c = small_day.candidates.to_pandas()
    counts = c.groupby(["request_id", "source"]).size().unstack(fill_value=0)
    positives = c[c.click == 1].groupby("request_id").size().reindex(counts.index, fill_value=0)
    assert (counts["rank"] == comp.rank_negatives).all()
    assert (counts["prerank"] == comp.prerank_negatives).all()
    assert (counts["expose"] >= 1).all()
    assert (counts.get("global", 0) == comp.global_per_positive * positives).all()
    assert not c.duplicated(["request_id", "item_id"]).any()


def test_labels_and_positions_follow_the_cascade(small_sim, small_day):
    comp = small_sim.cfg.composition
    c = small_day.candidates.to_pandas()
    assert (c.loc[c.source != "expose", ["click", "like", "comment", "dwell_ms"]] == 0).all().all()
    assert (c.loc[c.source == "rank", "rank_pos"] > comp.rank_cutoff).all()
    assert (c.loc[c.source == "prerank", "prerank_pos"] > comp.prerank_cutoff).all()
    assert c.loc[c.source == "prerank", "rank_pos"].isna().all()
    assert c.loc[c.source == "global", ["retrieval_pos", "prerank_pos", "rank_pos"]].isna().all().all()
    assert 0.05 < c.loc[c.source == "expose", "click"].mean() < 0.8


def test_same_seed_same_day_is_identical(small_sim):
    a = small_sim.simulate_day("2026-11-21", 300)
    b = small_sim.simulate_day("2026-11-21", 300)
    c = small_sim.simulate_day("2026-11-22", 300)
    assert a.candidates.equals(b.candidates) and a.requests.equals(b.requests)
    assert not a.candidates["item_id"].equals(c.candidates["item_id"])


def test_difficulty_ordering_emerges_from_the_cascade(small_day):
    """True-utility AUC of positives vs each source's negatives: expose < rank < prerank < global."""
    cand = small_day.candidates
    label = aggregate_label(cand)
    source = np.asarray(cand["source"])
    aucs = []
    for s in SOURCES:
        m = (label == 1) | ((source == s) & (label == 0))
        aucs.append(auc(small_day.utility[m], label[m]))
    assert aucs == sorted(aucs), dict(zip(SOURCES, aucs, strict=True))
    assert aucs[-1] - aucs[0] > 0.1


def test_write_is_idempotent_per_day(small_sim, tmp_path):
    small_sim.write_days(tmp_path, "2026-11-20", 1, 200)
    small_sim.write_days(tmp_path, "2026-11-20", 1, 200)
    assert len(list(partition_dir(tmp_path, "candidates", "2026-11-20").glob("*.parquet"))) == 1
    table = read_partition(tmp_path, "requests", "2026-11-20")
    assert table.num_rows == 200
    assert pc.count_distinct(table["request_id"]).as_py() == 200
