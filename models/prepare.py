"""Prepare step: the day's training window as encoded request shards, plus held-out views.

Reads only days whose validation verdict is "passed". Writes one folder (its layout below), read by
the training worker (``models.worker``) and the evaluate step (``models.evaluation.evaluate``);
local paths, KFP artifact paths and mounted volumes alike.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from hap.config import HapConfig
from hap.contract import EVAL_TABLE, partition_dir
from hap.workspace import Workspace, fresh_dir, window_days, write_json_atomic
from hap_runtime.encode import encode_side
from hap_runtime.spec import DEFAULT_SPEC, FeatureSpec
from models.baselines import ITEM_RATES_FILE, write_item_rates
from models.data import EncodedData, _columns
from models.snapshot import write_latest_items
from models.stream import read_shards, shard_files, to_table, write_day_shards
from models.transforms import fit_spec

log = logging.getLogger(__name__)

# The prepared folder: train/ (window shards), holdout/ (a hash-split of ds: encoded shards and the
# raw rows beside them) and valid/, serving/ (every retrieved candidate of held-out requests,
# simulation only), spec.json (the fitted feature spec), items.parquet (each window item's latest raw
# features: the item snapshot's source, models.snapshot), manifest.json.
TRAIN_DIR, HOLDOUT_DIR, VALID_DIR, SERVING_DIR = "train", "holdout", "valid", "serving"
MANIFEST_FILE = "manifest.json"
SPEC_FILE = "spec.json"  # the fitted feature spec (models.transforms) the shards are encoded with
RAW_SERVING_FILE = "raw-candidates.parquet"


class NotTrainable(RuntimeError):
    """The run's day has no passing validation verdict: refuse to train on it."""


def prepare(workspace_root: str, ds: str, cfg: HapConfig, out_dir: str) -> dict:
    """Stream the training window ending at ``ds`` into encoded request shards (``train/``) and
    hold out a hash-split of ``ds``'s requests (``holdout/``), one bounded bucket at a time.

    Only days whose validation verdict is "passed" are read: quarantined days are never trained on.
    """
    ws = Workspace.from_env(workspace_root)
    if ws.validation_status(ds) != "passed":
        raise NotTrainable(f"ds={ds} has no passing validation verdict ({ws.validation_status(ds)}); not training")
    out = Path(out_dir)
    for sub in (TRAIN_DIR, HOLDOUT_DIR, VALID_DIR, SERVING_DIR):  # a rerun replaces, never appends
        fresh_dir(out / sub)
    window = window_days(ds, cfg.window_days)
    absent = [day for day in window if day != ds and not any(  # no data at all (a window reaching before the log)
        partition_dir(ws.data, t, day).exists() for t in ("requests", "candidates"))]  # fmt: skip
    statuses = {day: ws.validation_status(day) for day in window if day not in absent}
    skipped = {day: status or "not validated" for day, status in statuses.items() if status != "passed"}
    used = [day for day in statuses if day not in skipped]
    held_share = cfg.eval.holdout_fraction + (cfg.train.valid_fraction if cfg.train.valid_fraction > 0 else 0.0)
    spec = fit_spec(ws.data, used, ds, held_share, DEFAULT_SPEC, cfg.transform)
    write_json_atomic(out / SPEC_FILE, spec.to_dict())
    days = []
    for day in used:
        holdout = (out / HOLDOUT_DIR, cfg.eval.holdout_fraction) if day == ds else None
        valid = (out / VALID_DIR, cfg.train.valid_fraction) if day == ds and cfg.train.valid_fraction > 0 else None
        days.append(
            write_day_shards(ws.data, day, spec, cfg.label, out / TRAIN_DIR, cfg.train.shard_requests, holdout, valid)
        )
    (out / ITEM_RATES_FILE).unlink(missing_ok=True)  # a rerun replaces
    write_item_rates(ws.data, [day for day in used if day < ds], cfg.label, out)  # strictly earlier days
    serving_requests = write_serving_set(ws.data, ds, out, spec, cfg.eval.max_serving_requests)
    snapshot_items = write_latest_items(ws.data, used, spec, out)  # what a version can score by id
    manifest = {
        "ds": ds,
        "days": used,
        "skipped_days": skipped,
        "absent_days": absent,
        "train_requests": sum(d.requests for d in days),
        "train_samples": sum(d.samples for d in days),
        "train_shards": len(shard_files(out / TRAIN_DIR)),
        "holdout_requests": days[-1].holdout_requests,
        "holdout_samples": days[-1].holdout_samples,
        "valid_requests": days[-1].valid_requests,
        "serving_requests": serving_requests,
        "snapshot_items": snapshot_items,
    }
    write_json_atomic(out / MANIFEST_FILE, manifest)
    if skipped:
        log.warning("window days skipped (their data has not passed validation): %s", skipped)
    if absent:
        log.info("window days with no data (a window reaching before the log starts): %s", absent)
    return manifest


def prepared_spec(prepared_dir: str | Path) -> FeatureSpec:
    """The feature spec fitted for this prepared folder: what its shards are encoded with."""
    return FeatureSpec.from_dict(json.loads((Path(prepared_dir) / SPEC_FILE).read_text()))


def write_serving_set(data_root: Path, ds: str, out: Path, spec: FeatureSpec, max_requests: int) -> int:
    """Encode the simulator's ``eval_candidates`` of the held-out requests (every retrieved
    candidate with p(click)) into ``serving/``, beside their raw rows (``RAW_SERVING_FILE``, which
    evaluation encodes with each model's own spec); 0 when the day has none (a real log)."""
    src = partition_dir(data_root, EVAL_TABLE, ds)
    holdout = shard_files(out / HOLDOUT_DIR)
    if not src.is_dir() or not holdout or max_requests <= 0:
        return 0
    held = read_shards(holdout, max_requests)
    table = pads.dataset(src, format="parquet").to_table(
        filter=pads.field("request_id").isin(pa.array(held.request_ids.tolist(), pa.string()))
    )
    if table.num_rows == 0:
        return 0
    serving = serving_set(table, held, spec)
    dest = fresh_dir(out / SERVING_DIR / f"ds={ds}")
    pq.write_table(to_table(serving), dest / "part-00000.parquet")
    pq.write_table(table, dest / RAW_SERVING_FILE)
    return serving.n_requests


def read_serving_set(prepared_dir: str | Path, held: EncodedData, spec: FeatureSpec) -> EncodedData | None:
    """The serving view of ``held`` (encoded with ``spec``) from the raw rows prepare kept; None without."""
    raw = sorted((Path(prepared_dir) / SERVING_DIR).glob(f"ds=*/{RAW_SERVING_FILE}"))
    return serving_set(pq.read_table(raw[0]), held, spec) if raw else None


def serving_set(table, held: EncodedData, spec: FeatureSpec) -> EncodedData:
    """The serving view of held-out requests: their user side from ``held``, every retrieved
    candidate of the ``eval_candidates`` table (Arrow) encoded, ``label`` = p(click). Candidates
    are in retrieval order; requests missing from ``held`` are dropped."""
    where = {r: i for i, r in enumerate(held.request_ids)}
    keep = pc.is_in(table["request_id"], value_set=pa.array(held.request_ids.tolist(), pa.string()))
    table = table.filter(keep).sort_by([("request_id", "ascending"), ("retrieval_pos", "ascending")])
    ids = np.asarray(table["request_id"].to_pylist(), dtype=str)
    uniq, req = np.unique(ids, return_inverse=True)
    rows = np.array([where[r] for r in uniq], dtype=np.int64)
    return EncodedData(
        request_ids=uniq,
        user_x=held.user_x[rows],
        seq=held.seq[rows],
        item_x=encode_side(_columns(table, spec, "item"), spec, "item").numpy(),
        req=req.astype(np.int64),
        source=np.full(len(ids), -1, dtype=np.int64),
        label=table["p_click"].to_numpy().astype(np.float32),
    )
