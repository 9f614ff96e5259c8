"""``hap ingest``: real impression logs into the data contract.

Real logs have what was shown and what was clicked, rarely what the cascade's earlier stages
passed over. Ingestion writes the contract's ``requests``/``candidates`` partitions per UTC day of
``ts`` (``hap.contract``), fills every spec feature, and builds the ``rank``/``prerank``/``global``
negatives a log lacks with a retriever over impressions strictly before each request's chunk.
docs/runbook.md ("Bringing your own logs") has the same tables for operators.

Generic impression schema (a Parquet file or directory, or a CSV file; one row per shown item):

============== ======== =====================================================================
column         required meaning
============== ======== =====================================================================
request_id     yes      str; a request is every row sharing it, at the earliest ``ts``
user_id        yes      str or int
ts             yes      timestamp, or ISO 8601 string; times without a zone are UTC
item_id        yes      str or int
click          yes      0/1
like, comment  no       0/1 (absent or null: 0)
dwell_ms       no       int >= 0 (absent or null: 0)
position       no       1-based display position (absent: file order within the request)
history        no       the user's behaviour before the request, OLDEST FIRST (MIND's order):
                        a list of item ids or a space-separated string; first row per request
source         no       expose | rank | prerank | global (null: expose). A source found anywhere
                        in the log is taken as logged, with ``retrieval_pos``/``prerank_pos``/
                        ``rank_pos`` as given; only sources absent from the whole log are built
<feature>      no       any ``DEFAULT_SPEC`` feature by name; user features from a request's
                        first row. Nulls fall back to derived values or ``DEFAULTS``; values
                        outside the spec's vocabulary or range are an error (numbers clip)
============== ======== =====================================================================

MIND (``behaviors.tsv`` + ``news.tsv``, no header rows): a behaviour line is one request
``mind-<impression_id>``; its impressions ``N1-1 N2-0`` are the exposed items in display order;
its history (chronological) the behaviour sequence; times (``11/11/2019 9:05:58 AM``) are taken as
UTC. ``news.tsv`` gives item attributes: ``category`` is a stable hash of the news category into the
spec's range, ``title_len`` the title's length in characters, ``content_type`` ``article``; the
category and subcategory names also feed the retriever's content term.

Mapping: every id (user, item, author) is ``stable_id`` of its string form (an int 42 and "42"
agree); ``hist_item_ids`` holds the ``max_len`` most recent items, most recent first (as the
simulator); exposed rows carry their display position in all three stage columns and the only
labels; ``request_id`` is unique per day (a request's rows share its day). A repeated
(request, item) keeps its first row; a request with more than ``composition.expose[1]`` exposed
items keeps the first ones by position, one with fewer than ``expose[0]`` is dropped (logged).

The clock (``IngestConfig``: ``chunk_requests``, ``chunk_minutes``): a day's requests, in time
order, are processed in chunks of at most ``chunk_requests`` requests within one ``chunk_minutes``
slot of the UTC clock. For every request of a chunk, the retriever's pool and statistics and the
item features of its candidates (exposed and built alike) read only the impressions of requests
strictly earlier than the chunk's first request: never the request's own or later ones, though a
request does not see the earlier requests of its own chunk either. Co-visitation is refreshed per
slot: a chunk uses the pairs of earlier days and of its day's earlier slots. An impression's time
is its request's ``ts``; "impressions" are the log's exposed rows (also of requests later dropped
or truncated).

Negatives for sources the log does not have (``IngestConfig`` holds the knobs):

- Retriever: the pool is the items with an impression in the ``covis_window_days`` x 24 h before
  the chunk, minus the request's shown items and history. An item i's score for a request of user
  u is ``covis_weight·log(1 + Σ_h w(h→i)) + content_weight·cat_share(u, i) + subcategory_weight·
  sub_share(u, i) + popularity_weight·log(1 + impressions of i in the recent_hours before the
  chunk)`` (plus a tie-break of 1e-9 x a per-day seeded hash). h runs over the user's
  ``covis_history`` most recent history items; w(a -> b) adds 1 each time b was clicked in a
  request whose user had a among their ``covis_history`` most recent history items, or also
  clicked a, and ``shown_weight`` each time a and b were shown together in a request where one of
  them was clicked, summed over days [d - covis_window_days, d) and over d's earlier slots, keeping
  the ``covis_neighbours`` strongest b per a (for each of those two parts). cat_share / sub_share:
  the share of the user's ``content_history`` most recent history items (those with a known
  category) in i's category / subcategory: MIND's news.tsv, or a generic log's ``category`` column
  as the feature (the item's latest value before the chunk; no subcategory); 0 without them.
  The top ``retrieval_size`` items are the retrieval; ``rank`` negatives are sampled from
  positions (rank_cutoff, prerank_cutoff] (all three position columns = that position),
  ``prerank`` ones from (prerank_cutoff, retrieval_size] (``rank_pos`` null), up to
  ``composition.rank[1]`` / ``.prerank[1]``. A log's first chunk has an empty pool, so none: the
  composition's bounds must allow 0 (configs/real_logs.yaml).
- ``global``: round(``composition.global_per_positive[1]`` x positives) items drawn uniformly
  from the items shown in or referenced (history) by requests strictly before the chunk (MIND's
  news.tsv lists the whole period's news, so it gives attributes only: later news never enters),
  never shown in the request, in its history or among its other negatives, without repeats.
- Random draws are a counter-based hash of (seed, request id, draw index): deterministic given the
  seed; a request's random numbers do not depend on other requests (what they pick from does).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hap import SOURCES
from hap.config import HapConfig
from hap.contract import candidates_schema, mix64, partition_dir, requests_schema, write_partition
from hap.progress import progress
from hap_runtime.spec import DEFAULT_SPEC, Feature, FeatureSpec

log = logging.getLogger(__name__)

_EXPOSE, _RANK, _PRERANK, _GLOBAL = range(4)
_US_PER_DAY = 86_400_000_000
_US_PER_HOUR = 3_600_000_000
_ID_MASK = (1 << 53) - 1  # ids stay exact through float64 (pandas with nulls, JSON in JavaScript)
_NEVER = np.iinfo(np.int64).max

REQUIRED: tuple[str, ...] = ("request_id", "user_id", "ts", "item_id", "click")
STAGE_COLUMNS: tuple[str, ...] = ("retrieval_pos", "prerank_pos", "rank_pos")
MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
MIND_BEHAVIORS = ("impression_id", "user_id", "time", "history", "impressions")
MIND_NEWS = ("news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities")

# Values for features a log neither has nor lets us derive honestly (overridable: ingest.defaults).
DEFAULTS: dict[str, Any] = {
    "age_bucket": 0,
    "gender": 0,
    "city": 0,
    "device": "web",  # MIND is a website's log
    "network": "wifi",
    "author_id": 1,
    "content_type": "article",  # MIND is news articles
    "category": 0,
    "duration_s": 0.0,
    "title_len": 0.0,
}
# Features derived when the log has no column for them: from ts, from earlier days (user side), or
# from impressions before the request's chunk (item side: the same for exposed and built rows).
DERIVED: dict[str, str] = {
    "hour_of_day": "hour of ts (UTC)",
    "day_of_week": "weekday of ts (UTC), Monday = 0",
    "activity_days": "days with a request of the user in the user_window_days before d",
    "follow_count": "the user's clicks in the user_window_days before d (impression logs have no follow graph)",
    "popularity": "the item's impressions in the stats_window_days x 24 h before the chunk",
    "item_ctr_7d": "(clicks + m·p0) / (impressions + m) over the stats_window_days x 24 h before the chunk; "
    "p0 that window's CTR (0 without earlier impressions), m = ctr_prior_impressions",
    "item_age_hours": "hours from the item's first impression before the chunk to the request's ts; 0 if none",
    "category": "MIND: blake2b of the news category mod the spec's size",
    "title_len": "MIND: characters of the news title",
}


class IngestError(ValueError):
    """Bad input, in one line naming the column and an example offending value."""


# ---------------------------------------------------------------------------------------- ids, hashes


def stable_id(value: str) -> int:
    """A string id's contract id: blake2b (8 bytes) masked to 53 bits, +1 so never 0 (the spec's
    padding). The same string gets the same id on every run, day and machine; 53 bits keep it exact
    wherever it passes through a float64, any collision among 1M ids has odds of about 1 in 20,000."""
    return (int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little") & _ID_MASK) + 1


def stable_ids(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``stable_id`` of every string (nulls give 0), hashing each distinct value once."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    enc = pc.dictionary_encode(arr)
    words = enc.dictionary.to_pylist()
    table = np.fromiter((stable_id(s) for s in words), np.int64, len(words))
    idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(idx >= 0, table[np.maximum(idx, 0)] if len(table) else 0, 0)


def _uniform(seed: int, stage: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) draws keyed by (seed, stage, a, b): deterministic per key, whatever else is drawn."""
    s = mix64(np.array([(seed & _ID_MASK) * 16 + stage + 1], dtype=np.uint64))
    x = mix64(mix64(np.asarray(a).astype(np.uint64) ^ s) ^ np.asarray(b).astype(np.uint64))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


# -------------------------------------------------------------------------------------- input parsing


@dataclass
class _Log:
    """A parsed log with ids mapped, not yet split into days."""

    request_id: np.ndarray  # (R,) str
    user: np.ndarray  # (R,) int64 contract ids
    ts: np.ndarray  # (R,) int64 µs since the epoch, UTC
    history: pa.Array  # (R,) list<int64> item ids, most recent first, at most max_len
    user_features: dict[str, tuple[np.ndarray, np.ndarray]]  # from the log: (values, present)
    row_req: np.ndarray  # (N,) index into the requests
    item: np.ndarray  # (N,) int64
    source: np.ndarray  # (N,) index into SOURCES
    position: np.ndarray  # (N,) 1-based display position
    labels: dict[str, np.ndarray]  # click, like, comment, dwell_ms: (N,) int64
    stage_pos: dict[str, np.ndarray]  # logged retrieval_pos/prerank_pos/rank_pos: (N,) int64, 0 = null
    item_features: dict[str, tuple[np.ndarray, np.ndarray]]
    catalogue: np.ndarray | None = None  # item ids with known attributes (MIND: news.tsv)
    static: dict[str, np.ndarray] = field(default_factory=dict)  # their features, by catalogue row
    content: dict[str, np.ndarray] = field(default_factory=dict)  # category/subcategory ids (0: none), by row


def _where(i: int, rid: pa.Array | None) -> str:
    """Where a bad value is: the data row (1-based) and its request id when known."""
    return f"row {i + 1}" + (f", request_id {rid[i].as_py()!r}" if rid is not None else "")


def _array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def _strings(col: pa.ChunkedArray | pa.Array, name: str) -> pa.Array:
    """An id column as strings: strings as they are, integers (also integral floats) as decimals."""
    arr = _array(col)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr.cast(pa.string())
    if pa.types.is_integer(t):
        return arr.cast(pa.string())
    if pa.types.is_floating(t):
        vals = arr.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(~np.isnan(vals) & (vals != np.floor(vals)))
        if len(bad):
            raise IngestError(
                f"column {name!r}: ids must be strings or integers, found {vals[bad[0]]!r} ({_where(bad[0], None)})"
            )
        return pa.array(np.where(np.isnan(vals), 0, vals).astype(np.int64), mask=np.isnan(vals)).cast(pa.string())
    raise IngestError(f"column {name!r}: ids must be strings or integers, got type {t}")


def _no_nulls(arr: pa.Array, name: str, rid: pa.Array | None = None) -> None:
    if arr.null_count:
        i = int(np.flatnonzero(~arr.is_valid().to_numpy(zero_copy_only=False))[0])
        raise IngestError(f"column {name!r}: missing value ({_where(i, rid)})")


def _numeric(col: pa.ChunkedArray | pa.Array, name: str, rid: pa.Array | None) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column as (float64 values, present); text that is no number is an error."""
    arr = _array(col)
    t = arr.type
    if pa.types.is_boolean(t):
        arr, t = arr.cast(pa.int8()), pa.int8()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = arr.to_numpy(zero_copy_only=False)
        present = arr.is_valid().to_numpy(zero_copy_only=False) & (text != "")
        vals = np.zeros(len(text))
        for i in np.flatnonzero(present):
            try:
                vals[i] = float(text[i])
            except ValueError:
                raise IngestError(f"column {name!r}: not a number: {text[i]!r} ({_where(i, rid)})") from None
        return vals, present
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise IngestError(f"column {name!r}: expected numbers, got type {t}")
    present = arr.is_valid().to_numpy(zero_copy_only=False)
    vals = arr.cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False).copy()
    present &= ~np.isnan(vals)
    vals[~present] = 0
    return vals, present


def _counts(t: pa.Table, name: str, rid: pa.Array, binary: bool, required: bool = False) -> np.ndarray:
    """A label column: 0/1 (``binary``) or a count >= 0; absent or null: 0 unless ``required``."""
    if name not in t.column_names:
        return np.zeros(t.num_rows, np.int64)
    vals, present = _numeric(t.column(name), name, rid)
    if required and not present.all():
        raise IngestError(f"column {name!r}: missing value ({_where(int(np.flatnonzero(~present)[0]), rid)})")
    bad = present & ((vals != np.floor(vals)) | (vals < 0) | ((vals > 1) if binary else False))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "labels must be 0 or 1" if binary else "must be a whole number >= 0"
        raise IngestError(f"column {name!r}: {what}, found {_example(t.column(name), i)!r} ({_where(i, rid)})")
    return vals.astype(np.int64)


def _example(col: pa.ChunkedArray | pa.Array, i: int) -> Any:
    v = _array(col)[i].as_py()
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _timestamps(col: pa.ChunkedArray | pa.Array, name: str, rid: pa.Array | None, fmt: str | None = None) -> np.ndarray:
    """µs since the epoch, UTC. Timestamps as they are (no zone: UTC); strings parsed as ISO 8601
    (or ``fmt``), each distinct string once."""
    import pandas as pd

    arr = _array(col)
    _no_nulls(arr, name, rid)
    t = arr.type
    if pa.types.is_timestamp(t):
        return pc.cast(arr, pa.timestamp("us", tz=t.tz), safe=False).cast(pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_date(t):
        return pc.cast(pc.cast(arr, pa.timestamp("us")), pa.int64()).to_numpy(zero_copy_only=False)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise IngestError(
            f"column {name!r}: expected a timestamp or an ISO 8601 string, got type {t} (e.g. {arr[0].as_py()!r})"
        )
    enc = pc.dictionary_encode(arr)
    words = pd.Series(enc.dictionary.to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_datetime(words, format=fmt or "ISO8601", utc=True, errors="coerce")
    if parsed.isna().any():
        bad = words[parsed.isna()].iloc[0]
        i = int(np.flatnonzero(arr.to_numpy(zero_copy_only=False) == bad)[0])
        like = f"like {'11/11/2019 9:05:58 AM' if fmt == MIND_TIME_FORMAT else '2019-11-11T09:05:58Z'}"
        raise IngestError(f"column {name!r}: cannot parse time {bad!r} ({_where(i, rid)}); expected {like}")
    us = parsed.dt.as_unit("us").astype("int64").to_numpy()
    return us[enc.indices.to_numpy(zero_copy_only=False)]


def _feature(col: pa.ChunkedArray | pa.Array, f: Feature, rid: pa.Array | None) -> tuple[np.ndarray, np.ndarray]:
    """A log's feature column in the contract's terms: (values, present). Ids and strings for
    integer categoricals are hashed; numbers for buckets clip to the declared range; anything else
    outside the spec is an error (a wrongly mapped column should not pass silently)."""
    arr = _array(col)
    if f.kind == "id":
        s = _strings(arr, f.name)
        return stable_ids(s), s.is_valid().to_numpy(zero_copy_only=False)
    is_text = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
    if f.vocab:
        if not is_text:
            raise IngestError(f"column {f.name!r}: expected one of {list(f.vocab)}, got type {arr.type}")
        present = arr.is_valid().to_numpy(zero_copy_only=False)
        vals = arr.fill_null("").to_numpy(zero_copy_only=False).astype(object)
        bad = present & ~np.isin(vals, np.array(f.vocab, dtype=object))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IngestError(f"column {f.name!r}: {vals[i]!r} is not one of {list(f.vocab)} ({_where(i, rid)})")
        return vals, present
    if f.kind == "categorical" and is_text:  # e.g. category names: a stable hash into the range
        return stable_ids(arr) % f.size, arr.is_valid().to_numpy(zero_copy_only=False)
    vals, present = _numeric(arr, f.name, rid)
    if f.kind == "categorical":
        lo, hi = f.low if f.low is not None else 0, f.high if f.high is not None else f.size - 1
        bad = present & ((vals != np.floor(vals)) | (vals < lo) | (vals > hi))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IngestError(f"column {f.name!r}: {_example(arr, i)!r} is outside [{lo}, {hi}] ({_where(i, rid)})")
        return vals.astype(np.int64), present
    return _clip(f, vals).astype(np.float32), present


def _clip(f: Feature, vals: np.ndarray) -> np.ndarray:
    lo = -np.inf if f.low is None else f.low
    hi = np.inf if f.high is None else f.high
    return np.clip(vals, lo, hi)


def _list_parts(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """A list array as (offsets, flat values), nulls as empty lists."""
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.concatenate([[0], np.cumsum(lengths)]), pc.list_flatten(arr)


def _expand(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ranges [start, start + len): the flat gather behind every ragged op here."""
    lens = lens.astype(np.int64)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    before = np.cumsum(lens) - lens
    return np.repeat(starts.astype(np.int64) - before, lens) + np.arange(total, dtype=np.int64)


def _recent_first(offsets: np.ndarray, values: np.ndarray, max_len: int) -> pa.Array:
    """Chronological lists (oldest first) -> the ``max_len`` most recent, most recent first."""
    lengths = np.diff(offsets)
    keep = np.minimum(lengths, max_len)
    new_off = np.concatenate([[0], np.cumsum(keep)])
    within = np.arange(int(new_off[-1]), dtype=np.int64) - np.repeat(new_off[:-1], keep)
    idx = np.repeat(offsets[1:] - 1, keep) - within
    return pa.ListArray.from_arrays(pa.array(new_off, pa.int32()), pa.array(values[idx], pa.int64()))


def _history(col: pa.ChunkedArray | pa.Array, max_len: int) -> pa.Array:
    """A history column (lists of ids, or space-separated strings), oldest first -> contract lists."""
    arr = _array(col)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.utf8_split_whitespace(arr)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise IngestError(
            f"column 'history': expected a list of item ids or a space-separated string, got type {arr.type}"
        )
    offsets, flat = _list_parts(arr)
    tokens = _strings(flat, "history")
    keep = tokens.is_valid().to_numpy(zero_copy_only=False) & (
        pc.fill_null(pc.utf8_length(tokens), 0).to_numpy(zero_copy_only=False) > 0
    )
    parent = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[keep]
    ids = stable_ids(tokens)[keep]
    off = np.concatenate([[0], np.cumsum(np.bincount(parent, minlength=len(offsets) - 1))])
    return _recent_first(off, ids, max_len)


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted set, by binary search (no hashing, no re-sorting the set)."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), bool)
    loc = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[loc] == values


def _within_group(keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, … within runs of equal consecutive keys."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.concatenate([[True], keys[1:] != keys[:-1]])
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return np.arange(n) - first


def _read_table(path: Path) -> pa.Table:
    try:
        if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if path.suffix.lower() in (".csv", ".gz"):
            from pyarrow import csv as pacsv

            text_cols = {c: pa.string() for c in ("request_id", "user_id", "item_id", "ts", "history", "source")}
            return pacsv.read_csv(
                path, convert_options=pacsv.ConvertOptions(column_types=text_cols, strings_can_be_null=True)
            )
    except (OSError, pa.ArrowException) as exc:
        raise IngestError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    raise IngestError(f"{path}: expected a .parquet file or directory, or a .csv file")


def read_generic(path: Path, spec: FeatureSpec = DEFAULT_SPEC) -> _Log:
    """Parse and check a log in the generic impression schema (module docstring)."""
    t = _read_table(path)
    missing = [c for c in REQUIRED if c not in t.column_names]
    if missing:
        raise IngestError(f"{path}: missing required column(s) {', '.join(missing)} (has: {', '.join(t.column_names)})")
    if t.num_rows == 0:
        raise IngestError(f"{path}: no rows")
    rid = _strings(t.column("request_id"), "request_id")
    _no_nulls(rid, "request_id")
    enc = pc.dictionary_encode(rid)
    row_req = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n, n_req = t.num_rows, len(enc.dictionary)
    first_row = np.full(n_req, n, np.int64)
    np.minimum.at(first_row, row_req, np.arange(n))

    ts_rows = _timestamps(t.column("ts"), "ts", rid)
    req_ts = np.full(n_req, _NEVER, np.int64)
    np.minimum.at(req_ts, row_req, ts_rows)
    users = _strings(t.column("user_id"), "user_id")
    _no_nulls(users, "user_id", rid)
    items = _strings(t.column("item_id"), "item_id")
    _no_nulls(items, "item_id", rid)

    source = np.zeros(n, np.int64)
    if "source" in t.column_names:
        src = _array(t.column("source")).cast(pa.string()).fill_null("expose")
        source = pc.index_in(src, pa.array(SOURCES)).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        if (source < 0).any():
            i = int(np.flatnonzero(source < 0)[0])
            raise IngestError(f"column 'source': {src[i].as_py()!r} is not one of {list(SOURCES)} ({_where(i, rid)})")
    labels = {
        "click": _counts(t, "click", rid, binary=True, required=True),
        "like": _counts(t, "like", rid, binary=True),
        "comment": _counts(t, "comment", rid, binary=True),
        "dwell_ms": _counts(t, "dwell_ms", rid, binary=False),
    }
    for name, vals in labels.items():
        bad = (vals != 0) & (source != _EXPOSE)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IngestError(
                f"column {name!r}: labels only on exposed rows, found {int(vals[i])} on a {SOURCES[source[i]]!r} row ({_where(i, rid)})"
            )
    if "position" in t.column_names:  # required on exposed rows; logged negatives may leave it null
        pos, present = _numeric(t.column("position"), "position", rid)
        bad = np.where(present, (pos < 1) | (pos != np.floor(pos)), source == _EXPOSE)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IngestError(
                f"column 'position': expected a display position >= 1, found {_example(t.column('position'), i)!r} ({_where(i, rid)})"
            )
        position = pos.astype(np.int64)
    else:  # file order within the request
        order = np.lexsort((np.arange(n), source, row_req))
        position = np.empty(n, np.int64)
        position[order] = _within_group(row_req[order] * 4 + source[order]) + 1
    stage_pos = {}
    for name in STAGE_COLUMNS:
        if name in t.column_names:
            vals, present = _numeric(t.column(name), name, rid)
            bad = present & ((vals < 1) | (vals != np.floor(vals)))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise IngestError(
                    f"column {name!r}: expected a position >= 1, found {_example(t.column(name), i)!r} ({_where(i, rid)})"
                )
            stage_pos[name] = np.where(present, vals, 0).astype(np.int64)

    max_len = spec.sequence.max_len
    if "history" in t.column_names:
        history = _history(t.column("history").take(pa.array(first_row)), max_len)
    else:
        history = pa.array([[]] * n_req, pa.list_(pa.int64()))
    user_features, item_features = {}, {}
    for f in spec.features:
        if f.name in ("user_id", "item_id") or f.kind == "sequence" or f.name not in t.column_names:
            continue
        vals, present = _feature(t.column(f.name), f, rid)  # every row checked, so errors name the row
        if f.side == "user":
            user_features[f.name] = (vals[first_row], present[first_row])
        else:
            item_features[f.name] = (vals, present)
    return _Log(
        request_id=np.asarray(enc.dictionary.to_pylist(), dtype=object),
        user=stable_ids(users)[first_row],
        ts=req_ts,
        history=history,
        user_features=user_features,
        row_req=row_req,
        item=stable_ids(items),
        source=source,
        position=position,
        labels=labels,
        stage_pos=stage_pos,
        item_features=item_features,
    )


def _read_tsv(path: Path, names: tuple[str, ...]) -> pa.Table:
    from pyarrow import csv as pacsv

    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=list(names)),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in names}),
        )
    except (OSError, pa.ArrowException) as exc:
        raise IngestError(
            f"cannot read {path} as MIND ({len(names)} tab-separated columns): {str(exc).splitlines()[0]}"
        ) from None


def read_mind(behaviors: Path, news: Path | None = None, spec: FeatureSpec = DEFAULT_SPEC) -> _Log:
    """Parse and check MIND's ``behaviors.tsv`` (and ``news.tsv``: beside it when not given)."""
    if behaviors.is_dir():
        behaviors = behaviors / "behaviors.tsv"
    if news is None and (behaviors.parent / "news.tsv").exists():
        news = behaviors.parent / "news.tsv"
    b = _read_tsv(behaviors, MIND_BEHAVIORS)
    if b.num_rows == 0:
        raise IngestError(f"{behaviors}: no rows")
    imp_id = b.column("impression_id").combine_chunks()
    _no_nulls(imp_id, "impression_id")
    rid = pc.binary_join_element_wise("mind-", imp_id, "")
    counts = pc.value_counts(imp_id)
    dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise IngestError(
            f"column 'impression_id': {dup[0].as_py()!r} appears more than once in {behaviors} "
            "(concatenated splits? prefix one split's ids)"
        )
    users = b.column("user_id").combine_chunks()
    _no_nulls(users, "user_id", rid)
    ts = _timestamps(b.column("time"), "time", rid, fmt=MIND_TIME_FORMAT)

    tokens = pc.utf8_split_whitespace(b.column("impressions").combine_chunks().fill_null(""))
    offsets, flat = _list_parts(tokens)
    row_req = np.repeat(np.arange(b.num_rows), np.diff(offsets))
    nonempty = pc.fill_null(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False) > 0
    per_req = np.bincount(row_req[nonempty], minlength=b.num_rows)
    if (per_req == 0).any():
        i = int(np.flatnonzero(per_req == 0)[0])
        raise IngestError(f"column 'impressions': empty ({_where(i, rid)})")
    flat, row_req = flat.filter(pa.array(nonempty)), row_req[nonempty]
    label = pc.utf8_slice_codeunits(flat, -1).to_numpy(zero_copy_only=False)
    sep = pc.utf8_slice_codeunits(flat, -2, -1).to_numpy(zero_copy_only=False)
    bad = (sep != "-") | ~np.isin(label, np.array(["0", "1"], dtype=object))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise IngestError(
            f"column 'impressions': labels must be 0 or 1 as in 'N123-1', found {flat[i].as_py()!r} "
            f"({_where(int(row_req[i]), rid)}; MIND's test split has no labels)"
        )
    item = stable_ids(pc.utf8_slice_codeunits(flat, 0, -2))
    click = (label == "1").astype(np.int64)
    position = _within_group(row_req) + 1
    history = _history(b.column("history").combine_chunks().fill_null(""), spec.sequence.max_len)
    zeros = np.zeros(len(item), np.int64)

    catalogue, static, content = None, {}, {}
    if news is not None:
        nt = _read_tsv(news, MIND_NEWS)
        nid = nt.column("news_id").combine_chunks()
        _no_nulls(nid, "news_id")
        ids = stable_ids(nid)
        catalogue, first = np.unique(ids, return_index=True)  # a repeated news id: its first line
        cat_feature = spec["category"]
        cats = nt.column("category").combine_chunks().fill_null("")
        static["category"] = (stable_ids(cats) % cat_feature.size)[first]
        title_len = pc.utf8_length(nt.column("title").combine_chunks().fill_null("")).to_numpy(zero_copy_only=False)
        static["title_len"] = _clip(spec["title_len"], title_len.astype(np.float64))[first].astype(np.float32)
        for name in ("category", "subcategory"):  # the retriever's content term: full ids, no collisions
            col = nt.column(name).combine_chunks()
            content[name] = stable_ids(pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col))[first]
    return _Log(
        request_id=np.asarray(rid.to_pylist(), dtype=object),
        user=stable_ids(users),
        ts=ts,
        history=history,
        user_features={},
        row_req=row_req,
        item=item,
        source=zeros.copy(),
        position=position,
        labels={"click": click, "like": zeros, "comment": zeros, "dwell_ms": zeros},
        stage_pos={},
        item_features={},
        catalogue=catalogue,
        static=static,
        content=content,
    )


# ---------------------------------------------------------------------------------------- building


def _defaults(overrides: dict[str, Any], spec: FeatureSpec) -> dict[str, Any]:
    """``DEFAULTS`` with the config's overrides, each checked against the spec."""
    out = dict(DEFAULTS)
    for name, value in overrides.items():
        try:
            f = spec[name]
        except KeyError:
            raise IngestError(f"ingest.defaults: {name!r} is not a feature of the spec") from None
        ok = (value in f.vocab) if f.vocab else isinstance(value, int | float) and not isinstance(value, bool)
        if ok and f.kind in ("id", "categorical") and not f.vocab:
            ok = float(value).is_integer()
        if ok and not f.vocab:
            ok = (f.low is None or value >= f.low) and (f.high is None or value <= f.high)
        if not ok or f.kind == "sequence":
            raise IngestError(f"ingest.defaults: {value!r} is not a valid value of feature {name!r}")
        out[name] = value
    return out


def _day_str(day: int) -> str:
    import datetime as dt

    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day))).isoformat()


@dataclass
class _History:
    """What earlier days left behind for the day-level parts: per day, each user's clicks (the user
    features) and the aggregated co-visitation pairs (windows sum the days they cover)."""

    n_users: int
    user_days: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # (day, user idx, clicks)
    pair_days: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # (day, a·n + b, weights)

    def user_window(self, day: int, days: int) -> tuple[np.ndarray, np.ndarray]:
        active, clicks = np.zeros(self.n_users), np.zeros(self.n_users)
        for d, idx, n_c in self.user_days:
            if day - days <= d < day:
                active[idx] += 1
                clicks[idx] += n_c
        return active, clicks

    def covisitation(self, day: int, days: int, n: int, neighbours: int) -> _Graph | None:
        """The co-visitation graph of days [day - days, day)."""
        pairs = [(k, w) for d, k, w in self.pair_days if day - days <= d < day]
        return _graph(*_sum_pairs(pairs), n, neighbours) if pairs else None


_Graph = tuple[np.ndarray, np.ndarray, np.ndarray]  # CSR: indptr (n + 1), targets, weights


def _sum_pairs(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Aggregated (a·n + b keys, weights) of pair sets, keys sorted. A stable sort merges sorted
    parts in about linear time and adds equal keys' weights in a fixed order (the same bytes)."""
    keys = np.concatenate([k for k, _ in parts])
    o = np.argsort(keys, kind="stable")
    keys = keys[o]
    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.zeros(0, np.int64)
    weights = np.concatenate([w for _, w in parts])[o]
    return keys[first], np.add.reduceat(weights, first) if len(first) else weights


def _graph(keys: np.ndarray, weights: np.ndarray, n: int, neighbours: int) -> _Graph:
    """Sorted pair keys as CSR, keeping each row's ``neighbours`` strongest targets (weights compared
    as float32; ties: the lower target index)."""
    a = keys // n
    deg = np.bincount(a, minlength=n)
    keep = np.ones(len(keys), bool)
    heavy = np.flatnonzero(deg[a] > neighbours)
    if len(heavy):  # per heavy row: its neighbours-th best (row, weight) key by one sort of plain values
        ah = a[heavy]
        bits = np.maximum(weights[heavy], 0).astype(np.float32).view(np.int32).astype(np.int64)
        comp = (ah << 31) | (0x7FFFFFFF - bits)  # within a row, stronger first
        srt = np.sort(comp)
        rows = np.flatnonzero(deg > neighbours)
        start = np.searchsorted(srt, rows << 31)
        thr = np.zeros(n, np.int64)
        thr[rows] = srt[start + neighbours - 1]
        room = np.zeros(n, np.int64)  # how many entries equal to the threshold still fit
        room[rows] = neighbours - (np.searchsorted(srt, thr[rows]) - start)
        t = thr[ah]
        kept = comp < t
        eq = np.flatnonzero(comp == t)  # ties at the threshold: the first ones (lower target) fill the room
        kept[eq] = _within_group(ah[eq]) < room[ah[eq]]
        keep[heavy] = kept
    a = a[keep]
    return np.searchsorted(a, np.arange(n + 1)), keys[keep] % n, weights[keep]


def _pairs(
    rr: np.ndarray, ii: np.ndarray, click: np.ndarray, h_off: np.ndarray, h_idx: np.ndarray, ic: Any, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Requests' co-visitation pairs as aggregated (a·n + b keys, weights). ``rr``/``ii``/``click``:
    the exposed rows sorted by request; ``h_off``/``h_idx``: each request's history (dense)."""
    c = click > 0
    rc, ic_items = rr[c], ii[c]
    rs, is_items = rr[~c], ii[~c]
    n_req = len(h_off) - 1
    c_start = np.searchsorted(rc, np.arange(n_req))
    c_len = np.bincount(rc, minlength=n_req)
    s_start = np.searchsorted(rs, np.arange(n_req))
    s_len = np.bincount(rs, minlength=n_req)
    h_len = np.minimum(np.diff(h_off), ic.covis_history)
    # history -> click
    a1 = h_idx[_expand(h_off[rc], h_len[rc])]
    b1 = np.repeat(ic_items, h_len[rc])
    # click -> click of the same request
    a2 = np.repeat(ic_items, c_len[rc])
    b2 = ic_items[_expand(c_start[rc], c_len[rc])]
    # click <-> shown beside it
    a3 = np.repeat(ic_items, s_len[rc])
    b3 = is_items[_expand(s_start[rc], s_len[rc])]
    a = np.concatenate([a1, a2, a3, b3])
    b = np.concatenate([b1, b2, b3, a3])
    w = np.concatenate([np.ones(len(a1) + len(a2)), np.full(2 * len(a3), ic.shown_weight)])
    ok = a != b
    return _sum_pairs([(a[ok] * n + b[ok], w[ok])])


@dataclass
class _Window:
    span: int  # µs
    impr: np.ndarray  # per item, int64
    clicks: np.ndarray
    lo: int = 0  # ledger rows before this one have left the window
    total_impr: int = 0
    total_clicks: int = 0


class _Clock:
    """The one clock behind the retriever and every item feature: statistics over the log's
    impressions, advanced in time order. After ``advance(p, t)`` they cover exactly the requests
    [0, p), all of them earlier than t (each window: only impressions at or after t - its span).

    The ledger is every exposed row of the log (first of its (request, item) pair; also rows of
    requests later dropped or truncated: what the log showed, not what was kept), in time order."""

    def __init__(
        self,
        ts: np.ndarray,
        row_req: np.ndarray,
        row_idx: np.ndarray,
        ledger: np.ndarray,
        click: np.ndarray,
        h_off: np.ndarray,
        h_idx: np.ndarray,
        item_feats: dict[str, tuple[np.ndarray, np.ndarray]],
        n_items: int,
        spans: dict[str, int],
    ) -> None:
        self.row_req, self.row_idx, self.h_off, self.h_idx, self.item_feats = row_req, row_idx, h_off, h_idx, item_feats
        self.l_req, self.l_item, self.l_click = row_req[ledger], row_idx[ledger], click[ledger]
        self.l_ts = ts[self.l_req]
        self.windows = {
            k: _Window(s, np.zeros(n_items, np.int64), np.zeros(n_items, np.int64)) for k, s in spans.items()
        }
        self.first_seen = np.full(n_items, _NEVER, np.int64)
        self.known = np.zeros(n_items, bool)  # shown in, or in the history of, an earlier request
        self.state = {k: (np.zeros(n_items, v.dtype), np.zeros(n_items, bool)) for k, (v, _) in item_feats.items()}
        self.p = self.hi = self.row_hi = 0

    def advance(self, p: int, t: int) -> None:
        hi = int(np.searchsorted(self.l_req, p))
        items, clicks = self.l_item[self.hi : hi], self.l_click[self.hi : hi]
        for w in self.windows.values():
            np.add.at(w.impr, items, 1)
            np.add.at(w.clicks, items, clicks)
            w.total_impr += len(items)
            w.total_clicks += int(clicks.sum())
        np.minimum.at(self.first_seen, items, self.l_ts[self.hi : hi])
        self.hi = hi
        for w in self.windows.values():
            lo = min(int(np.searchsorted(self.l_ts, t - w.span, side="left")), hi)
            items, clicks = self.l_item[w.lo : lo], self.l_click[w.lo : lo]
            np.subtract.at(w.impr, items, 1)
            np.subtract.at(w.clicks, items, clicks)
            w.total_impr -= len(items)
            w.total_clicks -= int(clicks.sum())
            w.lo = max(w.lo, lo)
        # every row (logged negatives too) and history: what the log has referenced, and its item features
        row_hi = int(np.searchsorted(self.row_req, p))
        ii = self.row_idx[self.row_hi : row_hi]
        self.known[ii] = True
        self.known[self.h_idx[self.h_off[self.p] : self.h_off[p]]] = True
        for name, (vals, present) in self.item_feats.items():
            idx = np.flatnonzero(present[self.row_hi : row_hi])
            sv, sh = self.state[name]
            sv[ii[idx]] = vals[self.row_hi : row_hi][idx]  # later rows overwrite earlier ones (rows follow ts)
            sh[ii[idx]] = True
        self.p, self.row_hi = p, row_hi

    def item_stats(self, items: np.ndarray, m: float) -> dict[str, np.ndarray]:
        """The derived item features' inputs at this clock (``_Built.annotate``'s stats)."""
        w = self.windows["stats"]
        p0 = w.total_clicks / w.total_impr if w.total_impr else 0.0
        impr, clicks = w.impr[items].astype(np.float64), w.clicks[items].astype(np.float64)
        out = {
            "popularity": impr,
            "item_ctr_7d": (clicks + m * p0) / (impr + m) if m > 0 else clicks / np.maximum(impr, 1),
            "first_seen": self.first_seen[items],
        }
        for name, (sv, sh) in self.state.items():
            out["state:" + name], out["has:" + name] = sv[items], sh[items]
        return out


@dataclass
class DayResult:
    """One day's contract tables and what ingestion had to do to them."""

    ds: str
    requests: pa.Table
    candidates: pa.Table
    dropped_requests: int = 0  # fewer exposed items than composition.expose[0]
    truncated_requests: int = 0  # more than composition.expose[1]: the first ones by position kept


def _chunks(ts_d: np.ndarray, size: int, slot_us: int) -> list[tuple[int, int]]:
    """A day's requests (time order) as chunks of at most ``size`` within one clock slot."""
    slot = ts_d // slot_us
    starts = np.flatnonzero(np.concatenate([[True], slot[1:] != slot[:-1]]))
    ends = np.append(starts[1:], len(ts_d))
    return [(c0, min(c0 + size, e)) for s, e in zip(starts, ends, strict=True) for c0 in range(int(s), int(e), size)]


def _shares(codes: np.ndarray, n_codes: int, h_off: np.ndarray, h_idx: np.ndarray, c0: int, c1: int, depth: int):
    """(B, n_codes + 1): each request's share of its ``depth`` most recent history items (of known
    code) per code; the last column (unknown code) is 0."""
    B = c1 - c0
    q_len = np.minimum(np.diff(h_off)[c0:c1], depth)
    c = codes[h_idx[_expand(h_off[c0:c1], q_len)]]
    r = np.repeat(np.arange(B), q_len)
    ok = c >= 0
    counts = np.bincount(r[ok] * (n_codes + 1) + c[ok], minlength=B * (n_codes + 1)).reshape(B, n_codes + 1)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def build_days(log_: _Log, cfg: HapConfig, seed: int = 0, spec: FeatureSpec = DEFAULT_SPEC) -> Iterator[DayResult]:
    """The contract's tables day by day, oldest first; a request reads only requests before its chunk."""
    comp, ic = cfg.composition, cfg.ingest
    if ic.retrieval_size <= comp.prerank_cutoff or comp.prerank_cutoff < comp.rank_cutoff:
        raise IngestError(
            f"need composition.rank_cutoff ({comp.rank_cutoff}) <= prerank_cutoff ({comp.prerank_cutoff}) "
            f"< ingest.retrieval_size ({ic.retrieval_size})"
        )
    if ic.chunk_requests < 1 or ic.chunk_minutes <= 0:
        raise IngestError(
            f"need ingest.chunk_requests >= 1 and chunk_minutes > 0, got {ic.chunk_requests}, {ic.chunk_minutes}"
        )
    defaults = _defaults(ic.defaults, spec)

    # requests in time order; rows by request, source, position (file order breaks ties)
    o1 = np.argsort(log_.request_id, kind="stable")
    order = o1[np.argsort(log_.ts[o1], kind="stable")]
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    rid, user, ts = log_.request_id[order], log_.user[order], log_.ts[order]
    history = log_.history.take(pa.array(order))
    row_req = inv[log_.row_req]
    rows = np.lexsort((np.arange(len(row_req)), log_.position, log_.source, row_req))
    row_req, item, source, position = row_req[rows], log_.item[rows], log_.source[rows], log_.position[rows]
    labels = {k: v[rows] for k, v in log_.labels.items()}
    stage_pos = {k: v[rows] for k, v in log_.stage_pos.items()}
    item_feats = {k: (v[rows], p[rows]) for k, (v, p) in log_.item_features.items()}
    user_feats = {k: (v[order], p[order]) for k, (v, p) in log_.user_features.items()}
    first_of_pair = ~_duplicated(row_req, item)  # a repeated (request, item): its first row
    logged = {int(s) for s in np.unique(source) if s != _EXPOSE}

    # dense item / user indices (internal only: every choice below is keyed by ids, not indices)
    h_off_all, h_flat = _list_parts(history)
    h_ids = h_flat.to_numpy(zero_copy_only=False).astype(np.int64)
    parts = [item, h_ids] + ([log_.catalogue] if log_.catalogue is not None else [])
    universe = np.unique(np.concatenate(parts))
    n_items = len(universe)
    row_idx = np.searchsorted(universe, item)
    h_idx_all = np.searchsorted(universe, h_ids)
    users_u = np.unique(user)
    user_idx = np.searchsorted(users_u, user)
    req_key = stable_ids(pa.array(list(rid), pa.string())).astype(np.uint64)
    static, content = {}, {}
    if log_.catalogue is not None:
        cat_idx = np.searchsorted(universe, log_.catalogue)
        for name, vals in log_.static.items():
            full = np.full(n_items, defaults[name], dtype=vals.dtype)
            full[cat_idx] = vals
            static[name] = (full, np.isin(np.arange(n_items), cat_idx))
        for name, vals in log_.content.items():  # attribute ids (0: unknown) as dense codes
            known_code = vals != 0
            names, codes = np.unique(vals[known_code], return_inverse=True)
            full = np.full(n_items, -1, np.int64)
            full[cat_idx[known_code]] = codes
            content[name] = (full, len(names))

    build_rank, build_pre, build_global = _RANK not in logged, _PRERANK not in logged, _GLOBAL not in logged
    retrieve = build_rank or build_pre
    m = ic.ctr_prior_impressions
    slot_us = round(ic.chunk_minutes * 60_000_000)
    clock = _Clock(
        ts,
        row_req,
        row_idx,
        np.flatnonzero((source == _EXPOSE) & first_of_pair),
        labels["click"],
        h_off_all,
        h_idx_all,
        item_feats,
        n_items,
        {
            "stats": ic.stats_window_days * _US_PER_DAY,
            "pool": ic.covis_window_days * _US_PER_DAY,
            "recent": round(ic.recent_hours * _US_PER_HOUR),
        },
    )
    past = _History(len(users_u))

    day_of_req = ts // _US_PER_DAY
    day_values, day_starts = np.unique(day_of_req, return_index=True)
    bounds = np.append(day_starts, len(ts))
    for k, day in enumerate(day_values):
        r0, r1 = int(bounds[k]), int(bounds[k + 1])
        s0, s1 = np.searchsorted(row_req, [r0, r1])
        n_req = r1 - r0
        rr, ii, src = row_req[s0:s1] - r0, row_idx[s0:s1], source[s0:s1]
        uniq_row = first_of_pair[s0:s1]
        h_off = h_off_all[r0 : r1 + 1] - h_off_all[r0]
        h_idx = h_idx_all[h_off_all[r0] : h_off_all[r1]]
        ts_d = ts[r0:r1]

        # logged rows within the composition's bounds
        exp = (src == _EXPOSE) & uniq_row
        rank_in_src = _rank_within(rr * 4 + src, uniq_row)  # rows are sorted by (request, source, position)
        n_exp = np.bincount(rr[exp], minlength=n_req)
        keep_req = n_exp >= comp.expose[0]
        click = labels["click"][s0:s1]
        shown = exp & (rank_in_src < comp.expose[1])
        n_pos = np.bincount(rr[shown], weights=click[shown], minlength=n_req)
        n_global = np.floor(comp.global_per_positive[1] * n_pos + 0.5).astype(np.int64)
        cap = np.select(
            [src == _EXPOSE, src == _RANK, src == _PRERANK],
            [np.full(len(src), comp.expose[1]), np.full(len(src), comp.rank[1]), np.full(len(src), comp.prerank[1])],
            n_global[rr],
        )
        keep_row = uniq_row & keep_req[rr] & (rank_in_src < cap)

        # the day's exclusions: everything the log shows for the request, and its history
        h_req = np.repeat(np.arange(n_req), np.diff(h_off))
        excl = np.sort(np.concatenate([rr * n_items + ii, h_req * n_items + h_idx]))  # repeats are harmless

        built = _Built()
        row_stats: dict[str, np.ndarray] = {}  # per logged row of the day: the clock's stats at its chunk
        graphs: list[_Graph | None] = [None, None]  # co-visitation of earlier days, of today's earlier slots
        if retrieve:
            graphs[0] = past.covisitation(int(day), ic.covis_window_days, n_items, ic.covis_neighbours)
            tie = 1e-9 * _uniform(seed, 5, universe, np.full(n_items, day))
        today: list[tuple[np.ndarray, np.ndarray]] = []  # aggregated pairs of today's slots so far
        pending: list[tuple[np.ndarray, np.ndarray]] = []  # pairs of the current slot's chunks
        slot_now = None
        for c0, c1 in _chunks(ts_d, ic.chunk_requests, slot_us):
            t_c = int(ts_d[c0])
            clock.advance(int(np.searchsorted(ts, t_c, side="left")), t_c)  # requests strictly before the chunk
            e0, e1 = np.searchsorted(excl, [c0 * n_items, c1 * n_items])
            ex = excl[e0:e1]
            ex_r, ex_i = ex // n_items - c0, ex % n_items
            n_parts = len(built.parts)
            if retrieve:
                if t_c // slot_us != slot_now:  # a new slot: co-visitation gains the earlier slots' pairs
                    slot_now = t_c // slot_us
                    if pending:
                        today = [_sum_pairs(today + pending)]
                        pending = []
                        graphs[1] = _graph(*today[0], n_items, ic.covis_neighbours)
                pool = np.flatnonzero(clock.windows["pool"].impr > 0)
                if len(pool):
                    base = ic.popularity_weight * np.log1p(clock.windows["recent"].impr[pool]) + tie[pool]
                    codes = dict(content)
                    if "category" in clock.state and "category" not in codes:  # generic logs: latest logged value
                        sv, sh = clock.state["category"]
                        codes["category"] = (np.where(sh, sv, -1).astype(np.int64), spec["category"].size)
                    terms = []
                    for name, weight in (("category", ic.content_weight), ("subcategory", ic.subcategory_weight)):
                        if name in codes and weight:
                            full, n_codes = codes[name]
                            share = _shares(full, n_codes, h_off, h_idx, c0, c1, ic.content_history)
                            terms.append((weight, share, np.where(full[pool] >= 0, full[pool], n_codes)))
                    top, n_valid = _retrieve(c0, c1, h_off, h_idx, graphs, pool, base, terms, ex_r, ex_i, n_items, ic)
                    _sample_stages(
                        built, c0, top, n_valid, req_key[r0 + c0 : r0 + c1], seed, comp, build_rank, build_pre
                    )
            if build_global:
                taken = built.chunk_keys(c0, c1, n_items)
                _sample_global(
                    built,
                    c0,
                    c1,
                    n_global[c0:c1],
                    np.flatnonzero(clock.known),  # items shown or referenced before the chunk
                    np.sort(np.concatenate([ex, taken])),
                    n_items,
                    req_key[r0 + c0 : r0 + c1],
                    universe,
                    seed,
                )
            # item features on the same clock for the chunk's logged and built rows
            l0, l1 = np.searchsorted(rr, [c0, c1])
            for name, v in clock.item_stats(ii[l0:l1], m).items():
                row_stats.setdefault(name, np.zeros(s1 - s0, v.dtype))[l0:l1] = v
            built.annotate(n_parts, lambda items: clock.item_stats(items, m))
            if retrieve:  # the chunk's co-visitation pairs, for the day's later slots and later days
                e = l0 + np.flatnonzero(exp[l0:l1])
                ch_off = h_off[c0 : c1 + 1] - h_off[c0]
                ch_idx = h_idx[h_off[c0] : h_off[c1]]
                pending.append(_pairs(rr[e] - c0, ii[e], click[e], ch_off, ch_idx, ic, n_items))

        # assemble: logged rows, then built ones; per request expose | rank | prerank | global
        lr = np.flatnonzero(keep_row)
        b = built.arrays()
        keep_b = keep_req[b["r"]]
        sel = np.concatenate([np.ones(len(lr), bool), keep_b])
        cand_r = np.concatenate([rr[lr], b["r"]])[sel]
        cand_s = np.concatenate([src[lr], b["s"]])[sel]
        o = np.lexsort((np.arange(len(cand_r)), cand_s, cand_r))
        pick = np.flatnonzero(sel)[o]  # logged rows then built ones -> the candidates in order
        cand_r, cand_s = cand_r[o], cand_s[o]
        cand_i = np.concatenate([ii[lr], b["i"]])[pick]
        cand_row = np.concatenate([lr, np.full(len(b["r"]), -1)])[pick]
        pos_cols = {}
        for name in STAGE_COLUMNS:
            logged_pos = stage_pos[name][s0:s1][lr] if name in stage_pos else np.zeros(len(lr), np.int64)
            disp = position[s0:s1][lr]
            logged_pos = np.where((src[lr] == _EXPOSE) & (logged_pos == 0), disp, logged_pos)
            pos_cols[name] = np.concatenate([logged_pos, b[name]])[pick]
        stats = {
            name: np.concatenate([v[lr], b[name] if len(b["r"]) else np.zeros(0, v.dtype)])[pick]
            for name, v in row_stats.items()
        }

        # features
        first_seen, t_req = stats["first_seen"], ts_d[cand_r]
        age = np.where(first_seen < _NEVER, (t_req - np.minimum(first_seen, t_req)) / _US_PER_HOUR, 0.0)
        item_cols: dict[str, Any] = {}
        for f in spec.features:
            if f.side != "item":
                continue
            if f.name == "item_id":
                item_cols[f.name] = universe[cand_i]
                continue
            if f.name == "item_age_hours":
                col = age
            elif f.name in ("popularity", "item_ctr_7d"):
                col = stats[f.name]
            elif f.name in static:
                col = static[f.name][0][cand_i]
            else:
                col = np.full(len(cand_i), defaults[f.name], dtype=object if f.vocab else None)
            if f.name in item_feats:  # the log's own value; for built rows the item's latest one before the chunk
                vals, present = item_feats[f.name]
                col = np.where(stats["has:" + f.name], stats["state:" + f.name], col)
                row = np.maximum(cand_row, 0)
                col = np.where(present[s0:s1][row] & (cand_row >= 0), vals[s0:s1][row], col)
            item_cols[f.name] = _clip(f, col.astype(np.float64)) if f.kind == "bucket" else col

        active, uclicks = past.user_window(int(day), ic.user_window_days)
        uidx = user_idx[r0:r1]
        hours = ts_d // _US_PER_HOUR
        derived_user = {
            "hour_of_day": hours % 24,
            "day_of_week": (ts_d // _US_PER_DAY + 3) % 7,  # 1970-01-01 was a Thursday
            "activity_days": active[uidx],
            "follow_count": uclicks[uidx],
        }
        user_cols: dict[str, Any] = {}
        for f in spec.features:
            if f.side != "user" or f.name in ("user_id", "hist_item_ids"):
                continue
            base = derived_user.get(f.name)
            if base is None:
                base = np.full(n_req, defaults[f.name], dtype=object if f.vocab else None)
            if f.name in user_feats:
                vals, present = user_feats[f.name]
                base = np.where(present[r0:r1], vals[r0:r1], base)
            user_cols[f.name] = _clip(f, base.astype(np.float64)) if f.kind == "bucket" else base

        kept = np.flatnonzero(keep_req)
        new_r = np.cumsum(keep_req) - 1
        req_cols = {
            "request_id": pa.array(list(rid[r0:r1][kept]), pa.string()),
            "ts": pa.array(ts_d[kept], pa.timestamp("us", tz="UTC")),
            "user_id": user[r0:r1][kept],
            "hist_item_ids": history.slice(r0, n_req).take(pa.array(kept)),
            **{k: v[kept] for k, v in user_cols.items()},
        }
        rschema = requests_schema(spec)
        requests = pa.table({f.name: _arrow(req_cols[f.name], f.type) for f in rschema}, schema=rschema)
        cand_labels = {k: np.where(cand_row >= 0, v[s0:s1][np.maximum(cand_row, 0)], 0) for k, v in labels.items()}
        cand_cols = {
            "request_id": requests.column("request_id").combine_chunks().take(pa.array(new_r[cand_r])),
            "source": np.asarray(SOURCES, dtype=object)[cand_s],
            **{k: pa.array(v.astype(np.int32), pa.int32(), mask=v == 0) for k, v in pos_cols.items()},
            **cand_labels,
            **item_cols,
        }
        cschema = candidates_schema(spec)
        candidates = pa.table({f.name: _arrow(cand_cols[f.name], f.type) for f in cschema}, schema=cschema)
        yield DayResult(
            _day_str(int(day)),
            requests,
            candidates,
            dropped_requests=int((~keep_req).sum()),
            truncated_requests=int((n_exp > comp.expose[1]).sum()),
        )

        # what this day leaves for later days: the log's own impressions, not what was kept
        e_r, e_c = rr[exp], click[exp]
        u_users, uu_inv = np.unique(uidx, return_inverse=True)
        req_clicks = np.bincount(e_r, weights=e_c, minlength=n_req)
        past.user_days.append((int(day), u_users, np.bincount(uu_inv, weights=req_clicks)))
        if retrieve and (today or pending):
            past.pair_days.append((int(day), *_sum_pairs(today + pending)))


def _rank_within(keys: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Per row: how many ``counted`` rows precede it within its run of equal consecutive keys."""
    cs = np.cumsum(counted) - counted
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.concatenate([[True], keys[1:] != keys[:-1]])
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return cs - cs[first]


def _duplicated(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows whose (a, b) pair appeared on an earlier row."""
    o = np.lexsort((np.arange(len(a)), b, a))
    same = np.concatenate([[False], (a[o][1:] == a[o][:-1]) & (b[o][1:] == b[o][:-1])])
    out = np.empty(len(a), bool)
    out[o] = same
    return out


def _arrow(values: Any, typ: pa.DataType) -> pa.Array:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values if values.type == typ else values.cast(typ)
    if pa.types.is_floating(typ):
        return pa.array(np.asarray(values, dtype=np.float32), typ)
    if pa.types.is_integer(typ):
        return pa.array(np.asarray(values).astype(typ.to_pandas_dtype()), typ)
    return pa.array(list(values) if not isinstance(values, np.ndarray) else values, typ)


@dataclass
class _Built:
    """Negatives built for a day: request (day-local), dense item, source, positions, and the
    clock's item statistics at their chunk (``annotate``)."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(
        self, r: np.ndarray, i: np.ndarray, s: int, retrieval: np.ndarray, prerank: np.ndarray, rank: np.ndarray
    ) -> None:
        self.parts.append(
            {
                "r": r,
                "i": i,
                "s": np.full(len(r), s),
                "retrieval_pos": retrieval,
                "prerank_pos": prerank,
                "rank_pos": rank,
            }
        )

    def annotate(self, start: int, stats: Any) -> None:
        """The item statistics of the parts added since ``start`` (``stats``: items -> columns)."""
        for part in self.parts[start:]:
            part.update(stats(part["i"]))

    def chunk_keys(self, c0: int, c1: int, n: int) -> np.ndarray:
        keys = [p["r"] * n + p["i"] for p in self.parts if len(p["r"]) and p["r"][0] >= c0 and p["r"][-1] < c1]
        return np.concatenate(keys) if keys else np.zeros(0, np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("r", "i", "s", *STAGE_COLUMNS)
        if not self.parts:
            return {k: np.zeros(0, np.int64) for k in names}
        out = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        return out | {k: out[k].astype(np.int64) for k in names}


def _retrieve(
    c0: int,
    c1: int,
    h_off: np.ndarray,
    h_idx: np.ndarray,
    graphs: list[_Graph | None],
    pool: np.ndarray,
    base: np.ndarray,
    terms: list[tuple[float, np.ndarray, np.ndarray]],
    ex_r: np.ndarray,
    ex_i: np.ndarray,
    n_items: int,
    ic: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """The retriever's top ``retrieval_size`` (dense item indices, best first; -1 past the end) for
    requests [c0, c1), and how many of each row are real (the pool minus exclusions may be shorter).

    ``base`` (per pool item): the popularity term and the tie-break; ``terms``: the content terms
    as (weight, per-request shares by code (B, codes + 1), each pool item's code). Every term is
    >= 0, so a request's k-th best score is at least its k-th best among the (k + exclusions) best
    bases; a pool item below that for every request, even with its content score and not
    co-visited, cannot make any top: such items are skipped before the dense (requests x pool)
    scoring, with the same result."""
    B, P, k = c1 - c0, len(pool), ic.retrieval_size
    col = np.full(n_items, -1, np.int64)
    col[pool] = np.arange(P)
    q_len = np.minimum(np.diff(h_off)[c0:c1], ic.covis_history)
    q = h_idx[_expand(h_off[c0:c1], q_len)]
    q_r = np.repeat(np.arange(B), q_len)
    cv_r, cv_c, cv_w = [], [], []
    for graph in graphs:
        if graph is None:
            continue
        indptr, targets, w = graph
        lens = indptr[q + 1] - indptr[q]
        ent = _expand(indptr[q], lens)
        t_col = col[targets[ent]]
        ok = t_col >= 0  # co-visited items outside the pool are not retrieved
        cv_r.append(np.repeat(q_r, lens)[ok])
        cv_c.append(t_col[ok])
        cv_w.append(w[ent][ok])
    cv_r, cv_c, cv_w = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (cv_r, cv_c, cv_w))
    # content: one score per (request, distinct code combination of the pool)
    group = np.zeros(P, np.int64)
    for _, share, codes in terms:
        group = group * share.shape[1] + codes
    groups, group = np.unique(group, return_inverse=True)
    group_score = np.zeros((B, len(groups)))
    for weight, share, _ in reversed(terms):
        group_score += weight * share[:, groups % share.shape[1]]
        groups = groups // share.shape[1]
    ex_col = col[ex_i]
    in_pool = ex_col >= 0
    ex_r, ex_col = ex_r[in_pool], ex_col[in_pool]
    depth = k + (int(np.bincount(ex_r).max()) if len(ex_r) else 0)
    if len(cv_r):  # co-visitation per (request, pool item), sorted by request
        covis = np.bincount(cv_r * P + cv_c, weights=cv_w, minlength=B * P)
        nz = np.flatnonzero(covis)
        t_r, t_c, t_s = nz // P, nz % P, ic.covis_weight * np.log1p(covis[nz])
    else:
        t_r = t_c = np.zeros(0, np.int64)
        t_s = np.zeros(0)
    keep = np.arange(P)
    if P > depth:
        # each request's k-th best over the depth best bases (at least k of them not excluded) bounds
        # its k-th best overall from below; an item under that bound for every request is left out
        # of the dense scores (where a request co-visits it, it comes back as an extra column)
        head = np.argpartition(base, P - depth)[P - depth :]
        head_scores = np.take(group_score, group[head], axis=1)
        head_scores += base[head]
        hcol = np.full(P, -1, np.int64)
        hcol[head] = np.arange(depth)
        hit = hcol[ex_col] >= 0
        head_scores[ex_r[hit], hcol[ex_col[hit]]] = -np.inf
        floor = np.partition(head_scores, depth - k, axis=1)[:, depth - k]  # (B,)
        need = (floor[:, None] - group_score).min(axis=0) - 1e-9  # per content group: the lowest base that helps
        keep = np.flatnonzero(base >= need[group])
    n = len(keep)
    sub = np.full(P, -1, np.int64)
    sub[keep] = np.arange(n)
    scores = np.take(group_score, group[keep], axis=1)  # (B, n), C order
    scores += base[keep]
    dense = sub[t_c] >= 0
    scores[t_r[dense], sub[t_c[dense]]] += t_s[dense]
    ok = sub[ex_col] >= 0
    scores[ex_r[ok], sub[ex_col[ok]]] = -np.inf
    x_r, x_c = t_r[~dense], t_c[~dense]
    x_s = (group_score[x_r, group[x_c]] + base[x_c]) + t_s[~dense]  # the dense scores' arithmetic
    out = ~_member(x_r * P + x_c, np.sort(ex_r * P + ex_col))
    x_r, x_c, x_s = x_r[out], x_c[out], x_s[out]
    m = int(np.bincount(x_r).max()) if len(x_r) else 0
    colmap = np.broadcast_to(keep, (B, n))  # each column's pool position
    if m:  # co-visited items outside the dense columns: per request, padded with -inf
        at = _within_group(x_r)
        extra_s, extra_c = np.full((B, m), -np.inf), np.zeros((B, m), np.int64)
        extra_s[x_r, at], extra_c[x_r, at] = x_s, x_c
        scores, colmap = np.hstack([scores, extra_s]), np.hstack([colmap, extra_c])
    width = n + m
    best = (
        np.argpartition(scores, width - k, axis=1)[:, width - k :] if width > k else np.tile(np.arange(width), (B, 1))
    )
    val = np.take_along_axis(scores, best, axis=1)
    o = np.argsort(-val, axis=1, kind="stable")
    best, val = np.take_along_axis(best, o, axis=1), np.take_along_axis(val, o, axis=1)
    real = np.isfinite(val)
    top = np.full((B, k), -1, np.int64)
    top[:, : best.shape[1]] = np.where(real, pool[np.take_along_axis(colmap, best, axis=1)], -1)
    return top, real.sum(axis=1)


def _sample_stages(
    built: _Built,
    c0: int,
    top: np.ndarray,
    n_valid: np.ndarray,
    keys: np.ndarray,
    seed: int,
    comp: Any,
    build_rank: bool,
    build_pre: bool,
) -> None:
    """``rank`` negatives from positions (rank_cutoff, prerank_cutoff], ``prerank`` ones beyond."""
    B, k = top.shape
    pos = np.arange(1, k + 1)[None, :]
    u = _uniform(seed, 1, keys[:, None], pos)
    stages = []
    if build_rank:
        stages.append((_RANK, comp.rank_cutoff, comp.prerank_cutoff, comp.rank[1]))
    if build_pre:
        stages.append((_PRERANK, comp.prerank_cutoff, k, comp.prerank[1]))
    for s, lo, hi, n_take in stages:
        if n_take == 0:
            continue
        elig = (pos > lo) & (pos <= hi) & (pos <= n_valid[:, None])
        key = np.where(elig, u, np.inf)
        pick = np.argsort(key, axis=1, kind="stable")[:, :n_take]
        ok = np.isfinite(np.take_along_axis(key, pick, axis=1))
        r = np.broadcast_to(np.arange(B)[:, None], pick.shape)[ok]
        p = pick[ok]
        o = np.lexsort((p, r))  # by request, then position
        r, p = r[o], p[o]
        position = (p + 1).astype(np.int64)
        rank = position if s == _RANK else np.zeros(len(p), np.int64)
        built.add(r + c0, top[r, p], s, position, position, rank)


def _sample_global(
    built: _Built,
    c0: int,
    c1: int,
    n_global: np.ndarray,
    catalogue: np.ndarray,
    excl: np.ndarray,
    n_items: int,
    keys: np.ndarray,
    universe: np.ndarray,
    seed: int,
) -> None:
    """``n_global[r]`` uniform catalogue items per request, none excluded, no repeats."""
    g_max = int(n_global.max()) if len(n_global) else 0
    if g_max == 0 or len(catalogue) == 0:
        return
    B = c1 - c0
    draws = 4 * g_max + 16
    u = _uniform(seed, 3, keys[:, None], np.arange(draws)[None, :])
    pick = catalogue[np.minimum((u * len(catalogue)).astype(np.int64), len(catalogue) - 1)]
    rows = np.arange(c0, c1)[:, None]
    bad = _member(rows * n_items + pick, excl)
    o = np.argsort(pick, axis=1, kind="stable")
    sp = np.take_along_axis(pick, o, axis=1)
    dup_sorted = np.concatenate([np.zeros((B, 1), bool), sp[:, 1:] == sp[:, :-1]], axis=1)
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, o, dup_sorted, axis=1)
    ok = ~bad & ~dup
    take = ok & (np.cumsum(ok, axis=1) <= n_global[:, None])
    got = take.sum(axis=1)
    r_out = [np.broadcast_to(rows, pick.shape)[take]]
    i_out = [pick[take]]
    for b in np.flatnonzero(got < n_global):  # a small catalogue: draw exactly among what is left
        r = c0 + b
        e0, e1 = np.searchsorted(excl, [r * n_items, (r + 1) * n_items])
        left = np.setdiff1d(catalogue, excl[e0:e1] - r * n_items)
        if len(left) <= got[b]:
            continue
        left = np.setdiff1d(left, pick[b][take[b]])
        chosen = left[np.argsort(_uniform(seed, 4, np.full(len(left), keys[b]), universe[left]), kind="stable")]
        extra = chosen[: n_global[b] - got[b]]
        r_out.append(np.full(len(extra), r))
        i_out.append(extra)
    r_all, i_all = np.concatenate(r_out), np.concatenate(i_out)
    o = np.argsort(r_all, kind="stable")
    zeros = np.zeros(len(o), np.int64)
    built.add(r_all[o], i_all[o], _GLOBAL, zeros, zeros, zeros)


# -------------------------------------------------------------------------------------------- API


def ingest(
    source: Path,
    fmt: Literal["generic", "mind"],
    out_root: Path,
    cfg: HapConfig,
    news: Path | None = None,
    seed: int = 0,
) -> list[str]:
    """Ingest a log into ``out_root`` (the contract's data root); returns the days written.

    The whole input is read and checked before anything is written (bad input raises
    ``IngestError``, nothing written); each day then replaces its partitions (idempotent)."""
    source, out_root = Path(source), Path(out_root)
    comp = cfg.composition
    if comp.rank[0] > 0 or comp.prerank[0] > 0:
        log.warning(
            "composition.rank/prerank lower bounds %s/%s > 0: days where the retriever finds fewer negatives "
            "will fail validation (real logs: HAP_CONFIG=configs/real_logs.yaml)",
            comp.rank[0],
            comp.prerank[0],
        )
    if fmt == "mind":
        parsed = read_mind(source, news)
    elif fmt == "generic":
        parsed = read_generic(source)
    else:
        raise IngestError(f"unknown format {fmt!r}; choose generic or mind")
    days = []
    n_days = len(np.unique(parsed.ts // _US_PER_DAY))  # build_days yields one day per distinct request day
    with progress(total=n_days, desc="ingest", unit="day") as bar:
        for day in build_days(parsed, cfg, seed):
            write_partition(out_root, "requests", day.ds, day.requests)
            write_partition(out_root, "candidates", day.ds, day.candidates)
            if day.dropped_requests or day.truncated_requests:
                log.warning(
                    "%s: %d request(s) dropped (fewer than %d exposed items), %d truncated to the first %d exposed items",
                    day.ds,
                    day.dropped_requests,
                    comp.expose[0],
                    day.truncated_requests,
                    comp.expose[1],
                )
            days.append(day.ds)
            bar.update(1, ds=day.ds)
    return days


def day_summary(out_root: Path, ds: str) -> dict[str, int]:
    """Requests and candidate rows per source of a written day (what the CLI prints)."""
    import pyarrow.parquet as pq

    req = sum(pq.read_metadata(p).num_rows for p in partition_dir(out_root, "requests", ds).glob("*.parquet"))
    src = pa.concat_tables(
        [pq.read_table(p, columns=["source"]) for p in partition_dir(out_root, "candidates", ds).glob("*.parquet")]
    )
    counts = {v["values"]: v["counts"] for v in pc.value_counts(src.column("source")).to_pylist()}
    return {"requests": req, **{s: int(counts.get(s, 0)) for s in SOURCES}}
