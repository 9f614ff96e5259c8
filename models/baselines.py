"""Trivial scores the light model must beat, on the same held-out candidates it is judged on.

- each numeric item feature of the contract used alone as a score (``popularity`` among them: the
  logged popularity); the best of them by expose AUC is *the best single feature*;
- a per-item click rate from strictly earlier days of the window (``ITEM_RATE``), smoothed toward
  their mean, written by the prepare step (``write_item_rates``) and looked up by ``item_id``.

A learned model that loses to one of its input columns is a bug, not a result: the gate refuses it
(``light_vs_best_feature.auc.expose`` in ``configs/gate_policy.yaml``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from hap.contract import aggregate_label, partition_dir
from hap_runtime.spec import FeatureSpec
from models.stream import SCAN_ROWS

ITEM_RATE = "item_click_rate_earlier_days"
ITEM_RATES_FILE = "item_rates.parquet"
RATE_PRIOR = 10.0  # impressions of the mean rate added to every item's own


def feature_scores(raw: pa.Table, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Each numeric item feature of ``raw`` (candidate rows) as a score; a missing value ranks last."""
    out = {}
    for f in spec.side("item"):
        if f.kind == "bucket":
            x = raw[f.name].cast(pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False)
            out[f.name] = np.where(np.isfinite(x), x, -np.inf)
    return out


def write_item_rates(data_root: Path, days: list[str], label: str, out: Path) -> int:
    """Clicks and impressions per item over the exposed candidates of ``days`` (the window's days
    before the run's day), summed batch by batch (memory: the distinct items); returns the number of
    items. No exposed rows: no file."""
    acc: pa.Table | None = None
    for day in days:
        src = pads.dataset(partition_dir(data_root, "candidates", day), format="parquet")
        for rb in src.to_batches(batch_size=SCAN_ROWS, use_threads=False):
            table = pa.Table.from_batches([rb])
            table = table.filter(pc.equal(table["source"], "expose"))
            if not table.num_rows:
                continue
            part = pa.table({
                "item_id": table["item_id"],
                "clicks": aggregate_label(table, label).astype(np.float64),
                "impressions": np.ones(table.num_rows),
            })  # fmt: skip
            merged = part if acc is None else pa.concat_tables([acc, part])
            acc = merged.group_by("item_id").aggregate([("clicks", "sum"), ("impressions", "sum")])
            acc = acc.select(["item_id", "clicks_sum", "impressions_sum"]).rename_columns(part.column_names)
    if acc is None:
        return 0
    pq.write_table(acc, out / ITEM_RATES_FILE)
    return acc.num_rows


def item_rate_scores(raw: pa.Table, prepared: Path) -> np.ndarray | None:
    """The smoothed earlier-days click rate of each candidate's item; None without earlier days."""
    path = prepared / ITEM_RATES_FILE
    if not path.exists():
        return None
    rates = pq.read_table(path)
    clicks = rates["clicks"].to_numpy()
    shown = rates["impressions"].to_numpy()
    mean = clicks.sum() / max(shown.sum(), 1.0)
    smoothed = (clicks + RATE_PRIOR * mean) / (shown + RATE_PRIOR)
    where = pc.index_in(raw["item_id"], value_set=rates["item_id"]).to_numpy(zero_copy_only=False)
    where = np.nan_to_num(where.astype(np.float64), nan=-1).astype(np.int64)
    return np.where(where >= 0, smoothed[np.maximum(where, 0)], mean)


def baseline_scores(raw: pa.Table, spec: FeatureSpec, prepared: Path) -> dict[str, np.ndarray]:
    scores = feature_scores(raw, spec)
    rate = item_rate_scores(raw, prepared)
    if rate is not None:
        scores[ITEM_RATE] = rate
    return scores


def best_feature(table: dict[str, dict[str, float]]) -> str | None:
    """The numeric item feature with the highest expose AUC (NaN never wins)."""
    numeric = {n: t["auc.expose"] for n, t in table.items() if n != ITEM_RATE and not np.isnan(t["auc.expose"])}
    return max(numeric, key=numeric.__getitem__) if numeric else None
