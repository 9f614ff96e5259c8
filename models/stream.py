"""Streaming training data: a day's logs become request-major Parquet shards, read back as an
iterable of request batches with memory bounded by one shard, whatever the size of the day.

Writing (``write_day_shards``) never holds a whole day: pass 1 scans both contract tables in record
batches and spills every row to a hash bucket of its ``request_id`` (so a request and its candidates
meet in one bucket); pass 2 joins and encodes one bucket at a time and writes it as one shard.

A shard has one row per request: the user side once, the candidates as list columns. Reading
(``ShardStream``) shuffles shards per epoch, assigns them to ranks (DDP) by size, shuffles requests
inside a shard and cuts batches of whole requests.
"""

from __future__ import annotations

import copy
import math
import shutil
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from hap.contract import HASH_SPACE, partition_dir, split_mask
from hap.workspace import fresh_dir
from hap_runtime.spec import FeatureSpec
from models.data import Batch, EncodedData, candidates_in_order, encode_tables

SCAN_ROWS = 65_536  # rows per scanned record batch in pass 1
# pre_buffer would coalesce the reads of many row groups ahead of the scan: off, to stay bounded
SCAN_FORMAT = pads.ParquetFileFormat(default_fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False))


def request_hash(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """crc32 of each request id (stable across runs and machines), hashing each distinct id once."""
    enc = pc.dictionary_encode(ids).combine_chunks() if isinstance(ids, pa.ChunkedArray) else pc.dictionary_encode(ids)
    uniq = np.fromiter((zlib.crc32(s.encode()) for s in enc.dictionary.to_pylist()), np.int64, len(enc.dictionary))
    return uniq[enc.indices.to_numpy(zero_copy_only=False)]


def bucket_of(h: np.ndarray, n_buckets: int) -> np.ndarray:
    """Shard bucket of each request hash: the quotient by ``HASH_SPACE``, independent of the holdout
    split (the remainder), so every shard holds a fair sample of held-out and trained requests."""
    return ((h // HASH_SPACE) % n_buckets).astype(np.int32)


# ---- encoded shards: one row per request, candidates as list columns ----


def to_table(data: EncodedData) -> pa.Table:
    counts = np.diff(data.offsets)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    fi = data.item_x.shape[1]
    return pa.table(
        {
            "request_id": pa.array(data.request_ids, pa.string()),
            "user_x": pa.FixedSizeListArray.from_arrays(pa.array(data.user_x.ravel()), data.user_x.shape[1]),
            "seq": pa.FixedSizeListArray.from_arrays(pa.array(data.seq.ravel()), data.seq.shape[1]),
            "item_x": pa.ListArray.from_arrays(pa.array(offsets.to_numpy() * fi, pa.int32()), data.item_x.ravel()),
            "source": pa.ListArray.from_arrays(offsets, pa.array(data.source.astype(np.int8))),
            "label": pa.ListArray.from_arrays(offsets, pa.array(data.label.astype(np.float32))),
            "grade": pa.ListArray.from_arrays(offsets, pa.array(data.grade.astype(np.float32))),
            "teacher": pa.ListArray.from_arrays(offsets, pa.array(data.teacher.astype(np.float32))),
        }
    )


def from_table(table: pa.Table) -> EncodedData:
    """Back to the CSR layout the models train on (candidates sorted by request)."""
    n = table.num_rows
    counts = pc.list_value_length(table["source"]).to_numpy(zero_copy_only=False).astype(np.int64)

    def flat(col: str) -> np.ndarray:
        return pc.list_flatten(table[col]).to_numpy(zero_copy_only=False)

    return EncodedData(
        request_ids=np.asarray(table["request_id"].to_pylist(), dtype=str),
        user_x=flat("user_x").astype(np.int64).reshape(n, -1),
        seq=flat("seq").astype(np.int64).reshape(n, -1),
        item_x=flat("item_x").astype(np.int64).reshape(int(counts.sum()), -1),
        req=np.repeat(np.arange(n), counts),
        source=flat("source").astype(np.int64),
        label=flat("label").astype(np.float32),
        # shards written before graded labels and the teacher (older runs' held-out shards) lack them
        grade=flat("grade").astype(np.float32) if "grade" in table.column_names else None,
        teacher=flat("teacher").astype(np.float32) if "teacher" in table.column_names else None,
    )


def read_shard(path: str | Path) -> EncodedData:
    return from_table(pq.read_table(path))


def read_shards(paths: Sequence[str | Path], max_requests: int | None = None) -> EncodedData:
    """Read whole shards (evaluation's held-out requests), stopping after ``max_requests``."""
    parts, total = [], 0
    for path in paths:
        part = read_shard(path)
        if max_requests is not None and total + part.n_requests > max_requests:
            part = part.select_requests(np.arange(max_requests - total))
        parts.append(part)
        total += part.n_requests
        if max_requests is not None and total >= max_requests:
            break
    return EncodedData.concat(parts)


@dataclass(frozen=True)
class DayShards:
    ds: str
    requests: int
    samples: int
    holdout_requests: int
    holdout_samples: int
    buckets: int
    valid_requests: int = 0
    valid_samples: int = 0


def write_day_shards(
    root: str | Path,
    ds: str,
    spec: FeatureSpec,
    label: str,
    out: Path,
    shard_requests: int,
    holdout: tuple[Path, float] | None = None,
    valid: tuple[Path, float] | None = None,
) -> DayShards:
    """Encode one day's partition into shards under ``out/ds=<ds>/`` in bounded memory.

    With ``holdout=(dir, fraction)`` a hash-split of the day's requests goes to ``dir`` instead; with
    ``valid=(dir, fraction)`` the next ``fraction`` of the hash space goes to ``dir`` (early stopping).
    """
    tmp = fresh_dir(out / f"_buckets_ds={ds}")
    n_requests = pads.dataset(partition_dir(root, "requests", ds), format="parquet").count_rows()
    n_buckets = max(1, math.ceil(n_requests / shard_requests))
    for table in ("requests", "candidates"):  # pass 1: spill rows to hash buckets of their request
        _spill(pads.dataset(partition_dir(root, table, ds), format=SCAN_FORMAT), tmp / table, n_buckets)
    # (destination, key prefix in the totals, its share [lo, hi) of the request-id hash space)
    h_frac = holdout[1] if holdout is not None else 0.0
    v_frac = valid[1] if valid is not None else 0.0
    splits = [(fresh_dir(out / f"ds={ds}"), "", None)]
    if holdout is not None:
        splits.append((fresh_dir(holdout[0] / f"ds={ds}"), "holdout_", (0.0, h_frac)))
    if valid is not None:
        splits.append((fresh_dir(valid[0] / f"ds={ds}"), "valid_", (h_frac, h_frac + v_frac)))
    totals = dict(requests=0, samples=0, holdout_requests=0, holdout_samples=0, valid_requests=0, valid_samples=0)
    for b in range(n_buckets):  # pass 2: one bucket in memory at a time
        tables = [_read_bucket(tmp / t / f"bucket={b}.parquet") for t in ("requests", "candidates")]
        if tables[0] is None or tables[1] is None:
            continue
        enc = encode_tables(tables[0], tables[1], spec, label)
        kept_out = split_mask(enc.request_ids, 0.0, h_frac + v_frac)  # neither trained on
        for dest, key, share in splits:
            mine = ~kept_out if share is None else split_mask(enc.request_ids, *share)
            part = enc.select_requests(np.flatnonzero(mine))
            if part.n_requests:
                pq.write_table(to_table(part), dest / f"part-{b:05d}.parquet")
                totals[key + "requests"] += part.n_requests
                totals[key + "samples"] += len(part.label)
                if key == "holdout_":
                    write_raw_part(tables[0], tables[1], mine, dest, b)
    shutil.rmtree(tmp)
    return DayShards(ds=ds, buckets=n_buckets, **totals)


def write_raw_part(requests: pa.Table, candidates: pa.Table, mask: np.ndarray, dest: Path, b: int) -> None:
    """The contract rows of the requests ``mask`` selects, beside their encoded shard: evaluation
    encodes them again with each model's own fitted spec (``raw_parts``), in the shard's order."""
    held = requests.filter(pa.array(mask))
    pq.write_table(held, dest / f"raw-requests-{b:05d}.parquet")
    keep = pc.is_in(candidates["request_id"], value_set=held["request_id"])
    pq.write_table(candidates.filter(keep), dest / f"raw-candidates-{b:05d}.parquet")


def raw_parts(directory: str | Path) -> list[tuple[Path, Path]]:
    """(requests, candidates) raw files of each held-out part, in the order of ``shard_files``."""
    reqs = sorted(Path(directory).glob("ds=*/raw-requests-*.parquet"))
    return [(r, r.with_name(r.name.replace("raw-requests-", "raw-candidates-"))) for r in reqs]


def read_raw_parts(directory: str | Path, spec: FeatureSpec, label: str, max_requests: int | None = None):
    """The held-out requests encoded with ``spec``, and their raw candidate rows in the same order:
    ``read_shards`` of the encoded shards when ``spec`` is the one they were written with."""
    encoded, raw, total = [], [], 0
    for req_path, cand_path in raw_parts(directory):
        requests = pq.read_table(req_path)
        if max_requests is not None and total + requests.num_rows > max_requests:
            requests = requests.slice(0, max_requests - total)
        candidates = pq.read_table(cand_path)
        encoded.append(encode_tables(requests, candidates, spec, label))
        raw.append(candidates_in_order(requests, candidates)[0])
        total += requests.num_rows
        if max_requests is not None and total >= max_requests:
            break
    if not encoded:
        raise FileNotFoundError(f"no held-out rows under {directory}")
    return EncodedData.concat(encoded), pa.concat_tables(raw)


def _spill(src: pads.Dataset, out: Path, n_buckets: int) -> None:
    """Scan ``src`` in record batches and append each batch's rows to their bucket's file.

    Every ``write_table`` call writes a row group straight away, so memory holds one scanned batch.
    """
    out.mkdir(parents=True)
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for rb in src.to_batches(batch_size=SCAN_ROWS, batch_readahead=1, fragment_readahead=1, use_threads=False):
            buckets = bucket_of(request_hash(rb.column("request_id")), n_buckets)
            table = pa.Table.from_batches([rb])
            for b in np.unique(buckets):
                if b not in writers:
                    writers[b] = pq.ParquetWriter(out / f"bucket={b}.parquet", src.schema)
                writers[b].write_table(table.filter(pa.array(buckets == b)))
    finally:
        for w in writers.values():
            w.close()


def _read_bucket(path: Path) -> pa.Table | None:
    return pq.read_table(path) if path.exists() else None


def shard_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("ds=*/part-*.parquet"))


# ---- reading: an iterable of request batches, sharded per rank ----


class ShardStream:
    """Request batches from encoded shards, one shard in memory at a time.

    Every rank computes the same plan from the shard sizes in the Parquet footers: per epoch the
    shards are shuffled (seed, epoch) and dealt to ranks by size, so ranks read disjoint data; a
    rank's batch is ``batch_requests // world`` requests so the global batch stays the configured
    size; ranks with fewer requests wrap around so that all ranks take the same number of steps
    (DDP's all-reduce needs that).
    """

    def __init__(self, paths: Sequence[str | Path], sources: Sequence[str] | None = None) -> None:
        if not paths:
            raise FileNotFoundError("no training shards to stream")
        self.paths = [Path(p) for p in paths]
        self.sizes = np.array([pq.ParquetFile(p).metadata.num_rows for p in self.paths], dtype=np.int64)
        self.sources = tuple(sources) if sources else None

    @property
    def n_requests(self) -> int:
        return int(self.sizes.sum())

    def filter_sources(self, sources: Sequence[str]) -> ShardStream:
        """The same stream restricted to candidates of ``sources`` (the expressive model's samples)."""
        out = copy.copy(self)  # shares the paths and footer sizes: no second read of the footers
        out.sources = tuple(sources)
        return out

    def plan(self, epoch: int, world: int, seed: int) -> list[list[int]]:
        """Shard indices per rank for one epoch (greedy: the next shard goes to the lightest rank)."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self.paths))
        ranks: list[list[int]] = [[] for _ in range(world)]
        load = np.zeros(world, dtype=np.int64)
        for s in order:
            r = int(np.argmin(load))
            ranks[r].append(int(s))
            load[r] += self.sizes[s]
        return ranks

    def epoch(self, epoch: int, batch_requests: int, rank: int = 0, world: int = 1, seed: int = 0) -> Iterator[Batch]:
        per_rank = max(1, batch_requests // world)
        plan = self.plan(epoch, world, seed)
        if not plan[rank]:
            raise ValueError(f"rank {rank} got no shard: {len(self.paths)} shards for {world} ranks")
        steps = max(math.ceil(sum(int(self.sizes[s]) for s in mine) / per_rank) for mine in plan)
        done = 0
        while done < steps:  # a second pass only on ranks that hold fewer requests
            for data in self._cut(plan[rank], epoch, per_rank, seed):
                yield data.to_batch()
                done += 1
                if done == steps:
                    return

    def _cut(self, shards: list[int], epoch: int, size: int, seed: int) -> Iterator[EncodedData]:
        carry: EncodedData | None = None
        for s in shards:
            data = read_shard(self.paths[s])
            data = data.select_requests(np.random.default_rng([seed, epoch, s]).permutation(data.n_requests))
            if self.sources:
                data = data.filter_sources(self.sources)
            if carry is not None:
                data = EncodedData.concat([carry, data])
            full = data.n_requests - data.n_requests % size
            for start in range(0, full, size):
                yield data.select_requests(np.arange(start, start + size))
            carry = data.select_requests(np.arange(full, data.n_requests)) if full < data.n_requests else None
        if carry is not None:
            yield carry
