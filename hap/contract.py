"""The data contract: hive-partitioned Parquet of logged cascade samples, request-level layout.

``<root>/requests/ds=YYYY-MM-DD/part-0.parquet`` — one row per request (user side stored once).
``<root>/candidates/ds=YYYY-MM-DD/part-0.parquet`` — one row per logged candidate.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hap import SOURCES
from hap_runtime.spec import DEFAULT_SPEC, FeatureSpec

LABEL_COLUMNS: tuple[str, ...] = ("click", "like", "comment", "dwell_ms")
POSITION_COLUMNS: tuple[str, ...] = ("retrieval_pos", "prerank_pos", "rank_pos")
TABLES: tuple[str, ...] = ("requests", "candidates")
# Beside the contract, from simulation only: every retrieved candidate of the held-out requests with
# its true click probability (evaluation at serving ratios). Real logs have no such table.
EVAL_TABLE = "eval_candidates"
# Row groups are the unit a reader decodes at once: bounded groups keep streaming readers bounded.
ROW_GROUP_ROWS = 65_536

_ARROW_TYPES = {
    "int64": pa.int64(),
    "string": pa.string(),
    "float": pa.float32(),
    "list<int64>": pa.list_(pa.int64()),
}


def requests_schema(spec: FeatureSpec = DEFAULT_SPEC) -> pa.Schema:
    fields = [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
    fields += [pa.field(f.name, _ARROW_TYPES[f.arrow_type]) for f in spec.features if f.side == "user"]
    return pa.schema(fields)


def candidates_schema(spec: FeatureSpec = DEFAULT_SPEC) -> pa.Schema:
    fields = [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
    fields += [pa.field(c, pa.int32()) for c in POSITION_COLUMNS]
    fields += [pa.field(c, pa.int8()) for c in ("click", "like", "comment")]
    fields += [pa.field("dwell_ms", pa.int32())]
    fields += [pa.field(f.name, _ARROW_TYPES[f.arrow_type]) for f in spec.features if f.side == "item"]
    return pa.schema(fields)


SCHEMAS = {"requests": requests_schema, "candidates": candidates_schema}


def partition_dir(root: str | Path, table: str, ds: str) -> Path:
    return Path(root) / table / f"ds={ds}"


def partition_ready(root: str | Path, ds: str) -> bool:
    """Both tables of the day have landed (partitions are written atomically: present = complete)."""
    return all((partition_dir(root, t, ds) / "part-0.parquet").exists() for t in ("requests", "candidates"))


def write_partition(root: str | Path, table: str, ds: str, data: pa.Table) -> Path:
    """Write one day's table atomically, replacing any earlier write of the same day (idempotent)."""
    out = partition_dir(root, table, ds)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        _rmtree(tmp)
    tmp.mkdir(parents=True)
    pq.write_table(data, tmp / "part-0.parquet", row_group_size=ROW_GROUP_ROWS)
    if out.exists():
        old = out.with_name(out.name + ".old")
        os.replace(out, old)
        os.replace(tmp, out)
        _rmtree(old)
    else:
        os.replace(tmp, out)
    return out


def read_partition(root: str | Path, table: str, ds: str) -> pa.Table:
    """Read one day's table; raises ``FileNotFoundError`` naming the partition if it is absent."""
    part = partition_dir(root, table, ds)
    files = sorted(part.glob("*.parquet")) if part.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no parquet files in partition {part}")
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def source_ids(sources: pa.Array | np.ndarray) -> np.ndarray:
    """Map source strings to their index in ``SOURCES`` (-1 for anything else)."""
    arr = np.asarray(sources, dtype=object)
    out = np.full(len(arr), -1, dtype=np.int64)
    for i, s in enumerate(SOURCES):
        out[arr == s] = i
    return out


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).fill_null(0).to_numpy()


LABELS = {
    "click": lambda t: _col(t, "click") > 0,
    "engaged": lambda t: (_col(t, "click") > 0) | (_col(t, "like") > 0) | (_col(t, "comment") > 0),
    "long_view": lambda t: _col(t, "dwell_ms") >= 10_000,
}


def aggregate_label(candidates: pa.Table, label: str = "click") -> np.ndarray:
    """Turn the feedback columns into the binary training target (default: click)."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; choose one of {sorted(LABELS)}")
    return LABELS[label](candidates).astype(np.float32)


HASH_SPACE = 10_000  # request ids hash to crc32 % HASH_SPACE for the holdout and validation splits


def split_mask(request_ids: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Requests whose id hashes into the share ``[lo, hi)`` of the hash space: a deterministic
    request-level split, stable across reruns, machines and the simulator (which writes its
    evaluation table for exactly the held-out share)."""
    a, b = int(lo * HASH_SPACE), int(hi * HASH_SPACE)
    return np.fromiter((a <= zlib.crc32(r.encode()) % HASH_SPACE < b for r in request_ids), bool, len(request_ids))


def holdout_mask(request_ids: np.ndarray, fraction: float) -> np.ndarray:
    """The held-out requests: the first ``fraction`` of the hash space."""
    return split_mask(request_ids, 0.0, fraction)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over uint64 arrays (they wrap silently): a fast, well-spread integer
    hash for deterministic draws (ingestion) and order-free fingerprints (validation)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
