"""Evaluation of the two-stage system as it serves, and the choice of K.

Two held-out views of the run's day:

- **logged** (every dataset): the ~35 logged candidates of each held-out request, with their
  feedback. Slice AUCs live here, with the light model measured on the expressive model's own
  scope (positives + ``expose`` + ``rank``) beside the expressive model, so the two compare like
  for like. The system metric on this view (recall@M of clicks over logged candidates) is the only
  one a real log allows; its caveat: K and M act on ~35 logged items, not on the ~10^3 a pre-ranker
  sees, and items that were never logged cannot be judged.
- **serving** (simulation only, table ``eval_candidates``): every retrieved candidate (N ≈ 400) of
  each held-out request with its true click probability. The system metric is the share of the
  best possible expected clicks captured in the final top M: light scores all N, the expressive
  model re-scores the light top K. It is swept over a K grid at serving ratios (M < K < N).

Every compared figure carries a paired-bootstrap 95% interval over held-out requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hap import HARD_SOURCES, SOURCES
from hap.config import HapConfig
from hap.workspace import write_json_atomic
from hap_runtime.nets import load_model
from models.baselines import ITEM_RATE, baseline_scores, best_feature
from models.data import EncodedData
from models.metrics import flops_per_request, pair_metrics, paired_bootstrap, predict, slice_aucs
from models.prepare import HOLDOUT_DIR, MANIFEST_FILE, read_serving_set
from models.stream import read_raw_parts


def padded(values: np.ndarray, offsets: np.ndarray, fill: float) -> np.ndarray:
    """Candidates in CSR order (C,) → (R, N_max), ``fill`` where a request has fewer."""
    counts = np.diff(offsets)
    out = np.full((len(counts), int(counts.max(initial=0))), fill, dtype=np.float64)
    cols = np.arange(len(values)) - np.repeat(offsets[:-1], counts)
    out[np.repeat(np.arange(len(counts)), counts), cols] = values
    return out


def captured_share(light: np.ndarray, expr: np.ndarray, gain: np.ndarray, k: int, m: int) -> np.ndarray:
    """Per request (R,): the gain (p(click) or click) in the system's final top M over the best
    possible top M. Inputs are (R, N) with ``-inf`` scores and 0 gain on padding.

    The system: light scores all N; its top K are re-ordered by the expressive score and placed
    first; the rest follow in light order. K ≤ M cannot change the set, only its order.
    """
    r, n = light.shape
    m = min(m, n)
    order = np.argsort(-light, axis=1, kind="stable")  # light ranking
    if k > m:
        in_top_k = np.zeros_like(light, dtype=bool)
        np.put_along_axis(in_top_k, order[:, :k], True, axis=1)
        routed = np.where(in_top_k, expr, -np.inf)
        final = np.argsort(-routed, axis=1, kind="stable")[:, :m]  # the top M of the routed K
    else:
        final = order[:, :m]
    got = np.take_along_axis(gain, final, axis=1).sum(axis=1)
    best = -np.sort(-gain, axis=1)[:, :m].sum(axis=1)
    return np.where(best > 0, got / np.where(best > 0, best, 1.0), np.nan)


def bootstrap_mean_ci(diff: np.ndarray, n_boot: int, seed: int = 0) -> list[float]:
    """95% interval of the mean of per-request paired differences (requests resampled)."""
    diff = diff[~np.isnan(diff)]
    if len(diff) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def k_curve(
    light: np.ndarray, expr: np.ndarray, gain: np.ndarray, grid: tuple[int, ...], m: int, flops, n_boot: int
) -> list[dict]:
    """The system metric for each K of ``grid`` with its lift over light alone (K = 0) and that
    lift's paired 95% interval; ``flops(k)`` gives FLOPs per request at this N."""
    base = captured_share(light, expr, gain, 0, m)
    rows = []
    for i, k in enumerate(sorted(set(grid) | {0})):
        per_request = captured_share(light, expr, gain, k, m)
        diff = per_request - base
        rows.append(
            {
                "k": int(k),
                "value": float(np.nanmean(per_request)),
                "lift": float(np.nanmean(diff)),
                "lift_ci95": [0.0, 0.0] if k == 0 else bootstrap_mean_ci(diff, n_boot, seed=i),
                "flops_per_request": float(flops(k)),
            }
        )
    return rows


def choose_k(curve: list[dict], tolerance: float, max_flops_share: float, uniform_flops: float) -> dict:
    """K for serving: among the K whose lift over light alone is above zero beyond its 95% interval
    and whose FLOPs stay within ``max_flops_share`` of the uniform expressive model's, the smallest
    whose metric is within ``tolerance`` (relative) of the best of them. None qualifies → K = 0."""
    budget = max_flops_share * uniform_flops if max_flops_share > 0 else float("inf")
    helpful = [c for c in curve if c["k"] > 0 and c["lift_ci95"][0] > 0]
    affordable = [c for c in helpful if c["flops_per_request"] <= budget]
    if not helpful:
        return {"k": 0, "reason": "no K > 0 beats the light model alone beyond its 95% interval: light only"}
    if not affordable:
        return {"k": 0, "reason": f"every helpful K costs more than {max_flops_share:.0%} of the uniform expressive "
                                  "model's FLOPs: light only"}  # fmt: skip
    best = max(c["value"] for c in affordable)
    chosen = min((c for c in affordable if c["value"] >= best * (1 - tolerance)), key=lambda c: c["k"])
    return {
        "k": chosen["k"],
        "reason": f"smallest K within {tolerance:.0%} of the best system metric ({best:.4f}) among the K that beat "
        f"light alone beyond their interval and fit {max_flops_share:.0%} of uniform expressive FLOPs",
    }


@dataclass
class _Slices:
    label: np.ndarray
    source: np.ndarray


def slice_delta_intervals(
    s_a: np.ndarray, s_b: np.ndarray, data: EncodedData, sources: tuple[str, ...], n_boot: int, seed: int
) -> dict[str, list[float]]:
    """95% interval of slice AUC(a) − AUC(b) per ``auc.*`` key, both scored on the same resampled
    requests (paired bootstrap)."""
    keys = [k for k in slice_aucs(s_a, data, sources) if k.startswith("auc.")]
    rng = np.random.default_rng(seed)
    deltas: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n_boot):
        rows, _ = data.candidate_rows(np.sort(rng.integers(0, data.n_requests, data.n_requests)))
        sub = _Slices(data.label[rows], data.source[rows])  # slice AUCs need only labels and sources
        a, b = slice_aucs(s_a[rows], sub, sources), slice_aucs(s_b[rows], sub, sources)
        for k in keys:
            deltas[k].append(a[k] - b[k])
    return {k: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] for k, v in deltas.items()}


def same_scope_aucs(s_light: np.ndarray, s_expr: np.ndarray, data: EncodedData, n_boot: int) -> tuple[dict, dict]:
    """Light and expressive on the expressive model's scope (positives + hard negatives), their
    paired differences, and the differences' 95% intervals (requests resampled)."""
    light = slice_aucs(s_light, data, HARD_SOURCES)
    expr = slice_aucs(s_expr, data, HARD_SOURCES)
    metrics: dict[str, float] = {}
    keys = [k for k in expr if k.startswith("auc.")]
    for k in expr:
        metrics[f"light.hard.{k}"] = light[k]
        metrics[f"expressive.{k}"] = expr[k]
    for k in keys:
        metrics[f"expressive_vs_light.{k}"] = expr[k] - light[k]
        metrics[f"expressive_vs_light.{k.replace('auc.', 'n.')}"] = expr[k.replace("auc.", "n.")]
    ci = slice_delta_intervals(s_expr, s_light, data, HARD_SOURCES, n_boot, seed=1)
    return metrics, {f"expressive_vs_light.{k}": v for k, v in ci.items()}


def baseline_margins(
    s_light: np.ndarray, data: EncodedData, scores: dict[str, np.ndarray], n_boot: int
) -> tuple[dict, dict, dict]:
    """The light model against each baseline score (``models.baselines``) on the same candidates:
    every baseline's slice AUCs, and light − the best single feature per slice with its paired 95%
    interval (``light_vs_best_feature.*``, what the gate's baseline rule reads). A feature whose expose
    AUC is below 0.5 competes reversed (lower is better): the stricter baseline."""
    table, scores = {}, dict(scores)
    for name, score in list(scores.items()):
        aucs = slice_aucs(score, data)
        if name != ITEM_RATE and aucs["auc.expose"] < 0.5:  # a model may use a column either way round
            del scores[name]
            name, score = f"{name} (reversed)", np.where(np.isfinite(score), -score, -np.inf)
            scores[name], aucs = score, slice_aucs(score, data)
        table[name] = aucs
    best = best_feature(table)
    summary = {"best_feature": best, "aucs": table}
    if best is None:
        return {}, {}, summary
    light = slice_aucs(s_light, data)
    metrics: dict[str, float] = {}
    for k, v in light.items():
        metrics[f"light_vs_best_feature.{k}"] = v - table[best][k] if k.startswith("auc.") else v
    ci = slice_delta_intervals(s_light, scores[best], data, SOURCES, n_boot, seed=2)
    intervals = {f"light_vs_best_feature.{k}": v for k, v in ci.items()}
    summary["margin"] = {k: metrics[f"light_vs_best_feature.{k}"] for k in ci}
    summary["margin_ci95"] = ci
    return metrics, intervals, summary


def _score_top(light_model, expr_model, data: EncodedData, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Light scores for every candidate; expressive scores only for each request's light top
    ``top`` (the only ones any K of the grid routes), ``-inf`` elsewhere."""

    s_light = predict(light_model, data)
    s_expr = np.full(len(s_light), -np.inf)
    off = data.offsets
    keep = np.zeros(len(s_light), dtype=bool)
    for r in range(data.n_requests):
        lo, hi = off[r], off[r + 1]
        keep[lo + np.argsort(-s_light[lo:hi], kind="stable")[:top]] = True
    rows = np.flatnonzero(keep)
    if len(rows):
        s_expr[rows] = predict(expr_model, data.take_candidates(rows))
    return s_light, s_expr


def assess(
    light_model, expr_model, holdout: EncodedData, serving: EncodedData | None, cfg, k: int | None = None,
    baselines: dict[str, np.ndarray] | None = None,
):  # fmt: skip
    """Every figure the gate reads for one pair of models, their intervals, and the routing choice.

    ``k=None`` chooses K on the K grid (``cfg.eval.select_k``) — else ``k`` (production's own K, or
    ``routing.k`` when selection is off) is judged as is. Returns (metrics, intervals, routing,
    per-request system metric at the K served). ``baselines``: scores of the held-out candidates the
    light model must beat (``baseline_margins``; the summary is ``routing["baselines"]``).
    """

    ev = cfg.eval
    s_l, s_e = predict(light_model, holdout), predict(expr_model, holdout)
    metrics = {key.replace("system.", "logged."): v for key, v in pair_metrics(s_l, s_e, holdout, ev.k, ev.m).items()}
    scope, intervals = same_scope_aucs(s_l, s_e, holdout, ev.bootstrap)
    metrics.update(scope)
    summary = None
    if baselines:
        margins, margin_ci, summary = baseline_margins(s_l, holdout, baselines, ev.bootstrap)
        metrics.update(margins)
        intervals.update(margin_ci)

    served_k_only = k is not None  # a reference judged at the K it serves: no curve to draw, no K to choose
    if k is None and not ev.select_k:
        k = cfg.routing.k
    if serving is not None and serving.n_requests:
        view, data, m, grid = "serving", serving, cfg.routing.m, ev.k_grid
    else:
        view, data, m, grid = "logged", holdout, ev.m, ev.k_grid_logged
    off = data.offsets
    n = int(np.median(np.diff(off))) if data.n_requests else 0
    if served_k_only:
        grid = (min(k, n),)  # with light alone (K = 0), added by k_curve
    else:
        grid = tuple(sorted({g for g in grid if g < n} | ({min(k, n)} if k is not None else set())))
    top = max(grid, default=0)
    if view == "serving":
        light_s, expr_s = _score_top(light_model, expr_model, data, top)
    else:
        light_s, expr_s = s_l, s_e
    light_s, expr_s = padded(light_s, off, -np.inf), padded(expr_s, off, -np.inf)  # (R, N)
    gain = padded(data.label.astype(np.float64), off, 0.0)  # (R, N)

    def flops(kk: int) -> float:
        return flops_per_request(light_model, expr_model, n, kk)["total"]

    curve = k_curve(light_s, expr_s, gain, grid, m, flops, ev.bootstrap)
    uniform = flops_per_request(expr_model, None, n, 0)["total"]
    if k is None:
        choice = choose_k(curve, ev.k_tolerance, ev.max_flops_share, uniform)
    else:
        choice = {"k": min(k, n), "reason": "K as configured (selection off)" if not ev.select_k else "K as served"}
    row = next(c for c in curve if c["k"] == choice["k"])
    metrics.update({
        "system.view": view, "system.k": choice["k"], "system.m": m, "system.n": n,
        "system.value": row["value"], "system.light_value": curve[0]["value"], "system.lift": row["lift"],
        "system.n.requests": data.n_requests,
        "system.flops_per_request": row["flops_per_request"], "system.flops_share": row["flops_per_request"] / uniform,
    })  # fmt: skip
    intervals["system.lift"] = row["lift_ci95"]
    routing = {**choice, "view": view, "n": n, "m": m, "uniform_expressive_flops": uniform, "curve": curve,
               "baselines": summary}  # fmt: skip
    return metrics, intervals, routing, captured_share(light_s, expr_s, gain, choice["k"], m)


def load_pair(light_dir: Path, expressive_dir: Path):
    """A two-stage pair; both stages encode one request once, so they must share one fitted spec."""
    light, expressive = load_model(light_dir), load_model(expressive_dir)
    if light.spec != expressive.spec:
        raise ValueError(f"{light_dir} and {expressive_dir} were trained with different feature transforms")
    return light, expressive


def held_out_views(prepared: Path, spec, cfg: HapConfig):
    """The run day's held-out requests (logged view), their serving view (simulation only, else None)
    and their raw candidate rows, encoded with ``spec``: every model is judged through its own
    fitted transforms on the same rows in the same order, so comparisons stay paired."""
    holdout, raw = read_raw_parts(prepared / HOLDOUT_DIR, spec, cfg.label, cfg.eval.max_holdout_requests)
    return holdout, read_serving_set(prepared, holdout, spec), raw


def _reference_k(ref: Path, cfg: HapConfig) -> int:
    """The K a registered version serves: the one its own evaluation chose, else the configured one."""
    path = ref / "evaluation.json"
    k = json.loads(path.read_text()).get("routing", {}).get("k") if path.exists() else None
    return cfg.routing.k if k is None else int(k)


@dataclass
class _Candidate:
    """The candidate pair as evaluation scored it: what a replayed reference is compared with."""

    models: tuple
    holdout: EncodedData
    serving: EncodedData | None
    raw: object  # the held-out raw rows (pyarrow Table), for each model's own encoding
    per_request: np.ndarray  # the system metric per held-out request at the candidate's K


def replay(ref: Path, cand: _Candidate, prepared: Path, cfg: HapConfig) -> dict:
    """A registered version (production, or the first accepted one: the anchor) scored again on the
    run day's held-out requests, through its own fitted transforms and at its own K, and every
    difference with the candidate as a paired-bootstrap interval on the same requests. Its figures are
    never read from the record of the day it was trained on."""
    models = load_pair(ref / "light", ref / "expressive")
    if models[0].spec != cand.models[0].spec:  # the reference's own fitted transforms, on the same rows
        r_holdout, r_serving, _ = held_out_views(prepared, models[0].spec, cfg)
    else:
        r_holdout, r_serving = cand.holdout, cand.serving
    r_baselines = baseline_scores(cand.raw, models[0].spec, prepared)  # the same rows: the same scores
    metrics, _, _, per_request = assess(
        *models, r_holdout, r_serving, cfg, k=_reference_k(ref, cfg), baselines=r_baselines
    )
    deltas = paired_bootstrap(
        cand.models, models, cand.holdout, cfg.eval.k, cfg.eval.m, cfg.eval.bootstrap, production_data=r_holdout
    )
    deltas = {key.replace("system.", "logged."): v for key, v in deltas.items()}
    deltas["system.value"] = bootstrap_mean_ci(cand.per_request - per_request, cfg.eval.bootstrap)
    manifest = ref / "manifest.json"  # a registry version names itself; a bare model folder does not
    names = json.loads(manifest.read_text()) if manifest.exists() else {}
    return {"version": names.get("version"), "ds": names.get("ds"), "metrics": metrics, "delta_ci95": deltas}


def evaluate(
    prepared_dir: str, light_dir: str, expressive_dir: str, production_dir: str, cfg: HapConfig, out_path: str,
    anchor_dir: str = "",
) -> dict:  # fmt: skip
    """Score the candidate pair on the held-out requests of the run's day and choose its K
    (``models.evaluation``); replay production and the anchor (the first accepted version) on the same
    requests, each at its own K, with paired intervals of every difference (``replay``)."""
    prepared = Path(prepared_dir)
    light, expressive = load_pair(Path(light_dir), Path(expressive_dir))
    holdout, serving, raw = held_out_views(prepared, light.spec, cfg)
    baselines = baseline_scores(raw, light.spec, prepared)
    metrics, intervals, routing, per_request = assess(light, expressive, holdout, serving, cfg, baselines=baselines)
    baselines_summary = routing.pop("baselines")
    result = {
        "holdout": json.loads((prepared / MANIFEST_FILE).read_text()),
        "eval": {
            "k": cfg.eval.k,
            "m": cfg.eval.m,
            "view": routing["view"],
            "n": routing["n"],
            "m_serving": routing["m"],
        },
        "candidate": metrics,
        "candidate_ci95": intervals,
        "routing": routing,
        "baselines": baselines_summary,
        "production": None,
        "first_accepted": None,
    }
    cand = _Candidate((light, expressive), holdout, serving, raw, per_request)
    replayed: dict[Path, dict] = {}
    for key, ref in (("production", production_dir), ("first_accepted", anchor_dir)):
        if ref:
            ref = Path(ref).resolve()
            replayed[ref] = replayed.get(ref) or replay(ref, cand, prepared, cfg)  # the anchor may be production
            result[key] = replayed[ref]
    if result["production"] is not None:  # the gate's long-standing fields: production's figures and deltas
        result["delta_ci95"] = result["production"]["delta_ci95"]
        result["production"] = result["production"]["metrics"]
    write_json_atomic(Path(out_path), result)
    return result
