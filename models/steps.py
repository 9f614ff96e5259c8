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

TRAIN_DIR, HOLDOUT_DIR, MANIFEST_FILE = "train", "holdout", "manifest.json"


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
    for sub in (TRAIN_DIR, HOLDOUT_DIR):  # a rerun into the same folder replaces, never appends
        fresh_dir(out / sub)
    used, skipped, days = [], {}, []
    for day in window_days(ds, cfg.window_days):
        status = ws.validation_status(day)
        if status != "passed":
            skipped[day] = status or "not validated"
            continue
        holdout = (out / HOLDOUT_DIR, cfg.eval.holdout_fraction) if day == ds else None
        days.append(
            write_day_shards(ws.data, day, DEFAULT_SPEC, cfg.label, out / TRAIN_DIR, cfg.train.shard_requests, holdout)
        )
        used.append(day)
    manifest = {
        "ds": ds,
        "days": used,
        "skipped_days": skipped,
        "train_requests": sum(d.requests for d in days),
        "train_samples": sum(d.samples for d in days),
        "train_shards": len(shard_files(out / TRAIN_DIR)),
        "holdout_requests": days[-1].holdout_requests,
        "holdout_samples": days[-1].holdout_samples,
    }
    write_json_atomic(out / MANIFEST_FILE, manifest)
    if skipped:
        log.warning("window days skipped (not passed validation): %s", skipped)
    return manifest


def train_worker(prepared_dir: str, which: str, cfg: HapConfig, out_dir: str, checkpoint: str | None = None) -> dict:
    """Train ``which`` ∈ {"light", "expressive"} on the prepared shards, streamed. One rank of a DDP
    job under torchrun, or the whole job when run alone. Rank 0 saves the model to ``out_dir``."""
    from hap_runtime.nets import save_model
    from models import distributed
    from models.train import train_expressive, train_light

    ctx = distributed.init(cfg.train.device)
    try:
        data = ShardStream(shard_files(Path(prepared_dir) / TRAIN_DIR))
        fit = {"light": train_light, "expressive": train_expressive}[which]
        ckpt = Path(checkpoint) if checkpoint else Path(str(Path(out_dir)) + ".ckpt")
        model, history = fit(data, cfg, DEFAULT_SPEC, ctx=ctx, checkpoint=ckpt)
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
    """Score candidate and production models on the same held-out requests of the run's day."""
    from hap_runtime.nets import load_model
    from models.metrics import evaluate_pair, flops_per_request, paired_bootstrap

    holdout = read_shards(shard_files(Path(prepared_dir) / HOLDOUT_DIR), cfg.eval.max_holdout_requests)
    k, m = cfg.eval.k, cfg.eval.m
    light, expressive = load_model(light_dir), load_model(expressive_dir)
    result = {
        "holdout": json.loads((Path(prepared_dir) / MANIFEST_FILE).read_text()),
        "eval": {"k": k, "m": m},
        "candidate": evaluate_pair(light, expressive, holdout, k, m),
        "production": None,
    }
    flops = flops_per_request(light, expressive, cfg.eval.flops_candidates, cfg.routing.k)
    result["candidate"]["system.flops_per_request"] = flops["total"]
    result["flops"] = {"n": cfg.eval.flops_candidates, "k": cfg.routing.k, **flops}
    if production_dir:
        prod = Path(production_dir)
        prod_models = (load_model(prod / "light"), load_model(prod / "expressive"))
        result["production"] = evaluate_pair(*prod_models, holdout, k, m)
        result["production"]["system.flops_per_request"] = flops_per_request(
            *prod_models, cfg.eval.flops_candidates, cfg.routing.k
        )["total"]
        result["delta_ci95"] = paired_bootstrap((light, expressive), prod_models, holdout, k, m, cfg.eval.bootstrap)
    write_json_atomic(Path(out_path), result)
    return result
