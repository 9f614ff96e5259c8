"""The training pipeline's steps as plain functions: KFP components and the CLI call these.

Every step reads and writes directories, so the same code runs on a laptop (local paths), in the
KFP local runner (artifact paths) and on a cluster (mounted artifact paths).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hap.config import HapConfig
from hap.workspace import Workspace, fresh_dir, window_days, write_json_atomic
from hap_runtime.spec import DEFAULT_SPEC
from models.stream import ShardStream, read_shards, shard_files, write_day_shards

log = logging.getLogger(__name__)

TRAIN_DIR, HOLDOUT_DIR, VALID_DIR, SERVING_DIR = "train", "holdout", "valid", "serving"
MANIFEST_FILE = "manifest.json"


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
    used, skipped, days = [], {}, []
    for day in window_days(ds, cfg.window_days):
        status = ws.validation_status(day)
        if status != "passed":
            skipped[day] = status or "not validated"
            continue
        holdout = (out / HOLDOUT_DIR, cfg.eval.holdout_fraction) if day == ds else None
        valid = (out / VALID_DIR, cfg.train.valid_fraction) if day == ds and cfg.train.valid_fraction > 0 else None
        days.append(
            write_day_shards(
                ws.data, day, DEFAULT_SPEC, cfg.label, out / TRAIN_DIR, cfg.train.shard_requests, holdout, valid
            )
        )
        used.append(day)
    serving_requests = write_serving_set(ws.data, ds, out, cfg.eval.max_serving_requests)
    manifest = {
        "ds": ds,
        "days": used,
        "skipped_days": skipped,
        "train_requests": sum(d.requests for d in days),
        "train_samples": sum(d.samples for d in days),
        "train_shards": len(shard_files(out / TRAIN_DIR)),
        "holdout_requests": days[-1].holdout_requests,
        "holdout_samples": days[-1].holdout_samples,
        "valid_requests": days[-1].valid_requests,
        "serving_requests": serving_requests,
    }
    write_json_atomic(out / MANIFEST_FILE, manifest)
    if skipped:
        log.warning("window days skipped (not passed validation): %s", skipped)
    return manifest


def write_serving_set(data_root: Path, ds: str, out: Path, max_requests: int) -> int:
    """Encode the simulator's ``eval_candidates`` of the held-out requests (every retrieved
    candidate with p(click)) into ``serving/``; 0 when the day has none (a real log)."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from hap.contract import EVAL_TABLE, partition_dir
    from models.evaluation import serving_set
    from models.stream import to_table

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
    serving = serving_set(table, held)
    pq.write_table(to_table(serving), fresh_dir(out / SERVING_DIR / f"ds={ds}") / "part-00000.parquet")
    return serving.n_requests


def train_worker(
    prepared_dir: str, which: str, cfg: HapConfig, out_dir: str, checkpoint: str | None = None, init_dir: str = ""
) -> dict:
    """Train ``which`` ∈ {"light", "expressive"} on the prepared shards, streamed. One rank of a DDP
    job under torchrun, or the whole job when run alone. Rank 0 saves the model to ``out_dir``.
    ``init_dir``: the same day's light model, which the expressive model warm-starts from."""
    from hap_runtime.nets import load_model, save_model
    from models import distributed
    from models.train import train_expressive, train_light

    ctx = distributed.init(cfg.train.device)
    try:
        data = ShardStream(shard_files(Path(prepared_dir) / TRAIN_DIR))
        valid_files = shard_files(Path(prepared_dir) / VALID_DIR)
        valid = read_shards(valid_files) if valid_files else None
        ckpt = Path(checkpoint) if checkpoint else Path(str(Path(out_dir)) + ".ckpt")
        if which == "light":
            model, history = train_light(data, cfg, DEFAULT_SPEC, ctx=ctx, checkpoint=ckpt, valid=valid)
        elif which == "expressive":
            light = load_model(init_dir) if init_dir else None
            model, history = train_expressive(
                data, cfg, DEFAULT_SPEC, light=light, valid=valid, ctx=ctx, checkpoint=ckpt
            )
        else:
            raise ValueError(f"which must be 'light' or 'expressive', got {which!r}")
        if ctx.is_main:
            save_model(model.cpu(), out_dir)
            write_json_atomic(Path(out_dir) / "history.json", history)
            ckpt.unlink(missing_ok=True)  # the model is written: a later run starts fresh
        distributed.barrier(ctx)
    finally:
        distributed.shutdown(ctx)
    return history


def evaluate(
    prepared_dir: str, light_dir: str, expressive_dir: str, production_dir: str, cfg: HapConfig, out_path: str
) -> dict:
    """Score candidate and production models on the same held-out requests of the run's day, choose
    the candidate's K (``models.evaluation``), and compare with production at its own K."""
    from hap_runtime.nets import load_model
    from models.evaluation import assess, bootstrap_mean_ci
    from models.metrics import paired_bootstrap

    prepared = Path(prepared_dir)
    holdout = read_shards(shard_files(prepared / HOLDOUT_DIR), cfg.eval.max_holdout_requests)
    serving_files = shard_files(prepared / SERVING_DIR)
    serving = read_shards(serving_files) if serving_files else None
    light, expressive = load_model(light_dir), load_model(expressive_dir)
    metrics, intervals, routing, per_request = assess(light, expressive, holdout, serving, cfg)
    result = {
        "holdout": json.loads((prepared / MANIFEST_FILE).read_text()),
        "eval": {
            "k": cfg.eval.k,
            "m": cfg.eval.m,
            "view": routing["view"],
            "n": routing["n"],
            "m_serving": routing["m"],
        },
        "candidate": metrics,
        "candidate_ci95": intervals,
        "routing": routing,
        "production": None,
    }
    if production_dir:
        prod = Path(production_dir)
        prod_models = (load_model(prod / "light"), load_model(prod / "expressive"))
        prod_eval = prod / "evaluation.json"
        prod_k = json.loads(prod_eval.read_text()).get("routing", {}).get("k") if prod_eval.exists() else None
        prod_k = cfg.routing.k if prod_k is None else int(prod_k)
        p_metrics, _, _, p_per_request = assess(*prod_models, holdout, serving, cfg, k=prod_k)
        result["production"] = p_metrics
        deltas = paired_bootstrap((light, expressive), prod_models, holdout, cfg.eval.k, cfg.eval.m, cfg.eval.bootstrap)
        deltas = {key.replace("system.", "logged."): v for key, v in deltas.items()}
        deltas["system.value"] = bootstrap_mean_ci(per_request - p_per_request, cfg.eval.bootstrap)
        result["delta_ci95"] = deltas
    write_json_atomic(Path(out_path), result)
    return result
