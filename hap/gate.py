"""Promotion gate: per-slice floors and largest allowed drops vs production (TFX Evaluator style).

The first model (no production yet) is judged on floors alone. The decision and every number
behind it are written as JSON and as a readable Markdown report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hap.workspace import write_json_atomic

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "configs" / "gate_policy.yaml"


@dataclass(frozen=True)
class Threshold:
    """One policy line. ``floor``/``max_drop`` for quality (higher is better), ``ceiling`` for cost
    (e.g. FLOPs/request: the compute budget). Unset bounds do not apply."""

    floor: float = -math.inf
    max_drop: float = math.inf
    ceiling: float = math.inf
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


def _check(value: float, prod: float | None, ci: list[float] | None, th: Threshold, policy: Policy) -> tuple[str, str]:
    if math.isnan(value):
        return "fail", "metric is undefined (NaN)"
    if value < th.floor:
        return "fail", f"{value:.4f} below floor {th.floor}"
    if value > th.ceiling:
        return "fail", f"{value:.4g} above budget {th.ceiling:.4g}"
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
) -> dict[str, Any]:
    """Check every policy metric; pass only if no counted slice fails."""
    checks = []
    intervals = intervals or {}
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
            "floor": th.floor,
            "max_drop": th.max_drop,
            "ceiling": th.ceiling,
            "examples": examples,
        }
        if examples is not None and examples < th.min_examples:
            row.update(status="skipped", why=f"{examples} examples < {th.min_examples}")
        else:
            status, why = _check(value, prod, intervals.get(metric), th, policy)
            row.update(status=status, why=why)
        checks.append(row)
    failed = [c for c in checks if c["status"] == "fail"]
    passed = not failed
    basis = "floors and drop vs production" if production else "floors only (no production model yet)"
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
        "| metric | candidate | production | delta | delta 95% CI | floor | max drop | budget | examples | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isinf(v)):
            return "—"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) >= 1000 else f"{v:.4f}"
        return str(v)

    for c in decision["checks"]:
        ci = c.get("delta_ci95")
        ci_text = f"{ci[0]:+.4f}..{ci[1]:+.4f}" if ci else "—"
        lines.append(
            f"| {c['metric']} | {fmt(c['candidate'])} | {fmt(c['production'])} | {fmt(c['delta'])} | {ci_text} | "
            f"{fmt(c['floor'])} | {fmt(c['max_drop'])} | {fmt(c.get('ceiling'))} | {fmt(c['examples'])} | "
            f"{c['status']} {c['why']} |"
        )
    return "\n".join(lines) + "\n"


def gate_run(run_dir: str | Path, policy_path: str | Path | None = None) -> dict[str, Any]:
    """Decide on a training run's ``evaluation.json``; write ``decision.json`` and ``decision.md``."""
    import json

    run_dir = Path(run_dir)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    policy = load_policy(policy_path)
    decision = decide(evaluation["candidate"], evaluation["production"], policy, evaluation.get("delta_ci95"))
    decision["ds"] = evaluation["holdout"]["ds"]
    decision["production_version"] = evaluation.get("production_version")
    write_json_atomic(run_dir / "decision.json", decision)
    (run_dir / "decision.md").write_text(report_markdown(decision, f"Promotion gate, ds={decision['ds']}"))
    return decision
