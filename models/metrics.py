"""Offline metrics by difficulty slice, and the two-stage system's recall@M."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from hap import HARD_SOURCES, SOURCES
from hap_runtime.nets import PreRanker
from models.data import EncodedData


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
def predict(model: PreRanker, data: EncodedData, max_candidates: int = 16_384) -> np.ndarray:
    """Logits for every candidate of ``data``, in its order, in batches of whole requests holding
    about ``max_candidates`` candidates (target attention holds candidates × history in memory)."""
    model.eval()
    out = []
    per_request = max(1.0, len(data.label) / max(data.n_requests, 1))
    budget = max_candidates // 8 if model.attention is not None else max_candidates
    for b in data.batches(max(1, int(budget / per_request))):
        out.append(model(b.user_x, b.seq, b.item_x, b.req).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def gauc(scores: np.ndarray, data: EncodedData) -> float:
    """Per-request AUC averaged with weights = candidates per request (requests with both classes)."""
    off = data.offsets
    total, weight = 0.0, 0
    for r in range(data.n_requests):
        lo, hi = off[r], off[r + 1]
        y = data.label[lo:hi]
        if 0 < y.sum() < len(y):
            total += auc(scores[lo:hi], y) * (hi - lo)
            weight += hi - lo
    return total / weight if weight else float("nan")


def _ndcg(ranked_labels: np.ndarray, n_pos: int, m: int) -> float:
    """Binary-relevance NDCG@M of one ranked list."""
    top = ranked_labels[:m]
    discounts = 1.0 / np.log2(np.arange(2, m + 2))
    return float((top * discounts[: len(top)]).sum() / discounts[: min(n_pos, m)].sum())


def ranking_at(scores: np.ndarray, data: EncodedData, at: int) -> tuple[np.ndarray, np.ndarray]:
    """Per request (R,): Recall@``at`` and NDCG@``at`` of its clicked items among its candidates
    ranked by ``scores`` (RankTower's metrics); NaN for a request without a click."""
    off = data.offsets
    recall, ndcg = np.full(data.n_requests, np.nan), np.full(data.n_requests, np.nan)
    for r in range(data.n_requests):
        y = data.label[off[r] : off[r + 1]]
        n_pos = int(y.sum())
        if n_pos:
            ranked = y[np.argsort(-scores[off[r] : off[r + 1]], kind="stable")]
            recall[r], ndcg[r] = ranked[:at].sum() / n_pos, _ndcg(ranked, n_pos, at)
    return recall, ndcg


def two_stage_recall(light: np.ndarray, expressive: np.ndarray, data: EncodedData, k: int, m: int) -> dict[str, float]:
    """Recall and NDCG of positives in the final top-M: light scores all, expressive re-orders the
    light top-K. Also reports the light model alone (K = 0). Requests without positives are skipped."""
    off = data.offsets
    rec, ndcg, light_rec, light_ndcg = [], [], [], []
    for r in range(data.n_requests):
        lo, hi = off[r], off[r + 1]
        y = data.label[lo:hi]
        n_pos = int(y.sum())
        if n_pos == 0:
            continue
        light_order = np.argsort(-light[lo:hi], kind="stable")
        top_k = light_order[:k]
        final = np.concatenate([top_k[np.argsort(-expressive[lo:hi][top_k], kind="stable")], light_order[k:]])
        rec.append(y[final[:m]].sum() / n_pos)
        ndcg.append(_ndcg(y[final], n_pos, m))
        light_rec.append(y[light_order[:m]].sum() / n_pos)
        light_ndcg.append(_ndcg(y[light_order], n_pos, m))

    def mean(v: list) -> float:
        return float(np.mean(v)) if v else float("nan")

    return {
        "recall_at_m": mean(rec),
        "ndcg_at_m": mean(ndcg),
        "light_recall_at_m": mean(light_rec),
        "light_ndcg_at_m": mean(light_ndcg),
        "n.requests": len(rec),
    }


def flops_per_request(light: PreRanker, expressive: PreRanker | None, n: int, k: int) -> dict[str, float]:
    """FLOPs of one request counted by torch: light on N candidates (user side once) + expressive on K."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(model: PreRanker, n_items: int) -> int:
        user_x = torch.ones((1, len(model.user_feats)), dtype=torch.long)
        seq = torch.arange(1, model.spec.sequence.max_len + 1).unsqueeze(0)  # a full-length history
        item_x = torch.ones((n_items, len(model.item_feats)), dtype=torch.long)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(user_x, seq, item_x, torch.zeros(n_items, dtype=torch.long))
        return counter.get_total_flops()

    light_f = count(light, n)
    expr_f = count(expressive, k) if expressive is not None and k > 0 else 0
    return {"light": float(light_f), "expressive": float(expr_f), "total": float(light_f + expr_f)}


def evaluate_pair(light: PreRanker, expressive: PreRanker, data: EncodedData, k: int, m: int) -> dict[str, float]:
    """Flat metric names the gate policy refers to: ``light.auc.rank``, ``system.recall_at_m`` …"""
    return pair_metrics(predict(light, data), predict(expressive, data), data, k, m)


def pair_metrics(s_light: np.ndarray, s_expr: np.ndarray, data: EncodedData, k: int, m: int) -> dict[str, float]:
    metrics: dict[str, float] = {}
    metrics.update({f"light.{k_}": v for k_, v in slice_aucs(s_light, data).items()})
    metrics["light.gauc"] = gauc(s_light, data)
    metrics.update({f"expressive.{k_}": v for k_, v in slice_aucs(s_expr, data, HARD_SOURCES).items()})
    metrics.update({f"system.{k_}": v for k_, v in two_stage_recall(s_light, s_expr, data, k, m).items()})
    return metrics


def paired_bootstrap(
    candidate: tuple[PreRanker, PreRanker],
    production: tuple[PreRanker, PreRanker],
    data: EncodedData,
    k: int,
    m: int,
    n_boot: int = 100,
    seed: int = 0,
    production_data: EncodedData | None = None,
) -> dict[str, list[float]]:
    """95% interval of (candidate − production) per metric, resampling held-out *requests* with
    replacement; both models see the same resample, so their shared noise cancels.

    Why: with a few hundred held-out requests a slice AUC moves by ±0.02 from sampling alone, which
    is the size of the drops the gate guards against. Only AUC slices and recall are resampled.
    ``production_data``: the same requests and candidates encoded with production's own fitted spec
    (``models.transforms``), when it differs from the candidate's.
    """
    c_light, c_expr = predict(candidate[0], data), predict(candidate[1], data)
    p_data = data if production_data is None else production_data
    p_light, p_expr = predict(production[0], p_data), predict(production[1], p_data)
    rng = np.random.default_rng(seed)
    deltas: dict[str, list[float]] = {}
    for _ in range(n_boot):
        reqs = np.sort(rng.integers(0, data.n_requests, data.n_requests))
        rows, _ = data.candidate_rows(reqs)
        sub = data.select_requests(reqs)  # the same rows, re-indexed
        cand = _bootstrapped(c_light[rows], c_expr[rows], sub, k, m)
        prod = _bootstrapped(p_light[rows], p_expr[rows], sub, k, m)
        for name, value in cand.items():
            deltas.setdefault(name, []).append(value - prod[name])
    return {name: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] for name, v in deltas.items()}


def _bootstrapped(s_light: np.ndarray, s_expr: np.ndarray, data: EncodedData, k: int, m: int) -> dict[str, float]:
    out = {f"light.{k_}": v for k_, v in slice_aucs(s_light, data).items() if k_.startswith("auc.")}
    out.update(
        {f"expressive.{k_}": v for k_, v in slice_aucs(s_expr, data, HARD_SOURCES).items() if k_.startswith("auc.")}
    )
    out["system.recall_at_m"] = two_stage_recall(s_light, s_expr, data, k, m)["recall_at_m"]
    return out
