"""Offline metrics by difficulty slice, and the two-stage system's recall@M."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from hap import SOURCES
from models.data import EncodedData
from models.nets import PreRanker


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney AUC with tie handling; NaN when a class is missing."""
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels > 0].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def slice_aucs(scores: np.ndarray, data: EncodedData, sources: tuple[str, ...] = SOURCES) -> dict[str, float]:
    """AUC of positives vs the negatives of each source, plus overall; ``n.*`` = examples per slice."""
    pos = data.label > 0
    out: dict[str, float] = {}
    in_scope = pos | np.isin(data.source, [SOURCES.index(s) for s in sources])
    out["auc.overall"] = auc(scores[in_scope], data.label[in_scope])
    out["n.overall"] = int(in_scope.sum())
    for s in sources:
        m = pos | ((data.source == SOURCES.index(s)) & ~pos)
        out[f"auc.{s}"] = auc(scores[m], data.label[m])
        out[f"n.{s}"] = int(m.sum())
    return out


@torch.inference_mode()
def predict(model: PreRanker, data: EncodedData, batch_requests: int = 512) -> np.ndarray:
    """Logits for every candidate of ``data``, in its order."""
    model.eval()
    out = []
    for b in data.batches(batch_requests):
        out.append(model(b.user_x, b.seq, b.item_x, b.req).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def two_stage_recall(light: np.ndarray, expressive: np.ndarray, data: EncodedData, k: int, m: int) -> dict[str, float]:
    """Recall of positives in the final top-M: light scores all, expressive re-orders the light top-K.

    Also reports the light model alone (K = 0) for comparison. Requests without positives are skipped.
    """
    off = data.offsets
    two_stage, light_only = [], []
    for r in range(data.n_requests):
        lo, hi = off[r], off[r + 1]
        y = data.label[lo:hi]
        if y.sum() == 0:
            continue
        top_k = np.argsort(-light[lo:hi], kind="stable")[:k]
        final = top_k[np.argsort(-expressive[lo:hi][top_k], kind="stable")][:m]
        two_stage.append(y[final].sum() / y.sum())
        light_only.append(y[np.argsort(-light[lo:hi], kind="stable")[:m]].sum() / y.sum())
    return {
        "recall_at_m": float(np.mean(two_stage)) if two_stage else float("nan"),
        "light_recall_at_m": float(np.mean(light_only)) if light_only else float("nan"),
        "n.requests": len(two_stage),
    }


def evaluate_pair(light: PreRanker, expressive: PreRanker, data: EncodedData, k: int, m: int) -> dict[str, float]:
    """Flat metric names the gate policy refers to: ``light.auc.rank``, ``system.recall_at_m`` …"""
    s_light, s_expr = predict(light, data), predict(expressive, data)
    metrics: dict[str, float] = {}
    metrics.update({f"light.{k_}": v for k_, v in slice_aucs(s_light, data).items()})
    hard = ("expose", "rank")
    metrics.update({f"expressive.{k_}": v for k_, v in slice_aucs(s_expr, data, hard).items()})
    metrics.update({f"system.{k_}": v for k_, v in two_stage_recall(s_light, s_expr, data, k, m).items()})
    return metrics
