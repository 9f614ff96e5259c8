"""Does the shipped gate policy let a normal next-day model through? Day 2's candidate against day 1's
model as production, on day 2's held-out requests, judged by ``configs/gate_policy.yaml``, for a few
epoch caps (the test suite caps training at 2 epochs; the default is 8).

Run: .venv/bin/python bench/bench_gate_day_over_day.py [--epochs 2 8] [--requests 1000]
(the suite's world: 2,000 users, 8,000 items, 4 days from 2026-11-20; about 1 min on 2 cores).
"""

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from expectations.validate import validate_day
from hap.config import HapConfig, SimConfig
from hap.workspace import Workspace
from models.evaluation import evaluate
from models.prepare import prepare
from models.worker import train_worker
from registry.gate import gate_run
from samples.simulator import CascadeSimulator

DAY1, DAY2 = "2026-11-22", "2026-11-23"
SHOWN = ("light.auc.overall", "light.auc.rank", "expressive.auc.rank", "system.value")


def run_day(ws: Workspace, ds: str, cfg: HapConfig, production: str, out: Path) -> dict:
    """The training pipeline's steps for one day (prepare, light, expressive from light, evaluate);
    ``production`` is also the anchor (the first accepted run), replayed on the day's requests."""
    prepare(str(ws.root), ds, cfg, str(out / "prep"))
    train_worker(str(out / "prep"), "light", cfg, str(out / "light"))
    train_worker(str(out / "prep"), "expressive", cfg, str(out / "expressive"), init_dir=str(out / "light"))
    return evaluate(str(out / "prep"), str(out / "light"), str(out / "expressive"), production, cfg,
                    str(out / "evaluation.json"), production)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, nargs="+", default=[2, 8])
    p.add_argument("--requests", type=int, default=1000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        CascadeSimulator(SimConfig(n_users=2000, n_items=8000)).write_days(ws.data, "2026-11-20", 4, args.requests)
        for ds in ("2026-11-20", "2026-11-21", DAY1, DAY2):
            validate_day(ws.root, ds, HapConfig())
        print("| epochs cap | " + " | ".join(f"{m}: day 2 − day 1 [95% CI]" for m in SHOWN) + " | gate |")
        print("|---|" + "---|" * (len(SHOWN) + 1))
        for epochs in args.epochs:
            cfg = HapConfig()
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
            first = Path(tmp) / f"e{epochs}" / DAY1
            day1 = run_day(ws, DAY1, cfg, "", first)
            second = Path(tmp) / f"e{epochs}" / DAY2
            day2 = run_day(ws, DAY2, cfg, str(first), second)
            day2.update(production_version="day1")  # what the flow adds before the gate
            (second / "evaluation.json").write_text(json.dumps(day2))
            decision = gate_run(second)  # the shipped policy
            cells = []
            for m in SHOWN:
                lo, hi = day2["delta_ci95"][m]
                cells.append(f"{day2['candidate'][m] - day2['production'][m]:+.4f} [{lo:+.4f}, {hi:+.4f}]")
            failed = [c["metric"] for c in decision["checks"] if c["status"] == "fail"]
            verdict = "PASS" if decision["passed"] else f"FAIL ({len(failed)} rules: {', '.join(failed[:3])}…)"
            print(f"| {epochs} | " + " | ".join(cells) + f" | {verdict} |")
            print(f"|   | day 1 alone: light.auc.overall {day1['candidate']['light.auc.overall']:.4f}, "
                  f"day 2: {day2['candidate']['light.auc.overall']:.4f} | | | | |")  # fmt: skip


if __name__ == "__main__":
    main()
