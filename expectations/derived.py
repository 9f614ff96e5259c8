"""Derived batches computed with pyarrow, each validated by GX as a batch of its own."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from hap.contract import candidates_schema, requests_schema


@dataclass(frozen=True)
class DayOverDay:
    """Bands around the median of the trailing passed days (no history: no bounds)."""

    trailing_days: int = 7
    volume_band: tuple[float, float] = (0.6, 1.6)
    positive_rate_band: tuple[float, float] = (0.7, 1.3)


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


def per_request_table(requests: pa.Table, candidates: pa.Table, global_per_positive: int) -> pa.Table:
    """Per request: candidates per source, positives, expected globals, timestamp day, history length."""
    src = candidates["source"]
    positive = pc.and_(pc.equal(src, "expose"), pc.greater(pc.fill_null(candidates["click"], 0), 0))
    parts = {"request_id": candidates["request_id"], "positive": pc.cast(positive, pa.int64())}
    for s in ("expose", "rank", "prerank", "global"):
        parts[f"is_{s}"] = pc.cast(pc.equal(src, s), pa.int64())
    agg = pa.table(parts).group_by("request_id").aggregate([(k, "sum") for k in parts if k != "request_id"])
    side = pa.table(
        {
            "request_id": requests["request_id"],
            "ts_day": pc.strftime(requests["ts"], format="%Y-%m-%d"),
            "history_len": pc.fill_null(pc.list_value_length(requests["hist_item_ids"]), 0),
        }
    )
    joined = side.join(agg, "request_id", join_type="left outer")
    out = {"request_id": joined["request_id"], "ts_day": joined["ts_day"], "history_len": joined["history_len"]}
    for s in ("expose", "rank", "prerank", "global"):
        out[f"n_{s}"] = pc.fill_null(joined[f"is_{s}_sum"], 0)
    n_pos = pc.fill_null(joined["positive_sum"], 0)
    out["n_positive"] = n_pos
    out["n_global_expected"] = pc.multiply(n_pos, global_per_positive)
    return pa.table(out)


def integrity_table(requests: pa.Table, candidates: pa.Table) -> pa.Table:
    """Every distinct candidate ``request_id`` and whether it exists in ``requests``."""
    ids = pc.unique(candidates["request_id"])
    return pa.table({"request_id": ids, "known_request": pc.is_in(ids, value_set=requests["request_id"])})


def day_stats(requests: pa.Table, candidates: pa.Table) -> dict[str, float]:
    exposed = pc.equal(candidates["source"], "expose")
    n_expose = pc.sum(pc.cast(exposed, pa.int64())).as_py() or 0
    clicks = pc.sum(pc.if_else(exposed, pc.fill_null(candidates["click"], 0), 0)).as_py() or 0
    return {
        "request_rows": requests.num_rows,
        "candidate_rows": candidates.num_rows,
        "positive_rate": clicks / n_expose if n_expose else 0.0,
    }


def daily_parameters(stats: dict[str, float], history: list[dict[str, float]], cfg: DayOverDay) -> dict:
    """Bounds for the ``daily`` suite from the trailing days' stats (open bounds without history)."""
    if not history:
        return {"rows_min": 0, "rows_max": 1e18, "positive_rate_min": 0.0, "positive_rate_max": 1.0}
    rows = statistics.median(h["candidate_rows"] for h in history)
    rate = statistics.median(h["positive_rate"] for h in history)
    return {
        "rows_min": rows * cfg.volume_band[0],
        "rows_max": rows * cfg.volume_band[1],
        "positive_rate_min": rate * cfg.positive_rate_band[0],
        "positive_rate_max": rate * cfg.positive_rate_band[1],
    }
