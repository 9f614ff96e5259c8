"""GHCL, its baselines and RankTower's listwise terms. Training code only; serving never imports this.

GHCL (gradient-harmonized contrastive learning): per request and per negative source, an
InfoNCE term of each exposed positive against that source's negatives, weighted per source, plus
pointwise BCE. Grouping by source keeps hard negatives from dominating the gradient.

RankTower's hybrid loss adds, each with its own weight (``LossConfig``): a fine-grained listwise
term over each request's exposed items with graded labels (click, like, comment, long view), and a
distillation term that teaches the logged ranking stage's order over the items it ranked; the
stage-level (coarse-grained) part is the contrastive term above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hap import SOURCES
from hap.config import LossConfig
from models.data import Batch


def group_logsumexp(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """logsumexp of ``values`` (N,) per group id (N,) → (n_groups,), ``-inf`` for empty groups."""
    gmax = torch.full((n_groups,), float("-inf"), dtype=values.dtype, device=values.device)
    gmax = gmax.scatter_reduce(0, groups, values.detach(), reduce="amax")
    shift = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax))
    sums = torch.zeros_like(gmax).index_add(0, groups, torch.exp(values - shift[groups]))
    return torch.log(sums) + shift


def hap_loss(logits: torch.Tensor, b: Batch, cfg: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (total loss, named parts) of ``logits`` (C,) for batch ``b``. ``mode``: "ghcl",
    "softmax" (one group) or "bce"; the listwise and distillation terms join with their weights."""
    total, parts = _pointwise_and_contrastive(logits, b.label, b.source, b.req, b.n_requests, cfg)
    if cfg.listwise_weight > 0:
        parts["listwise"] = graded_listwise(logits, b.grade, b.source == EXPOSE, b.req, b.n_requests)
        total = total + cfg.listwise_weight * parts["listwise"]
    if cfg.distill_weight > 0:
        parts["distill"] = distillation(logits, b.teacher, b.req, b.n_requests, cfg.distill_temperature)
        total = total + cfg.distill_weight * parts["distill"]
    return total, parts


EXPOSE = SOURCES.index("expose")


def _pointwise_and_contrastive(
    logits: torch.Tensor,  # (C,)
    label: torch.Tensor,  # (C,) in {0, 1}
    source: torch.Tensor,  # (C,) index into SOURCES
    req: torch.Tensor,  # (C,) batch-local request index
    n_requests: int,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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


def listwise_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, req: torch.Tensor, n_requests: int
) -> torch.Tensor:
    """Mean over requests of −Σ_i p_i log softmax(logits)_i within each request, where ``target``
    (C,) ≥ 0 are unnormalized p; requests whose targets sum to 0 are left out (0 if none is left)."""
    mass = torch.zeros(n_requests, dtype=logits.dtype, device=logits.device).index_add(0, req, target)  # (R,)
    log_p = logits - group_logsumexp(logits, req, n_requests)[req]  # (C,) log softmax per request
    per_request = torch.zeros_like(mass).index_add(0, req, -target * log_p) / mass.clamp(min=1e-12)  # (R,)
    used = mass > 0
    return per_request[used].mean() if bool(used.any()) else logits.sum() * 0.0


def graded_listwise(
    logits: torch.Tensor, grade: torch.Tensor, exposed: torch.Tensor, req: torch.Tensor, n_requests: int
) -> torch.Tensor:
    """Fine-grained listwise term over each request's exposed items: the softmax of their scores
    against the gain distribution 2^grade − 1 (a like or a long view counts beyond a click)."""
    return listwise_cross_entropy(logits[exposed], torch.exp2(grade[exposed]) - 1.0, req[exposed], n_requests)


def distillation(
    logits: torch.Tensor, teacher: torch.Tensor, req: torch.Tensor, n_requests: int, temperature: float
) -> torch.Tensor:
    """Listwise distillation from the logged ranking stage: over the items it ranked (a finite
    position), the student's softmax against the teacher's softmax(−log position / temperature).
    A request with a single ranked item teaches nothing and is left out."""
    seen = torch.isfinite(teacher)
    z, pos, r = logits[seen], teacher[seen].clamp(min=1.0), req[seen]
    t = -torch.log(pos) / temperature  # (S,) the teacher's logits: position 1 highest
    p = torch.exp(t - group_logsumexp(t, r, n_requests)[r])  # (S,) the teacher's distribution
    counts = torch.zeros(n_requests, dtype=z.dtype, device=z.device).index_add(0, r, torch.ones_like(z))
    return listwise_cross_entropy(z, p * (counts[r] > 1), r, n_requests)
