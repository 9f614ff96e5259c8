"""The training pipeline's steps as plain functions: KFP components and the CLI call these.

Every step reads and writes directories, so the same code runs on a laptop (local paths), in the
KFP local runner (artifact paths) and on a cluster (mounted artifact paths).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from hap.config import HapConfig
from hap.features import DEFAULT_SPEC
from hap.workspace import Workspace, window_days, write_json_atomic
from models.data import EncodedData, holdout_mask, load_day

log = logging.getLogger(__name__)

TRAIN_FILE, HOLDOUT_FILE, MANIFEST_FILE = "train.npz", "holdout.npz", "manifest.json"


class NotTrainable(RuntimeError):
    """The run's day has no passing validation verdict: refuse to train on it."""


def prepare(workspace_root: str, ds: str, cfg: HapConfig, out_dir: str) -> dict:
    """Encode the training window ending at ``ds``; hold out a hash-split of ``ds``'s requests.

    Only days whose validation verdict is "passed" are read: quarantined days are never trained on.
    """
    ws = Workspace.from_env(workspace_root)
    if ws.validation_status(ds) != "passed":
        raise NotTrainable(f"ds={ds} has no passing validation verdict ({ws.validation_status(ds)}); not training")
    used, skipped = [], {}
    parts = []
    for day in window_days(ds, cfg.window_days):
        status = ws.validation_status(day)
        if status != "passed":
            skipped[day] = status or "not validated"
            continue
        parts.append(load_day(ws.data, day, DEFAULT_SPEC, cfg.label))
        used.append(day)
    last = parts[-1]
    held = holdout_mask(last.request_ids, cfg.eval.holdout_fraction)
    train = EncodedData.concat(parts[:-1] + [last.select_requests(np.flatnonzero(~held))])
    holdout = last.select_requests(np.flatnonzero(held))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train.save(out / TRAIN_FILE)
    holdout.save(out / HOLDOUT_FILE)
    manifest = {
        "ds": ds,
        "days": used,
        "skipped_days": skipped,
        "train_requests": train.n_requests,
        "train_samples": int(len(train.label)),
        "holdout_requests": holdout.n_requests,
        "holdout_samples": int(len(holdout.label)),
    }
    write_json_atomic(out / MANIFEST_FILE, manifest)
    if skipped:
        log.warning("window days skipped (not passed validation): %s", skipped)
    return manifest


def train(prepared_dir: str, which: str, cfg: HapConfig, out_dir: str) -> dict:
    """Train ``which`` ∈ {"light", "expressive"} on the prepared window and save it to ``out_dir``."""
    from models.nets import save_model
    from models.train import train_expressive, train_light

    data = EncodedData.load(Path(prepared_dir) / TRAIN_FILE)
    fit = {"light": train_light, "expressive": train_expressive}[which]
    model, history = fit(data, cfg, DEFAULT_SPEC)
    save_model(model, out_dir)
    write_json_atomic(Path(out_dir) / "history.json", history)
    return history


def evaluate(
    prepared_dir: str, light_dir: str, expressive_dir: str, production_dir: str, cfg: HapConfig, out_path: str
) -> dict:
    """Score candidate and production models on the same held-out requests of the run's day."""
    from models.metrics import evaluate_pair, flops_per_request, paired_bootstrap
    from models.nets import load_model

    holdout = EncodedData.load(Path(prepared_dir) / HOLDOUT_FILE)
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
