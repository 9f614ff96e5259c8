"""Derived batches computed with pyarrow, each validated by GX as a batch of its own.

Row-level facts are compacted here so that GX judges small tables whatever the day's size, and
every row of them names the offending value and example ids (never a row number):

- ``schema``: one row per contract column (and per unexpected column), expected vs observed type;
- ``candidate_values``: per candidate column and source, each distinct value (low-cardinality
  columns) or the minimum and maximum (numeric ones), plus a ``null`` row when any value is null or
  NaN — each with its row count and an example request and item;
- ``per_request``: one row per request id seen in either table: counts per source, positives, the
  global bounds, timestamp day, history length and nulls inside it, duplicate items, whether the
  request exists (exactly once) in ``requests``;
- ``daily``: one row of the day's aggregates (volume, positive rate, label leakage, concentration,
  carry-over from the day before, feature mode shares), checked against the baseline's bands.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hap import SOURCES
from hap.config import Composition
from hap.contract import POSITION_COLUMNS, candidates_schema, mix64, requests_schema
from hap_runtime.spec import DEFAULT_SPEC, Feature, FeatureSpec

_DISTINCT_MAX = 128  # integer categoricals up to this size are profiled value by value


def _type_name(t: pa.DataType) -> str:
    """Arrow type as text, ignoring list child names (Parquet renames ``item`` to ``element``)."""
    return f"list<{_type_name(t.value_type)}>" if pa.types.is_list(t) else str(t)


def schema_table(tables: dict[str, pa.Table]) -> pa.Table:
    """One row per contract column (and per unexpected column): expected vs observed Arrow type."""
    rows = []
    for name, expected in (("requests", requests_schema()), ("candidates", candidates_schema())):
        if name not in tables:
            continue
        observed = tables[name].schema
        for field in expected:
            idx = observed.get_field_index(field.name)
            obs = _type_name(observed.field(idx).type) if idx >= 0 else "missing"
            rows.append((name, field.name, _type_name(field.type), obs))
        for field in observed:
            if expected.get_field_index(field.name) < 0:
                rows.append((name, field.name, "absent", _type_name(field.type)))
    table, column, exp, obs = zip(*rows, strict=True) if rows else ((), (), (), ())
    return pa.table({"table": table, "column": column, "expected_type": exp, "observed_type": obs})


# ---- candidate_values: the candidates table compacted per column and source ----


def profiled_columns(spec: FeatureSpec = DEFAULT_SPEC) -> dict[str, str]:
    """Candidate columns the suites check, each ``"distinct"`` (every value listed) or ``"range"``."""
    out = {"source": "distinct", "click": "distinct", "like": "distinct", "comment": "distinct", "dwell_ms": "range"}
    out.update({c: "range" for c in POSITION_COLUMNS})
    for f in spec.side("item"):
        out[f.name] = "distinct" if f.vocab or (f.kind == "categorical" and f.size <= _DISTINCT_MAX) else "range"
    return out


def _missing(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Null, or NaN for floats (a NaN feature is as unusable as a missing one)."""
    missing = pc.is_null(col)
    if pa.types.is_floating(col.type):
        missing = pc.or_(missing, pc.fill_null(pc.is_nan(col), False))
    return missing


def candidate_values(candidates: pa.Table, spec: FeatureSpec = DEFAULT_SPEC) -> pa.Table:
    """Columns: column, source, stat (value | min | max | null), value (text), num (number or null),
    rows, example_request, example_item. Vectorized over source codes: one pass per column."""
    out: dict[str, list] = {k: [] for k in ("column", "source", "stat", "value", "num", "rows", "row")}
    n = candidates.num_rows
    names = candidates.column_names
    if "source" in names and n:
        src = pc.dictionary_encode(pc.fill_null(candidates["source"].cast(pa.string()), "∅")).combine_chunks()
        codes, labels = np.asarray(src.indices), src.dictionary.to_pylist()
    else:
        codes, labels = np.zeros(n, np.int64), ["∅"]
    groups = [np.flatnonzero(codes == c) for c in range(len(labels))]

    def add(column: str, code: int, stat: str, value: Any, rows: int, row: int) -> None:
        out["column"].append(column)
        out["source"].append(labels[code])
        out["stat"].append(stat)
        out["value"].append(None if value is None else str(value))
        numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        out["num"].append(float(value) if numeric else None)
        out["rows"].append(int(rows))
        out["row"].append(int(row))

    for column, how in profiled_columns(spec).items():
        if column not in names or n == 0:
            continue  # the schema batch reports a missing column
        col = candidates[column].combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        missing = np.asarray(_missing(pa.chunked_array([col])))
        numeric = pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
        if how == "range" and numeric:
            values = np.asarray(
                pc.fill_null(pc.cast(col, pa.float64(), safe=False), np.nan)
            )  # ids beyond 2^53: approximate, fine for min/max
            for code, rows in enumerate(groups):
                if not len(rows):
                    continue
                miss = missing[rows]
                if miss.any():
                    add(column, code, "null", None, int(miss.sum()), rows[np.argmax(miss)])
                if miss.all():
                    continue
                v = values[rows]
                lo, hi = np.nanargmin(v), np.nanargmax(v)
                raw_lo, raw_hi = col[int(rows[lo])].as_py(), col[int(rows[hi])].as_py()
                add(column, code, "min", raw_lo, int((~miss).sum()), rows[lo])
                add(column, code, "max", raw_hi, int((~miss).sum()), rows[hi])
            continue
        enc = pc.dictionary_encode(col)
        idx = np.asarray(pc.fill_null(enc.indices, -1), dtype=np.int64)
        vocab = enc.dictionary.to_pylist()
        width = len(vocab) + 1
        key = codes.astype(np.int64) * width + np.where(missing, len(vocab), np.where(idx < 0, len(vocab), idx))
        uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
        for k, row, cnt in zip(uniq.tolist(), first.tolist(), counts.tolist(), strict=True):
            code, v = divmod(k, width)
            if v == len(vocab):
                add(column, code, "null", None, cnt, row)
            else:
                add(column, code, "value", vocab[v], cnt, row)
    rows = np.asarray(out.pop("row"), dtype=np.int64)
    example = {}
    for name, key in (("example_request", "request_id"), ("example_item", "item_id")):
        example[name] = (
            pc.cast(pc.take(candidates[key], pa.array(rows)), pa.string())
            if key in names and len(rows)
            else pa.nulls(len(rows), pa.string())
        )
    return pa.table(
        {
            "column": pa.array(out["column"], pa.string()),
            "source": pa.array(out["source"], pa.string()),
            "stat": pa.array(out["stat"], pa.string()),
            "value": pa.array(out["value"], pa.string()),
            "num": pa.array(out["num"], pa.float64()),
            "rows": pa.array(out["rows"], pa.int64()),
            **example,
        }
    )


def _as_text(v: Any) -> str | None:
    return None if v is None else str(v)


# ---- per_request ----


def _as_array(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def _codes(ids: pa.ChunkedArray, universe: pa.Array) -> np.ndarray:
    """Position of each id in ``universe`` (-1 where absent): integer keys for numpy bincounts."""
    return np.asarray(pc.fill_null(pc.index_in(ids, value_set=universe), -1), dtype=np.int64)


def per_request_table(requests: pa.Table, candidates: pa.Table, comp: Composition) -> pa.Table:
    """One row per request id of either table; see the module docstring."""
    # every id of either table: the requests' ids, then candidate ids that requests lacks (orphans)
    req_ids = pc.unique(requests["request_id"])
    orphans = pc.unique(
        pc.filter(candidates["request_id"], pc.is_null(pc.index_in(candidates["request_id"], value_set=req_ids)))
    )
    ids = pa.concat_arrays([_as_array(req_ids).cast(pa.string()), _as_array(orphans).cast(pa.string())])
    n = len(ids)
    c_idx, r_idx = _codes(candidates["request_id"], ids), _codes(requests["request_id"], ids)
    src_enc = pc.dictionary_encode(candidates["source"].cast(pa.string())).combine_chunks()
    src_codes = np.asarray(pc.fill_null(src_enc.indices, -1), np.int64)
    src_of = {v: i for i, v in enumerate(src_enc.dictionary.to_pylist())}
    click = np.asarray(pc.fill_null(candidates["click"], 0).to_numpy(zero_copy_only=False))
    out: dict[str, Any] = {"request_id": ids}
    # per request of the requests table (the first row of a duplicated id)
    first = np.full(n, -1, np.int64)
    first[r_idx[::-1]] = np.arange(len(r_idx))[::-1]
    hist = requests["hist_item_ids"]
    null_parent = pc.filter(pc.list_parent_indices(hist), pc.is_null(pc.list_flatten(hist)))
    hist_nulls = np.bincount(np.asarray(null_parent, np.int64), minlength=requests.num_rows)
    hist_len = np.asarray(pc.fill_null(pc.list_value_length(hist), 0), np.int64)
    has = first >= 0
    at = np.where(has, first, 0)  # a row of `requests` for every id (0 stands in for orphans, masked below)
    if requests.num_rows:
        ts_day = pc.strftime(pc.take(requests["ts"], pa.array(at)), format="%Y-%m-%d")
        out["ts_day"] = pc.if_else(pa.array(has), ts_day, pa.scalar(None, pa.string()))
        hist_len, hist_nulls = hist_len[at], hist_nulls[at]
    else:
        out["ts_day"] = pa.nulls(n, pa.string())
        hist_len = hist_nulls = np.zeros(n, np.int64)
    out["id_rows"] = pa.array(np.bincount(r_idx, minlength=n))
    out["history_len"] = pa.array(np.where(has, hist_len, 0))
    out["history_nulls"] = pa.array(np.where(has, hist_nulls, 0))
    for s in SOURCES:
        out[f"n_{s}"] = pa.array(np.bincount(c_idx[src_codes == src_of.get(s, -2)], minlength=n))
    n_pos = np.bincount(c_idx[(src_codes == src_of.get("expose", -2)) & (click > 0)], minlength=n)
    out["n_positive"] = pa.array(n_pos)
    lo, hi = comp.global_per_positive
    out["n_global_min"] = pa.array(np.floor(lo * n_pos + 1e-9).astype(np.int64))
    out["n_global_max"] = pa.array(np.ceil(hi * n_pos - 1e-9).astype(np.int64))
    # rows whose (request, item) pair repeats
    items = np.asarray(candidates["item_id"].to_numpy(zero_copy_only=False))
    if items.dtype.kind == "i" and len(items) and items.min() >= 0 and (n + 1) * (int(items.max()) + 1) < 2**62:
        key = np.sort(c_idx * (int(items.max()) + 1) + items)  # one integer key per (request, item) pair
        same = key[1:] == key[:-1]
        req_of = key // (int(items.max()) + 1)
    else:  # ids too large (or not integers) to pack into one key
        order = np.lexsort((items, c_idx))
        req_of = c_idx[order]
        same = (req_of[1:] == req_of[:-1]) & (items[order][1:] == items[order][:-1])
    dup = np.zeros(len(items), bool)
    dup[1:] |= same
    dup[:-1] |= same
    out["duplicate_rows"] = pa.array(np.bincount(req_of[dup], minlength=n))
    return pa.table(out)


# ---- daily aggregates ----

SHARE_STATS = ("top_user_positive_share", "top_user_request_share", "top_item_expose_share")


def mode_features(spec: FeatureSpec = DEFAULT_SPEC) -> tuple[Feature, ...]:
    """Categorical features whose most common value's share is tracked (a feature stuck at one
    value — a logging default — shows as its mode share jumping)."""
    return tuple(f for f in spec.features if f.kind == "categorical" and f.name not in ("hour_of_day", "day_of_week"))


def _fingerprints(candidates: pa.Table, min_items: int = 3) -> pa.Table:
    """Per request with at least ``min_items`` exposed items: an order-free fingerprint of its
    exposed item set (the count and two sums of 31-bit item hashes)."""
    exposed = candidates.filter(pc.equal(candidates["source"], "expose"))
    items = np.asarray(pc.fill_null(exposed["item_id"], 0), dtype=np.uint64)
    h = mix64(items)
    t = pa.table(
        {
            "request_id": exposed["request_id"],
            "h1": pa.array((h & np.uint64(0x7FFFFFFF)).astype(np.int64)),
            "h2": pa.array(((h >> np.uint64(32)) & np.uint64(0x7FFFFFFF)).astype(np.int64)),
        }
    )
    g = t.group_by("request_id").aggregate([("h1", "count"), ("h1", "sum"), ("h2", "sum")])
    g = g.filter(pc.greater_equal(g["h1_count"], min_items))
    return pa.table({"n": g["h1_count"], "s1": g["h1_sum"], "s2": g["h2_sum"]})


def day_stats(
    requests: pa.Table,
    candidates: pa.Table,
    previous: pa.Table | None = None,
    previous_request_ids: pa.ChunkedArray | None = None,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The day's aggregates and, beside them, who drives them (top user, top item, examples).
    ``previous``/``previous_request_ids``: the day before's candidates and request ids, if any."""
    exposed = pc.equal(candidates["source"], "expose")
    n_expose = pc.sum(pc.cast(exposed, pa.int64())).as_py() or 0
    click = pc.fill_null(candidates["click"], 0)
    pos_mask = pc.and_(exposed, pc.greater(click, 0))
    positives = candidates.filter(pos_mask).select(["request_id", "item_id"])
    n_pos = positives.num_rows
    stats: dict[str, float] = {
        "request_rows": requests.num_rows,
        "candidate_rows": candidates.num_rows,
        "positive_rate": n_pos / n_expose if n_expose else 0.0,
    }
    detail: dict[str, Any] = {}

    # label leakage: exposed positives already in their own request's behaviour sequence. Keys are
    # (row of the request in `requests`, item id) pairs: integers, no string joins.
    hist = requests["hist_item_ids"]
    flat = pc.list_flatten(hist)
    valid = pc.is_valid(flat)
    history = pa.table(
        {"row": pc.filter(pc.list_parent_indices(hist), valid).cast(pa.int64()), "item_id": pc.filter(flat, valid)}
    )
    pos_rows = pc.index_in(positives["request_id"], value_set=requests["request_id"]).cast(pa.int64())
    pos = pa.table({"row": pos_rows, "item_id": positives["item_id"], "request_id": positives["request_id"]})
    h_row, h_item = (np.asarray(history[c].to_numpy(zero_copy_only=False)) for c in ("row", "item_id"))
    p_row = np.asarray(pc.fill_null(pos_rows, -1).to_numpy(zero_copy_only=False))
    p_item = np.asarray(pos["item_id"].to_numpy(zero_copy_only=False))
    top = max(int(h_item.max()) if len(h_item) else 0, int(p_item.max()) if len(p_item) else 0) + 1
    small = h_item.dtype.kind == p_item.dtype.kind == "i" and (requests.num_rows + 1) * top < 2**62
    if small and (not len(h_item) or h_item.min() >= 0) and (not len(p_item) or p_item.min() >= 0):
        hit = np.asarray(pc.is_in(pa.array(p_row * top + p_item), value_set=pa.array(h_row * top + h_item))) & (
            p_row >= 0
        )
        leaked = pos.filter(pa.array(hit))
    else:  # ids too large to pack: a hash join
        leaked = pos.join(history.group_by(["row", "item_id"]).aggregate([]), ["row", "item_id"], join_type="inner")
    stats["leakage_share"] = leaked.num_rows / n_pos if n_pos else 0.0
    detail["leakage_examples"] = [
        f"request {r} item {i}"
        for r, i in zip(*(leaked[c].to_pylist()[:3] for c in ("request_id", "item_id")), strict=True)
    ]

    # concentration: the top user's share of positives and of requests, the top item's of impressions
    known = pc.drop_null(pos_rows)
    pos_user_counts = pc.value_counts(pc.take(requests["user_id"], known)).flatten() if len(known) else None
    if pos_user_counts is not None:
        t = pa.table({"user_id": pos_user_counts[0], "n": pos_user_counts[1]})
        stats["top_user_positive_share"], detail["top_user_positive"] = _top_share(t, "user_id", "n", n_pos)
    else:
        stats["top_user_positive_share"], detail["top_user_positive"] = 0.0, None
    req_users = pc.value_counts(requests["user_id"]).flatten() if requests.num_rows else None
    if req_users is not None:
        t = pa.table({"user_id": req_users[0], "n": req_users[1]})
        stats["top_user_request_share"], detail["top_user_requests"] = _top_share(t, "user_id", "n", requests.num_rows)
    else:
        stats["top_user_request_share"], detail["top_user_requests"] = 0.0, None
    exp_items = pc.value_counts(pc.filter(candidates["item_id"], exposed)).flatten() if n_expose else None
    if exp_items is not None:
        t = pa.table({"item_id": exp_items[0], "n": exp_items[1]})
        stats["top_item_expose_share"], detail["top_item"] = _top_share(t, "item_id", "n", n_expose)
    else:
        stats["top_item_expose_share"], detail["top_item"] = 0.0, None

    # carry-over: requests whose exposed item set repeats one of the previous day's
    today = _fingerprints(candidates)
    if previous is not None and today.num_rows:
        before = _fingerprints(previous)
        both = today.join(before.group_by(["n", "s1", "s2"]).aggregate([]), ["n", "s1", "s2"], join_type="inner")
        stats["carryover_share"] = both.num_rows / today.num_rows
    else:
        stats["carryover_share"] = 0.0
    # request ids of the day before used again (a re-delivered day, a counter reset)
    if previous_request_ids is not None and requests.num_rows:
        reused = pc.filter(requests["request_id"], pc.is_in(requests["request_id"], value_set=previous_request_ids))
        stats["request_id_reuse_share"] = len(reused) / requests.num_rows
        detail["reused_request_ids"] = reused[:3].to_pylist()
    else:
        stats["request_id_reuse_share"] = 0.0

    # mode share of each categorical feature
    for f in mode_features(spec):
        table = requests if f.side == "user" else candidates
        if f.name not in table.column_names or table.num_rows == 0:
            stats[f"mode_share_{f.name}"] = 0.0  # nothing to judge (other checks fail such a day)
            continue
        vc = pc.value_counts(table[f.name]).flatten()
        top = int(np.argmax(np.asarray(vc[1])))
        stats[f"mode_share_{f.name}"] = int(vc[1][top].as_py()) / table.num_rows
        detail[f"mode.{f.name}"] = _as_text(vc[0][top].as_py())
    return stats, detail


def _top_share(t: pa.Table, key: str, count: str, total: int) -> tuple[float, str | None]:
    if not total or t.num_rows == 0:
        return 0.0, None
    counts = np.asarray(t[count])
    top = int(np.argmax(counts))
    return float(counts[top]) / total, _as_text(t[key][top].as_py())
