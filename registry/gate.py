"""Promotion gate: per-slice drops vs production and vs the first accepted run (TFX Evaluator
style), and rules that make routing earn its place.

Floors are relative — to production (paired-bootstrap intervals on the same held-out requests) or
to the first accepted run — apart from "better than chance" (AUC 0.5), so no number is tuned to one
world. Routing rules: the two-stage system must not be below the light model alone, and when it
routes (K > 0) the expressive model must not be below light on its own scope, both judged by the
paired 95% interval. The decision and every number behind it are written as JSON and Markdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hap.lineage import file_hash
from hap.workspace import write_json_atomic

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "configs" / "gate_policy.yaml"


@dataclass(frozen=True)
class Threshold:
    """One policy line. ``floor``/``max_drop`` for quality (higher is better), ``ceiling`` for cost
    (e.g. FLOPs/request: the compute budget). Unset bounds do not apply."""

    floor: float = -math.inf
    max_drop: float = math.inf
    max_drop_vs_first: float = math.inf  # vs the first accepted run's value (another day: no interval)
    ceiling: float = math.inf
    not_below_zero: bool = False  # a paired difference: fails when its 95% interval lies below 0
    when_routed: bool = False  # only judged when the run routes (K > 0): the expressive model serves
    min_examples: int = 0
    count: str = ""  # metric holding the slice's example count; default: `auc.` → `n.`

    def count_key(self, metric: str) -> str | None:
        if self.count or ".auc." in metric:
            return self.count or metric.replace(".auc.", ".n.")
        return None  # not a per-example metric (e.g. FLOPs/request)


@dataclass(frozen=True)
class Policy:
    """``significant_drops``: a drop beyond ``max_drop`` fails only when the paired-bootstrap 95%
    interval of (candidate − production) lies below zero, so sampling noise alone cannot block or
    flip a promotion. Without intervals (no bootstrap run) every drop beyond ``max_drop`` fails."""

    metrics: dict[str, Threshold]
    significant_drops: bool = True


def load_policy(path: str | Path | None = None) -> Policy:
    raw = yaml.safe_load(Path(path or DEFAULT_POLICY).read_text())
    metrics = {name: Threshold(**spec) for name, spec in raw["metrics"].items()}
    return Policy(metrics, bool(raw.get("significant_drops", True)))


def _check(
    value: float, prod: float | None, ci: list[float] | None, th: Threshold, policy: Policy,
    own_ci: list[float] | None = None, first: float | None = None,
) -> tuple[str, str]:  # fmt: skip
    if math.isnan(value):
        return "fail", "metric is undefined (NaN)"
    if value < th.floor:
        return "fail", f"{value:.4f} below floor {th.floor}"
    if value > th.ceiling:
        return "fail", f"{value:.4g} above budget {th.ceiling:.4g}"
    if th.not_below_zero:
        if own_ci is None:
            if value < 0:
                return "fail", f"{value:+.4f} below 0 (no interval)"
        elif own_ci[1] < 0:
            return "fail", f"{value:+.4f} below 0 beyond noise (95% CI {own_ci[0]:+.4f}..{own_ci[1]:+.4f})"
    if first is not None and not math.isnan(first) and first - value > th.max_drop_vs_first:
        return "fail", f"dropped {first - value:.4f} > {th.max_drop_vs_first} vs the first accepted run ({first:.4f})"
    if prod is None or math.isnan(prod) or prod - value <= th.max_drop:
        return "pass", ""
    drop = f"dropped {prod - value:.4f} > {th.max_drop} vs production"
    if policy.significant_drops and ci is not None:
        if ci[1] >= 0:
            return "pass", f"{drop}, within noise (95% CI of delta {ci[0]:+.4f}..{ci[1]:+.4f})"
        return "fail", f"{drop} (95% CI of delta {ci[0]:+.4f}..{ci[1]:+.4f})"
    return "fail", drop


def decide(
    candidate: dict[str, float],
    production: dict[str, float] | None,
    policy: Policy,
    intervals: dict[str, list[float]] | None = None,
    own_intervals: dict[str, list[float]] | None = None,
    first: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Check every policy metric; pass only if no counted slice fails.

    ``intervals``: 95% CIs of (candidate − production); ``own_intervals``: 95% CIs of the
    candidate's own paired differences (two-stage − light alone, expressive − light);
    ``first``: the first accepted run's metrics.
    """
    checks = []
    intervals, own_intervals = intervals or {}, own_intervals or {}
    routed = int(candidate.get("system.k", 1) or 0) > 0
    for metric, th in policy.metrics.items():
        value = candidate.get(metric, float("nan"))
        count_key = th.count_key(metric)
        examples = int(candidate.get(count_key, 0)) if count_key else None
        prod = production.get(metric) if production else None
        row: dict[str, Any] = {
            "metric": metric,
            "candidate": value,
            "production": prod,
            "delta": None if prod is None else value - prod,
            "delta_ci95": intervals.get(metric),
            "own_ci95": own_intervals.get(metric),
            "first": first.get(metric) if first else None,
            "floor": th.floor,
            "max_drop": th.max_drop,
            "ceiling": th.ceiling,
            "examples": examples,
        }
        if th.when_routed and not routed:
            row.update(status="skipped", why="K = 0: the expressive model does not serve")
        elif examples is not None and examples < th.min_examples:
            row.update(status="skipped", why=f"{examples} examples < {th.min_examples}")
        else:
            status, why = _check(
                value, prod, intervals.get(metric), th, policy, own_intervals.get(metric), row["first"]
            )
            row.update(status=status, why=why)
        checks.append(row)
    failed = [c for c in checks if c["status"] == "fail"]
    passed = not failed
    basis = "drops vs production" if production else "no production model yet"
    basis += ", vs the first accepted run" if first else ", first run (nothing accepted before)"
    basis += ", routing vs light alone"
    reason = f"all counted slices pass ({basis})" if passed else "; ".join(f"{c['metric']}: {c['why']}" for c in failed)
    return {"passed": passed, "reason": reason, "basis": basis, "checks": checks}


def report_markdown(decision: dict[str, Any], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"**Decision:** {'PASS' if decision['passed'] else 'FAIL'} — {decision['reason']}",
        "",
        "Candidate vs. production on the same held-out requests; the interval is the paired-bootstrap",
        "95% interval of the delta.",
        "",
        "| metric | candidate | own 95% CI | production | delta | delta 95% CI | first run | floor | max drop "
        "| budget | examples | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isinf(v)):
            return "—"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) >= 1000 else f"{v:.4f}"
        return str(v)

    def ci(v: Any) -> str:
        return f"{v[0]:+.4f}..{v[1]:+.4f}" if v else "—"

    for c in decision["checks"]:
        lines.append(
            f"| {c['metric']} | {fmt(c['candidate'])} | {ci(c.get('own_ci95'))} | {fmt(c['production'])} | "
            f"{fmt(c['delta'])} | {ci(c.get('delta_ci95'))} | {fmt(c.get('first'))} | {fmt(c['floor'])} | "
            f"{fmt(c['max_drop'])} | {fmt(c.get('ceiling'))} | {fmt(c['examples'])} | {c['status']} {c['why']} |"
        )
    routing = decision.get("routing")
    if routing:
        lines += ["", f"## Routing: K = {routing['k']} ({routing['view']} view, N = {routing['n']}, M = {routing['m']})",
                  "", routing["reason"], "",
                  "| K | system metric | lift vs light alone | lift 95% CI | FLOPs/request | share of uniform |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for row in routing["curve"]:
            share = row["flops_per_request"] / routing["uniform_expressive_flops"]
            lines.append(
                f"| {row['k']} | {row['value']:.4f} | {row['lift']:+.4f} | {ci(row['lift_ci95'])} | "
                f"{row['flops_per_request'] / 1e6:.2f} M | {share:.2f} |"
            )
        lines += ["", "The system metric is the share of the best possible expected clicks in the final top M "
                  "(serving view, simulation) or the recall of logged clicks in the top M of the logged candidates "
                  "(logged view: K and M act on ~35 logged items, not the ~10^3 a pre-ranker scores)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def gate_run(run_dir: str | Path, policy_path: str | Path | None = None) -> dict[str, Any]:
    """Decide on a training run's ``evaluation.json``; write ``decision.json`` and ``decision.md``."""
    import json

    run_dir = Path(run_dir)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    policy = load_policy(policy_path)
    decision = decide(
        evaluation["candidate"],
        evaluation["production"],
        policy,
        evaluation.get("delta_ci95"),
        evaluation.get("candidate_ci95"),
        evaluation.get("first_accepted", {}).get("metrics"),
    )
    decision["ds"] = evaluation["holdout"]["ds"]
    decision["routing"] = evaluation.get("routing")
    decision["production_version"] = evaluation.get("production_version")
    path = Path(policy_path or DEFAULT_POLICY)  # lineage: the exact rules this run was judged by
    decision["policy"] = {"path": str(path), "sha256": file_hash(path)}
    write_json_atomic(run_dir / "decision.json", decision)
    (run_dir / "decision.md").write_text(report_markdown(decision, f"Promotion gate, ds={decision['ds']}"))
    return decision
