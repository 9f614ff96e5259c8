"""GHCL and its baselines. Training code only; serving never imports this.

GHCL (gradient-harmonized contrastive learning): per request and per negative source, an
InfoNCE term of each exposed positive against that source's negatives, weighted per source, plus
pointwise BCE. Grouping by source keeps hard negatives from dominating the gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hap import SOURCES
from hap.config import LossConfig


def group_logsumexp(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """logsumexp of ``values`` (N,) per group id (N,) → (n_groups,), ``-inf`` for empty groups."""
    gmax = torch.full((n_groups,), float("-inf"), dtype=values.dtype, device=values.device)
    gmax = gmax.scatter_reduce(0, groups, values.detach(), reduce="amax")
    shift = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax))
    sums = torch.zeros_like(gmax).index_add(0, groups, torch.exp(values - shift[groups]))
    return torch.log(sums) + shift


def hap_loss(
    logits: torch.Tensor,  # (C,)
    label: torch.Tensor,  # (C,) in {0, 1}
    source: torch.Tensor,  # (C,) index into SOURCES
    req: torch.Tensor,  # (C,) batch-local request index
    n_requests: int,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (total loss, named parts). ``mode``: "ghcl", "softmax" (one group) or "bce"."""
    parts: dict[str, torch.Tensor] = {"bce": F.binary_cross_entropy_with_logits(logits, label)}
    total = cfg.bce_weight * parts["bce"]
    if cfg.mode == "bce":
        return total, parts
    if cfg.mode not in ("ghcl", "softmax"):
        raise ValueError(f"unknown loss mode {cfg.mode!r}")

    z = logits / cfg.temperature
    neg, pos = label == 0, label == 1
    n_pos = int(pos.sum())
    if n_pos == 0:
        return total, parts
    n_src = len(SOURCES) if cfg.mode == "ghcl" else 1
    group = req * n_src + (source if cfg.mode == "ghcl" else 0)
    lse = group_logsumexp(z[neg], group[neg], n_requests * n_src).view(n_requests, n_src)  # (R, S)
    lse_pos = lse[req[pos]]  # (P, S): each positive against each source's negatives of its request
    has_neg = torch.isfinite(lse_pos)
    # -log softmax of the positive among {positive} ∪ negatives = softplus(lse_neg - z_pos)
    terms = F.softplus(torch.where(has_neg, lse_pos, torch.zeros_like(lse_pos)) - z[pos].unsqueeze(1))
    terms = terms * has_neg  # (P, S)
    if cfg.mode == "ghcl":
        weights = torch.tensor([cfg.source_weights.get(s, 0.0) for s in SOURCES], dtype=z.dtype, device=z.device)
        for i, s in enumerate(SOURCES):
            parts[f"nce_{s}"] = terms[:, i].sum() / n_pos
        contrastive = (terms * weights).sum() / n_pos
    else:
        contrastive = terms.sum() / n_pos
    parts["contrastive"] = contrastive
    return total + contrastive, parts
