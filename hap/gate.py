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
    floor: float
    max_drop: float
    min_examples: int = 0
    count: str = ""  # metric holding the slice's example count; default: `auc.` → `n.`

    def count_key(self, metric: str) -> str:
        return self.count or metric.replace(".auc.", ".n.")


def load_policy(path: str | Path | None = None) -> dict[str, Threshold]:
    raw = yaml.safe_load(Path(path or DEFAULT_POLICY).read_text())
    return {name: Threshold(**spec) for name, spec in raw["metrics"].items()}


def decide(
    candidate: dict[str, float], production: dict[str, float] | None, policy: dict[str, Threshold]
) -> dict[str, Any]:
    """Check every policy metric; pass only if no counted slice fails."""
    checks = []
    for metric, th in policy.items():
        value = candidate.get(metric, float("nan"))
        examples = int(candidate.get(th.count_key(metric), 0))
        prod = production.get(metric) if production else None
        row: dict[str, Any] = {
            "metric": metric,
            "candidate": value,
            "production": prod,
            "delta": None if prod is None else value - prod,
            "floor": th.floor,
            "max_drop": th.max_drop,
            "examples": examples,
        }
        if examples < th.min_examples:
            row.update(status="skipped", why=f"{examples} examples < {th.min_examples}")
        elif math.isnan(value):
            row.update(status="fail", why="metric is undefined (NaN)")
        elif value < th.floor:
            row.update(status="fail", why=f"{value:.4f} below floor {th.floor}")
        elif prod is not None and not math.isnan(prod) and prod - value > th.max_drop:
            row.update(status="fail", why=f"dropped {prod - value:.4f} > {th.max_drop} vs production")
        else:
            row.update(status="pass", why="")
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
        "| metric | candidate | production | delta | floor | max drop | examples | status |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    for c in decision["checks"]:
        lines.append(
            f"| {c['metric']} | {fmt(c['candidate'])} | {fmt(c['production'])} | {fmt(c['delta'])} | "
            f"{c['floor']} | {c['max_drop']} | {c['examples']} | {c['status']} {c['why']} |"
        )
    return "\n".join(lines) + "\n"


def gate_run(run_dir: str | Path, policy_path: str | Path | None = None) -> dict[str, Any]:
    """Decide on a training run's ``evaluation.json``; write ``decision.json`` and ``decision.md``."""
    import json

    run_dir = Path(run_dir)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    decision = decide(evaluation["candidate"], evaluation["production"], load_policy(policy_path))
    decision["ds"] = evaluation["holdout"]["ds"]
    decision["production_version"] = evaluation.get("production_version")
    write_json_atomic(run_dir / "decision.json", decision)
    (run_dir / "decision.md").write_text(report_markdown(decision, f"Promotion gate, ds={decision['ds']}"))
    return decision
