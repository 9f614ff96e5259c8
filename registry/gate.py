"""Promotion gate: per-slice drops vs production and vs the first accepted version (the anchor),
both replayed on today's held-out requests (TFX Evaluator style), and rules that make routing earn
its place.

Every comparison is paired: production's and the anchor's models are scored on the candidate's own
held-out requests (``models.evaluation.replay``), and a drop beyond its limit fails only when the
paired-bootstrap 95% interval of the difference lies below zero. No rule compares figures computed on
other requests or days. Floors are relative apart from "better than chance" (AUC 0.5), so no number
is tuned to one world. Each rule has a role: the hard slices and the system metric ``decide`` with
tight limits; the easy slices are ``sanity`` floors with wide ones. Routing rules: the two-stage system
must not be below the light model alone, and when it routes (K > 0) the expressive model must not be
below light on its own scope. The decision, every number behind it and the policy's reasoning are
written as JSON and Markdown.
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
ROLES = {
    "decides": "decides: judged with tight limits",
    "sanity": "sanity floor: fails only on a large, significant drop",
}


@dataclass(frozen=True)
class Threshold:
    """One policy line. ``floor``/``max_drop`` for quality (higher is better), ``ceiling`` for cost
    (e.g. FLOPs/request: the compute budget). Unset bounds do not apply."""

    floor: float = -math.inf
    max_drop: float = math.inf
    max_drop_vs_first: float = math.inf  # vs the first accepted version, replayed on today's requests
    ceiling: float = math.inf
    not_below_zero: bool = False  # a paired difference: fails when its 95% interval lies below 0
    when_routed: bool = False  # only judged when the run routes (K > 0): the expressive model serves
    min_examples: int = 0
    count: str = ""  # metric holding the slice's example count; default: `auc.` → `n.`
    role: str = "decides"  # "decides" (tight limits) or "sanity" (an easy slice: only a large, significant drop)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"gate rule role must be one of {sorted(ROLES)}, got {self.role!r}")

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
    reasoning: str = ""  # why the rules are what they are, written into every decision


def load_policy(path: str | Path | None = None) -> Policy:
    path = Path(path or DEFAULT_POLICY)
    raw = yaml.safe_load(path.read_text())
    unknown = set(raw) - {"metrics", "significant_drops", "reasoning"}
    if unknown:
        raise ValueError(f"{path}: unknown gate policy keys {sorted(unknown)}")
    metrics = {}
    for name, spec in raw["metrics"].items():
        try:
            metrics[name] = Threshold(**spec)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: rule {name}: {exc}") from exc
    return Policy(metrics, bool(raw.get("significant_drops", True)), " ".join(str(raw.get("reasoning", "")).split()))


def _drop(value: float, ref: float | None, ci: list[float] | None, limit: float, significant: bool, against: str):
    """A paired drop of ``value`` below a reference scored on the same requests: None when within
    ``limit`` or not judged, else (status, why). Beyond ``limit`` it fails only when the 95% interval of
    (candidate − reference) lies below zero (``significant``), so noise neither blocks nor flips."""
    if ref is None or math.isnan(ref) or ref - value <= limit:
        return None
    drop = f"dropped {ref - value:.4f} > {limit} vs {against}"
    if significant and ci is not None:
        interval = f"95% CI of delta {ci[0]:+.4f}..{ci[1]:+.4f}"
        return ("pass", f"{drop}, within noise ({interval})") if ci[1] >= 0 else ("fail", f"{drop} ({interval})")
    return "fail", drop


@dataclass(frozen=True)
class _Refs:
    """What one metric is compared with, all on today's held-out requests: production's figure and the
    anchor's (the first accepted version replayed), each with the paired interval of the difference."""

    prod: float | None = None
    prod_ci: list[float] | None = None
    first: float | None = None
    first_ci: list[float] | None = None
    own_ci: list[float] | None = None  # the candidate's own paired difference (not_below_zero rules)


def _check(value: float, th: Threshold, policy: Policy, refs: _Refs) -> tuple[str, str]:
    if math.isnan(value):
        return "fail", "metric is undefined (NaN)"
    if value < th.floor:
        return "fail", f"{value:.4f} below floor {th.floor}"
    if value > th.ceiling:
        return "fail", f"{value:.4g} above budget {th.ceiling:.4g}"
    if th.not_below_zero:
        if refs.own_ci is None:
            if value < 0:
                return "fail", f"{value:+.4f} below 0 (no interval)"
        elif refs.own_ci[1] < 0:
            return "fail", f"{value:+.4f} below 0 beyond noise (95% CI {refs.own_ci[0]:+.4f}..{refs.own_ci[1]:+.4f})"
    notes = []
    significant = policy.significant_drops or th.role == "sanity"  # a sanity floor never fails on noise
    for ref, ci, limit, against in (
        (refs.first, refs.first_ci, th.max_drop_vs_first, "the first accepted version"),
        (refs.prod, refs.prod_ci, th.max_drop, "production"),
    ):
        outcome = _drop(value, ref, ci, limit, significant, against)
        if outcome and outcome[0] == "fail":
            return outcome
        notes += [outcome[1]] if outcome else []
    return "pass", "; ".join(notes)


def decide(
    candidate: dict[str, float],
    production: dict[str, float] | None,
    policy: Policy,
    intervals: dict[str, list[float]] | None = None,
    own_intervals: dict[str, list[float]] | None = None,
    first: dict[str, float] | None = None,
    first_intervals: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """Check every policy metric; pass only if no counted slice fails.

    ``production`` and ``first`` (the anchor: the first accepted version) are their models' figures on
    the candidate's held-out requests; ``intervals`` and ``first_intervals`` the paired 95% CIs of
    (candidate − production) and (candidate − anchor); ``own_intervals``: the CIs of the candidate's
    own paired differences (two-stage − light alone, expressive − light, light − best feature).
    """
    checks = []
    intervals, own_intervals, first_intervals = intervals or {}, own_intervals or {}, first_intervals or {}
    routed = int(candidate.get("system.k", 1) or 0) > 0
    for metric, th in policy.metrics.items():
        value = candidate.get(metric, float("nan"))
        count_key = th.count_key(metric)
        examples = int(candidate.get(count_key, 0)) if count_key else None
        refs = _Refs(
            prod=production.get(metric) if production else None,
            prod_ci=intervals.get(metric),
            first=first.get(metric) if first else None,
            first_ci=first_intervals.get(metric),
            own_ci=own_intervals.get(metric),
        )
        row: dict[str, Any] = {
            "metric": metric,
            "role": th.role,
            "candidate": value,
            "production": refs.prod,
            "delta": None if refs.prod is None else value - refs.prod,
            "delta_ci95": refs.prod_ci,
            "own_ci95": refs.own_ci,
            "first": refs.first,
            "first_delta": None if refs.first is None else value - refs.first,
            "first_delta_ci95": refs.first_ci,
            "floor": th.floor,
            "max_drop": th.max_drop,
            "max_drop_vs_first": th.max_drop_vs_first,
            "ceiling": th.ceiling,
            "examples": examples,
        }
        if th.when_routed and not routed:
            row.update(status="skipped", why="K = 0: the expressive model does not serve")
        elif examples is not None and examples < th.min_examples:
            row.update(status="skipped", why=f"{examples} examples < {th.min_examples}")
        else:
            status, why = _check(value, th, policy, refs)
            row.update(status=status, why=why)
        checks.append(row)
    failed = [c for c in checks if c["status"] == "fail"]
    passed = not failed
    basis = "drops vs production" if production else "no production model yet"
    basis += ", vs the first accepted version" if first else ", first run (nothing accepted before)"
    basis += " (replayed on today's requests)" if production or first else ""
    basis += ", routing vs light alone"
    reason = f"all counted slices pass ({basis})" if passed else "; ".join(f"{c['metric']}: {c['why']}" for c in failed)
    return {"passed": passed, "reason": reason, "basis": basis, "checks": checks}


def report_markdown(decision: dict[str, Any], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"**Decision:** {'PASS' if decision['passed'] else 'FAIL'} — {decision['reason']}",
        "",
        "Candidate vs. production and vs. the first accepted version (the anchor), both replayed on the",
        "candidate's own held-out requests; each interval is the paired-bootstrap 95% interval of the delta.",
        "",
        "| metric | role | candidate | own 95% CI | production | delta | delta 95% CI | first accepted "
        "| delta 95% CI | floor | max drop | max drop vs first | budget | examples | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
            f"| {c['metric']} | {c.get('role', 'decides')} | {fmt(c['candidate'])} | {ci(c.get('own_ci95'))} | "
            f"{fmt(c['production'])} | {fmt(c['delta'])} | {ci(c.get('delta_ci95'))} | {fmt(c.get('first'))} "
            f"({fmt(c.get('first_delta'))}) | {ci(c.get('first_delta_ci95'))} | {fmt(c['floor'])} | {fmt(c['max_drop'])} | "
            f"{fmt(c.get('max_drop_vs_first'))} | {fmt(c.get('ceiling'))} | {fmt(c['examples'])} | "
            f"{c['status']} {c['why']} |"
        )
    if decision.get("reasoning"):
        lines += ["", "## Why these rules", "", decision["reasoning"],
                  "", "Roles: " + "; ".join(ROLES.values()) + "."]  # fmt: skip
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
    anchor = evaluation.get("first_accepted") or {}  # the first accepted version, replayed on these requests
    decision = decide(
        evaluation["candidate"],
        evaluation["production"],
        policy,
        evaluation.get("delta_ci95"),
        evaluation.get("candidate_ci95"),
        anchor.get("metrics"),
        anchor.get("delta_ci95"),
    )
    decision["ds"] = evaluation["holdout"]["ds"]
    decision["reasoning"] = policy.reasoning
    decision["routing"] = evaluation.get("routing")
    decision["production_version"] = evaluation.get("production_version")
    decision["anchor_version"] = anchor.get("version")
    path = Path(policy_path or DEFAULT_POLICY)  # lineage: the exact rules this run was judged by
    decision["policy"] = {"path": str(path), "sha256": file_hash(path)}
    write_json_atomic(run_dir / "decision.json", decision)
    (run_dir / "decision.md").write_text(report_markdown(decision, f"Promotion gate, ds={decision['ds']}"))
    return decision
