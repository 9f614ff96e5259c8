"""Streaming data path: a day's partition → hash-bucketed request shards → request batches per rank."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from hap.contract import write_partition
from hap_runtime.spec import DEFAULT_SPEC
from models.data import holdout_mask, load_day
from models.stream import ShardStream, from_table, read_shards, shard_files, to_table, write_day_shards

DS = "2026-11-20"


@pytest.fixture(scope="module")
def day_root(tmp_path_factory, small_day):
    root = tmp_path_factory.mktemp("logs")
    write_partition(root, "requests", DS, small_day.requests)
    write_partition(root, "candidates", DS, small_day.candidates)
    return root


def _by_request(data) -> dict[str, tuple]:
    """request id → (user row, sequence, sorted candidate rows with source and label): order-free."""
    off = data.offsets
    out = {}
    for r, rid in enumerate(data.request_ids):
        rows = np.column_stack([data.item_x, data.source, data.label])[off[r] : off[r + 1]]
        out[str(rid)] = (tuple(data.user_x[r]), tuple(data.seq[r]), sorted(map(tuple, rows.tolist())))
    return out


def test_shards_hold_exactly_the_day_split_into_train_and_holdout(day_root, tmp_path):
    whole = load_day(day_root, DS, DEFAULT_SPEC, "click")  # the in-memory reference
    shards = write_day_shards(day_root, DS, DEFAULT_SPEC, "click", tmp_path / "train", 128, (tmp_path / "hold", 0.2))
    assert shards.buckets == int(np.ceil(whole.n_requests / 128))
    train = read_shards(shard_files(tmp_path / "train"))
    hold = read_shards(shard_files(tmp_path / "hold"))
    assert train.n_requests + hold.n_requests == whole.n_requests == shards.requests + shards.holdout_requests
    assert len(train.label) + len(hold.label) == len(whole.label) == shards.samples + shards.holdout_samples
    # the same split as the in-memory path's hash holdout, and no request or candidate changed
    expected_hold = set(whole.request_ids[holdout_mask(whole.request_ids, 0.2)])
    assert set(hold.request_ids) == expected_hold
    assert {**_by_request(train), **_by_request(hold)} == _by_request(whole)
    assert not (tmp_path / "train" / f"_buckets_ds={DS}").exists()  # spill files are removed


def test_a_rewrite_replaces_the_day_without_duplicates(day_root, tmp_path):
    for _ in range(2):
        write_day_shards(day_root, DS, DEFAULT_SPEC, "click", tmp_path / "train", 256)
    data = read_shards(shard_files(tmp_path / "train"))
    assert len(set(data.request_ids)) == data.n_requests == 600


def test_table_round_trip_keeps_the_csr_layout(day_root):
    whole = load_day(day_root, DS, DEFAULT_SPEC, "click").select_requests(np.arange(50))
    back = from_table(to_table(whole))
    for name in ("user_x", "seq", "item_x", "req", "source", "label"):
        np.testing.assert_array_equal(getattr(back, name), getattr(whole, name))


@pytest.fixture(scope="module")
def stream(day_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_day_shards(day_root, DS, DEFAULT_SPEC, "click", out, 64)
    return ShardStream(shard_files(out))


def _request_keys(batches) -> list[tuple]:
    keys = []
    for b in batches:  # a request is identified by its user row + sequence
        keys += [tuple(u) + tuple(s) for u, s in zip(b.user_x.tolist(), b.seq.tolist(), strict=True)]
    return keys


def test_one_process_sees_every_request_once_per_epoch_in_a_new_order(stream):
    e0 = _request_keys(stream.epoch(0, 50, seed=1))
    e1 = _request_keys(stream.epoch(1, 50, seed=1))
    assert len(e0) == len(set(e0)) == stream.n_requests == 600
    assert sorted(e0) == sorted(e1) and e0 != e1
    assert e0 == _request_keys(stream.epoch(0, 50, seed=1))  # deterministic for (seed, epoch)


def test_ranks_read_disjoint_shards_and_take_the_same_number_of_steps(stream):
    plan = stream.plan(0, 2, seed=1)
    assert not set(plan[0]) & set(plan[1]) and sorted(plan[0] + plan[1]) == list(range(len(stream.paths)))
    ranks = [list(stream.epoch(0, 50, rank=r, world=2, seed=1)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == int(np.ceil(max(stream.sizes[p].sum() for p in plan) / 25))
    assert all(b.n_requests <= 25 for bs in ranks for b in bs)  # the global batch stays 50 requests
    seen = [set(_request_keys(bs)) for bs in ranks]
    assert len(seen[0] | seen[1]) == 600  # together they cover the day


def test_memory_per_shard_is_bounded_by_the_shard_size(day_root, tmp_path):
    write_day_shards(day_root, DS, DEFAULT_SPEC, "click", tmp_path, 100)
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in shard_files(tmp_path)]
    assert len(sizes) == 6 and max(sizes) < 2 * 100  # hash buckets: about shard_requests each
