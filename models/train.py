"""Training of the light model (all sources) and the expressive model (hard sources only)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from hap import HARD_SOURCES
from hap.config import LossConfig, ModelConfig, TrainConfig
from hap.features import FeatureSpec
from models.data import EncodedData
from models.losses import hap_loss
from models.nets import PreRanker

log = logging.getLogger(__name__)


def train_model(
    data: EncodedData, model_cfg: ModelConfig, loss_cfg: LossConfig, train_cfg: TrainConfig, spec: FeatureSpec
) -> tuple[PreRanker, dict]:
    """Train one model from scratch, deterministically for a given seed. Returns (model, history)."""
    torch.manual_seed(train_cfg.seed)
    # Bit-reproducible weights whatever the thread scheduling: a rerun of a day yields the same
    # content hash, hence the same registry version (idempotent by ds).
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(train_cfg.threads)
    rng = np.random.default_rng(train_cfg.seed)
    model = PreRanker(model_cfg, spec)
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    history: dict = {"epochs": [], "samples": int(len(data.label)), "requests": int(data.n_requests)}
    start = time.perf_counter()
    for epoch in range(train_cfg.epochs):
        model.train()
        sums: dict[str, float] = {}
        n_batches = 0
        t0 = time.perf_counter()
        for b in data.batches(train_cfg.batch_requests, rng):
            logits = model(b.user_x, b.seq, b.item_x, b.req)
            loss, parts = hap_loss(logits, b.label, b.source, b.req, b.n_requests, loss_cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n_batches += 1
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        elapsed = time.perf_counter() - t0
        row = {k: v / max(n_batches, 1) for k, v in sums.items()}
        row.update(epoch=epoch, seconds=elapsed, samples_per_s=len(data.label) / max(elapsed, 1e-9))
        history["epochs"].append(row)
        log.info("epoch %d loss %.4f (%.0f samples/s)", epoch, row.get("loss", float("nan")), row["samples_per_s"])
    history["seconds"] = time.perf_counter() - start
    return model.eval(), history


def train_light(data: EncodedData, cfg, spec: FeatureSpec) -> tuple[PreRanker, dict]:
    """Light model on every source, with the GHCL loss by default."""
    return train_model(data, cfg.light, cfg.light_loss, cfg.train, spec)


def train_expressive(data: EncodedData, cfg, spec: FeatureSpec) -> tuple[PreRanker, dict]:
    """Expressive model on the hard sources only: it never sees `prerank` or `global` rows."""
    return train_model(data.filter_sources(HARD_SOURCES), cfg.expressive, cfg.expressive_loss, cfg.train, spec)
