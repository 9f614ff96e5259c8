"""Training of the light model (all sources) and the expressive model (hard sources only)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from hap import SOURCES
from hap.config import LossConfig, TrainConfig
from hap.progress import progress
from hap_runtime.config import ModelConfig
from hap_runtime.nets import Ensemble, Model, PreRanker
from hap_runtime.spec import FeatureSpec
from models.data import Batch, EncodedData
from models.distributed import DistContext, all_sum, barrier, pick_device
from models.losses import hap_loss
from models.metrics import predict, slice_aucs

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """In-memory ``EncodedData`` or streamed ``ShardStream``: one epoch of this rank's batches."""

    def epoch(self, epoch: int, batch_requests: int, rank: int, world: int, seed: int) -> Iterator[Batch]: ...

    def filter_sources(self, sources: Sequence[str]) -> BatchSource: ...


def checkpoint_files(checkpoint: Path, members: int) -> list[Path]:
    """Where a model of ``members`` networks keeps its checkpoints: ``checkpoint`` itself for one,
    ``<checkpoint>.member<i>`` for each member of an ensemble."""
    if members == 1:
        return [checkpoint]
    return [checkpoint.with_name(f"{checkpoint.name}.member{i}") for i in range(members)]


def train_model(
    data: BatchSource,
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    train_cfg: TrainConfig,
    spec: FeatureSpec,
    ctx: DistContext | None = None,
    checkpoint: Path | None = None,
    valid: EncodedData | None = None,
    init: Model | None = None,
    name: str = "",
) -> tuple[Model, dict]:
    """Train one model from scratch (or from ``checkpoint``), deterministically for a given seed.

    With ``ctx.world > 1`` the model is wrapped in DDP: each rank trains on its own request batches
    and gradients are averaged. Rank 0 writes ``checkpoint`` after every epoch; a restarted job
    resumes after the last completed epoch. With ``valid`` (held-out requests, already restricted to
    the model's sources) every epoch is scored by its mean slice AUC; the best epoch's weights are
    kept and training stops after ``patience`` epochs without improvement. ``init`` warm-starts the
    parameters whose names and shapes match. ``name`` (light / expressive) labels the progress of
    each epoch (``hap.progress``: rank 0's batches, loss and samples/s). Returns (model, history).

    An ensemble (``model_cfg.members`` = K > 1) is K networks trained one after another by this
    function, member i exactly as one network with seed ``seed + i`` (its own random start, batch
    order and best epoch; its own checkpoint, ``checkpoint_files``), returned as one ``Ensemble``;
    its history is member 0's plus ``members``, each one's.
    """
    if model_cfg.members > 1:
        one, k = dataclasses.replace(model_cfg, members=1), model_cfg.members
        trained = [
            train_model(
                data,
                one,
                loss_cfg,
                dataclasses.replace(train_cfg, seed=train_cfg.seed + i),
                spec,
                ctx,
                checkpoint and checkpoint_files(checkpoint, k)[i],
                valid,
                init,
                f"{name} member {i + 1}/{k}".strip(),
            )
            for i in range(k)
        ]
        ensemble = Ensemble(model_cfg, spec).to(next(trained[0][0].parameters()).device)
        for member, (net, _) in zip(ensemble.members, trained, strict=True):
            member.load_state_dict(net.state_dict())
        seconds = sum(h["seconds"] for _, h in trained)
        return ensemble.eval(), {**trained[0][1], "members": [h for _, h in trained], "seconds": seconds}

    ctx = ctx or DistContext(device=pick_device(train_cfg.device, 0))
    device = torch.device(ctx.device)
    torch.manual_seed(train_cfg.seed)
    # Reproducible weights for a seed (CUDA kernels only warn). Not bit-exact in every fresh process
    # (a float sum's last bit, seen about once in 20 runs), so a day's rerun keeps its trained
    # models rather than training again (workflow.flow.train): one day, one registry version.
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.set_num_threads(max(1, train_cfg.threads // ctx.local_world))  # ranks on one machine share its cores
    model = PreRanker(model_cfg, spec).to(device)
    history: dict = {"epochs": [], "grad_monitor": [], "world_size": ctx.world, "device": ctx.device, "resumed": []}
    history["warm_start"] = warm_start(model, init) if init is not None else []
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    first_epoch = 0
    best: dict[str, torch.Tensor] | None = None
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        best = state.get("best")
        first_epoch = int(state["epoch"]) + 1
        history = json.loads(state["history"])
        history["resumed"].append(first_epoch)
        log.warning("resuming from %s after epoch %d", checkpoint, first_epoch - 1)
    shared = dense_parameters(model)
    harmonize = loss_cfg.harmonize != "none"
    if harmonize and (loss_cfg.harmonize != "norm" or loss_cfg.mode != "ghcl"):
        raise ValueError(f"harmonize={loss_cfg.harmonize!r} needs harmonize='norm' and mode='ghcl'")
    net = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if ctx.distributed
        else model
    )
    monitor = train_cfg.monitor_every if not ctx.distributed else 0  # autograd.grad probes bypass DDP's reducer
    step = sum(e["steps"] for e in history["epochs"])
    n_req = getattr(data, "n_requests", 0)  # batches per epoch: exact for one rank, an estimate for DDP
    per_epoch = math.ceil(n_req / (max(1, train_cfg.batch_requests // ctx.world) * ctx.world)) if n_req else None
    what = f"train {name}" if name else "train"
    start = time.perf_counter()
    for epoch in range(first_epoch, train_cfg.epochs):
        if stopped(history, train_cfg.patience):
            break
        net.train()
        sums: dict[str, float] = {}
        n_batches = n_samples = n_requests = 0
        data_s = compute_s = 0.0
        t0 = time.perf_counter()
        batches = data.epoch(epoch, train_cfg.batch_requests, ctx.rank, ctx.world, train_cfg.seed)
        desc = f"{what} epoch {epoch + 1}/{train_cfg.epochs}"
        with progress(total=per_epoch, desc=desc, unit="batch", enabled=ctx.is_main) as bar:
            while True:
                t_data = time.perf_counter()
                b = next(batches, None)
                data_s += time.perf_counter() - t_data
                if b is None:
                    break
                t_compute = time.perf_counter()
                b = b.to(device)
                logits = net(b.user_x, b.seq, b.item_x, b.req)  # (C,)
                loss, parts = hap_loss(logits, b, loss_cfg)
                if harmonize:
                    loss, scales = harmonized_loss(parts, shared, loss_cfg)
                    for k, v in scales.items():
                        sums[f"harmony_{k}"] = sums.get(f"harmony_{k}", 0.0) + v
                if monitor and step % monitor == 0:
                    history["grad_monitor"].append(
                        {"step": step, **source_gradient_conflict(model, logits, b, loss_cfg)}
                    )
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
                bar.update(  # this rank's epoch so far: mean loss, samples/s
                    1, loss=sums["loss"] / n_batches, samples_per_s=n_samples / (time.perf_counter() - t0)
                )
        elapsed = time.perf_counter() - t0
        total_samples, total_requests = all_sum(ctx, [n_samples, n_requests])
        row = {k: v / max(n_batches, 1) for k, v in sums.items()}
        row.update(epoch=epoch, seconds=elapsed, data_seconds=data_s, compute_seconds=compute_s, steps=n_batches)
        row.update(samples=int(total_samples), requests=int(total_requests))
        row["samples_per_s"] = total_samples / max(elapsed, 1e-9)
        history["epochs"].append(row)
        history["samples"], history["requests"] = int(total_samples), int(total_requests)
        if valid is not None:  # every rank holds the same weights and data: the same decision
            row["valid_auc"] = validation_score(model, valid)
            if best is None or row["valid_auc"] > history.get("best_valid_auc", -1.0):
                history["best_epoch"], history["best_valid_auc"] = epoch, row["valid_auc"]
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log.info("epoch %d loss %.4f valid AUC %s (%.0f samples/s)", epoch, row.get("loss", float("nan")),
                 row.get("valid_auc", "—"), row["samples_per_s"])  # fmt: skip
        if checkpoint is not None and ctx.is_main:
            save_checkpoint(checkpoint, epoch, model, opt, history, best)
        barrier(ctx)
    if best is not None:
        model.load_state_dict(best)
    history["seconds"] = time.perf_counter() - start
    return model.eval(), history


def stopped(history: dict, patience: int) -> bool:
    """Early stopping: ``patience`` epochs have passed since the best validation score."""
    if "best_epoch" not in history or not history["epochs"]:
        return False
    return history["epochs"][-1]["epoch"] - history["best_epoch"] >= patience


def validation_score(model: Model, valid: EncodedData) -> float:
    """Mean over the sources present of the AUC of positives vs that source's negatives."""
    present = tuple(s for i, s in enumerate(SOURCES) if bool((valid.source == i).any()))
    aucs = slice_aucs(predict(model, valid), valid, present)
    values = [aucs[f"auc.{s}"] for s in present if not np.isnan(aucs[f"auc.{s}"])]
    return float(np.mean(values)) if values else float("nan")


def dense_parameters(model: Model) -> list[torch.nn.Parameter]:
    """Every parameter but the embedding tables: the layers all sources' gradients meet in."""
    return [p for n, p in model.named_parameters() if "embeddings" not in n.split(".")]


def warm_start(model: PreRanker, init: Model) -> list[str]:
    """Copy every parameter of ``init`` whose name and shape ``model`` shares (embeddings, towers);
    the rest (attention, the deeper MLP, the head) keep their fresh initialisation, and so do numeric
    tables embedded another way (bucket rows vs cumulative steps). An ensemble ``init`` lends its
    first member (``model`` is one network: ensembles train member by member)."""
    if isinstance(init, Ensemble):
        init = init.members[0]
    own, src = model.state_dict(), init.state_dict()
    # a numeric table's rows mean buckets or cumulative steps (ModelConfig.numeric): copy only like for like
    numeric = {f"embeddings.tables.{f.name}.weight" for f in init.spec.features if f.kind == "bucket"}
    skip = numeric if model.cfg.numeric != init.cfg.numeric else set()
    copied = [k for k, v in src.items() if k in own and own[k].shape == v.shape and k not in skip
              and not k.startswith(("mlp.", "head."))]  # fmt: skip
    model.load_state_dict({**own, **{k: src[k].detach().clone() for k in copied}})
    return copied


def harmonized_loss(
    parts: dict[str, torch.Tensor], shared: list[torch.nn.Parameter], cfg: LossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """GHCL's gradient harmonization: each source's InfoNCE term is rescaled (scale held constant)
    so that its gradient on the shared layers has the mean norm of the sources' gradients; a hard
    source with large gradients no longer drowns the easy ones. Costs one extra backward per source."""
    total = cfg.bce_weight * parts["bce"]  # plus the hybrid loss's listwise terms, never harmonized
    total = total + cfg.listwise_weight * parts.get("listwise", 0.0) + cfg.distill_weight * parts.get("distill", 0.0)
    norms: dict[str, torch.Tensor] = {}
    for s in SOURCES:
        term = parts.get(f"nce_{s}")
        if term is None or cfg.source_weights.get(s, 0.0) == 0.0 or not term.requires_grad:
            continue
        grads = torch.autograd.grad(term, shared, retain_graph=True, allow_unused=True)
        norm = torch.sqrt(sum((g * g).sum() for g in grads if g is not None))
        if float(norm) > 0:
            norms[s] = norm.detach()
    if not norms:
        return total + parts.get("contrastive", 0.0), {}
    mean = torch.stack(list(norms.values())).mean()
    scales = {s: mean / n for s, n in norms.items()}
    for s, scale in scales.items():
        total = total + cfg.source_weights[s] * scale * parts[f"nce_{s}"]
    return total, {s: float(v) for s, v in scales.items()}


def save_checkpoint(
    path: Path,
    epoch: int,
    model: Model,
    opt: torch.optim.Optimizer,
    history: dict,
    best: dict | None = None,
) -> None:
    """Atomically (temp file + rename): a worker killed mid-write leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict()}
    if best is not None:
        state["best"] = best
    torch.save({**state, "history": json.dumps(history)}, tmp)
    os.replace(tmp, path)


def train_light(data: BatchSource, cfg, spec: FeatureSpec, **kw) -> tuple[Model, dict]:
    """Light model on every source, with the GHCL loss by default."""
    return train_model(data, cfg.light, cfg.light_loss, cfg.train, spec, name="light", **kw)


def train_expressive(
    data: BatchSource, cfg, spec: FeatureSpec, light: Model | None = None, valid: EncodedData | None = None, **kw
) -> tuple[Model, dict]:
    """Expressive model on ``cfg.expressive_recipe.sources`` (by default the hard ones only: it never
    sees `prerank` or `global` rows), warm-started from ``light`` when the recipe says so."""
    recipe = cfg.expressive_recipe
    if recipe.init not in ("light", "cold"):
        raise ValueError(f"expressive_recipe.init must be 'light' or 'cold', got {recipe.init!r}")
    if recipe.init == "light" and light is None:
        raise ValueError("expressive_recipe.init='light' needs the same day's light model")
    sources = tuple(recipe.sources)
    init = light if recipe.init == "light" else None
    if valid is not None:
        valid = valid.filter_sources(sources)
    return train_model(
        data.filter_sources(sources),
        cfg.expressive,
        cfg.expressive_loss,
        cfg.train,
        spec,
        valid=valid,
        init=init,
        name="expressive",
        **kw,
    )


def source_gradient_conflict(model: Model, logits: torch.Tensor, b: Batch, loss_cfg: LossConfig) -> dict:
    """Each source's contrastive gradient on the shared dense parameters: norms and pairwise cosines.

    This is the paper's central claim made visible: mixed negatives pull the shared layers in
    different directions, and hard sources' gradients dominate the easy ones' in norm.
    """
    probe = LossConfig(mode="ghcl", temperature=loss_cfg.temperature, bce_weight=0.0)
    _, parts = hap_loss(logits, b, probe)
    shared = dense_parameters(model)
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
