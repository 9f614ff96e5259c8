"""Training of the light model (all sources) and the expressive model (hard sources only)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from hap import HARD_SOURCES, SOURCES
from hap.config import LossConfig, ModelConfig, TrainConfig
from hap.features import FeatureSpec
from models.data import Batch, EncodedData
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
    history["grad_monitor"] = []
    start = time.perf_counter()
    step = 0
    for epoch in range(train_cfg.epochs):
        model.train()
        sums: dict[str, float] = {}
        n_batches = 0
        data_s = compute_s = 0.0
        t0 = time.perf_counter()
        batches = data.batches(train_cfg.batch_requests, rng)
        while True:
            t_data = time.perf_counter()
            b = next(batches, None)
            data_s += time.perf_counter() - t_data
            if b is None:
                break
            t_compute = time.perf_counter()
            logits = model(b.user_x, b.seq, b.item_x, b.req)
            loss, parts = hap_loss(logits, b.label, b.source, b.req, b.n_requests, loss_cfg)
            if train_cfg.monitor_every and step % train_cfg.monitor_every == 0:
                history["grad_monitor"].append({"step": step, **source_gradient_conflict(model, logits, b, loss_cfg)})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            compute_s += time.perf_counter() - t_compute
            n_batches += 1
            step += 1
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        elapsed = time.perf_counter() - t0
        row = {k: v / max(n_batches, 1) for k, v in sums.items()}
        row.update(epoch=epoch, seconds=elapsed, data_seconds=data_s, compute_seconds=compute_s)
        row["samples_per_s"] = len(data.label) / max(elapsed, 1e-9)
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


def source_gradient_conflict(model: PreRanker, logits: torch.Tensor, b: Batch, loss_cfg: LossConfig) -> dict:
    """Each source's contrastive gradient on the shared dense parameters: norms and pairwise cosines.

    This is the paper's central claim made visible: mixed negatives pull the shared layers in
    different directions, and hard sources' gradients dominate the easy ones' in norm.
    """
    probe = LossConfig(mode="ghcl", temperature=loss_cfg.temperature, bce_weight=0.0)
    _, parts = hap_loss(logits, b.label, b.source, b.req, b.n_requests, probe)
    shared = [p for n, p in model.named_parameters() if not n.startswith("embeddings.")]
    grads: dict[str, torch.Tensor] = {}
    for i, s in enumerate(SOURCES):
        term = parts.get(f"nce_{s}")
        if term is None or not bool((b.source == i).any()):
            continue
        g = torch.autograd.grad(term, shared, retain_graph=True, allow_unused=True)
        grads[s] = torch.cat(
            [(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, shared, strict=True)]
        )
    names = list(grads)
    return {
        "norm": {s: float(g.norm()) for s, g in grads.items()},
        "cosine": {
            f"{a}|{c}": float(torch.nn.functional.cosine_similarity(grads[a], grads[c], dim=0))
            for i, a in enumerate(names)
            for c in names[i + 1 :]
        },
    }
