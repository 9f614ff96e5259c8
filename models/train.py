"""Training of the light model (all sources) and the expressive model (hard sources only)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch.nn.parallel import DistributedDataParallel

from hap import HARD_SOURCES, SOURCES
from hap.config import LossConfig, TrainConfig
from hap_runtime.config import ModelConfig
from hap_runtime.nets import PreRanker
from hap_runtime.spec import FeatureSpec
from models.data import Batch
from models.distributed import DistContext, all_sum, barrier, pick_device
from models.losses import hap_loss

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """In-memory ``EncodedData`` or streamed ``ShardStream``: one epoch of this rank's batches."""

    def epoch(self, epoch: int, batch_requests: int, rank: int, world: int, seed: int) -> Iterator[Batch]: ...

    def filter_sources(self, sources: Sequence[str]) -> BatchSource: ...


def train_model(
    data: BatchSource,
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    train_cfg: TrainConfig,
    spec: FeatureSpec,
    ctx: DistContext | None = None,
    checkpoint: Path | None = None,
) -> tuple[PreRanker, dict]:
    """Train one model from scratch (or from ``checkpoint``), deterministically for a given seed.

    With ``ctx.world > 1`` the model is wrapped in DDP: each rank trains on its own request batches
    and gradients are averaged. Rank 0 writes ``checkpoint`` after every epoch; a restarted job
    resumes after the last completed epoch. Returns (model, history).
    """
    ctx = ctx or DistContext(device=pick_device(train_cfg.device, 0))
    device = torch.device(ctx.device)
    torch.manual_seed(train_cfg.seed)
    # Bit-reproducible weights whatever the thread scheduling: a rerun of a day yields the same
    # content hash, hence the same registry version (idempotent by ds). CUDA kernels only warn.
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.set_num_threads(max(1, train_cfg.threads // ctx.local_world))  # ranks on one machine share its cores
    model = PreRanker(model_cfg, spec).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    history: dict = {"epochs": [], "grad_monitor": [], "world_size": ctx.world, "device": ctx.device, "resumed": []}
    first_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        first_epoch = int(state["epoch"]) + 1
        history = json.loads(state["history"])
        history["resumed"].append(first_epoch)
        log.warning("resuming from %s after epoch %d", checkpoint, first_epoch - 1)
    net = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if ctx.distributed
        else model
    )
    monitor = train_cfg.monitor_every if not ctx.distributed else 0  # autograd.grad probes bypass DDP's reducer
    step = sum(e["steps"] for e in history["epochs"])
    start = time.perf_counter()
    for epoch in range(first_epoch, train_cfg.epochs):
        net.train()
        sums: dict[str, float] = {}
        n_batches = n_samples = n_requests = 0
        data_s = compute_s = 0.0
        t0 = time.perf_counter()
        batches = data.epoch(epoch, train_cfg.batch_requests, ctx.rank, ctx.world, train_cfg.seed)
        while True:
            t_data = time.perf_counter()
            b = next(batches, None)
            data_s += time.perf_counter() - t_data
            if b is None:
                break
            t_compute = time.perf_counter()
            b = b.to(device)
            logits = net(b.user_x, b.seq, b.item_x, b.req)  # (C,)
            loss, parts = hap_loss(logits, b.label, b.source, b.req, b.n_requests, loss_cfg)
            if monitor and step % monitor == 0:
                history["grad_monitor"].append({"step": step, **source_gradient_conflict(model, logits, b, loss_cfg)})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            compute_s += time.perf_counter() - t_compute
            n_batches += 1
            step += 1
            n_samples += len(b.label)
            n_requests += b.n_requests
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        elapsed = time.perf_counter() - t0
        total_samples, total_requests = all_sum(ctx, [n_samples, n_requests])
        row = {k: v / max(n_batches, 1) for k, v in sums.items()}
        row.update(epoch=epoch, seconds=elapsed, data_seconds=data_s, compute_seconds=compute_s, steps=n_batches)
        row.update(samples=int(total_samples), requests=int(total_requests))
        row["samples_per_s"] = total_samples / max(elapsed, 1e-9)
        history["epochs"].append(row)
        history["samples"], history["requests"] = int(total_samples), int(total_requests)
        log.info("epoch %d loss %.4f (%.0f samples/s)", epoch, row.get("loss", float("nan")), row["samples_per_s"])
        if checkpoint is not None and ctx.is_main:
            save_checkpoint(checkpoint, epoch, model, opt, history)
        barrier(ctx)
    history["seconds"] = time.perf_counter() - start
    return model.eval(), history


def save_checkpoint(path: Path, epoch: int, model: PreRanker, opt: torch.optim.Optimizer, history: dict) -> None:
    """Atomically (temp file + rename): a worker killed mid-write leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict()}
    torch.save({**state, "history": json.dumps(history)}, tmp)
    os.replace(tmp, path)


def train_light(data: BatchSource, cfg, spec: FeatureSpec, **kw) -> tuple[PreRanker, dict]:
    """Light model on every source, with the GHCL loss by default."""
    return train_model(data, cfg.light, cfg.light_loss, cfg.train, spec, **kw)


def train_expressive(data: BatchSource, cfg, spec: FeatureSpec, **kw) -> tuple[PreRanker, dict]:
    """Expressive model on the hard sources only: it never sees `prerank` or `global` rows."""
    return train_model(data.filter_sources(HARD_SOURCES), cfg.expressive, cfg.expressive_loss, cfg.train, spec, **kw)


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
