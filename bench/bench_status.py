"""On-call views: how long `hap status` (a fresh CLI process, as on-call runs it) and the daily
report take on a real workspace, and the report's size.

Run after `make demo` (or on any workspace with runs):
    .venv/bin/python bench/bench_status.py [--home .hap] [--repeats 5]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hap.workspace import Workspace
from workflow import runlog


def _timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--home", default=".hap")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    ws = Workspace.from_env(args.home)
    days = runlog.days(ws)
    if not days:
        sys.exit(f"no daily runs recorded under {ws.root}: run `make demo` first")
    hap = [sys.executable, "-m", "workflow.cli", "--home", str(ws.root)]
    rows = []
    for name, cmd in (
        ("hap status --no-live", [*hap, "status", "--no-live"]),
        ("hap status (asks TorchServe)", [*hap, "status"]),
        ("hap status --json", [*hap, "status", "--json"]),
        (f"hap report --ds {days[0]}", [*hap, "report", "--ds", days[0]]),
    ):
        _timed(cmd)  # warm the page cache
        times = []
        for _ in range(args.repeats):
            seconds, proc = _timed(cmd)
            if proc.returncode not in (0, 1):
                sys.exit(f"{name} exited {proc.returncode}: {proc.stderr[-2000:]}")
            times.append(seconds)
        rows.append((name, statistics.median(times), min(times), max(times)))
    page = ws.report_dir(days[0]) / "index.html"
    status = json.loads(_timed([*hap, "status", "--json", "--no-live"])[1].stdout)
    print(f"workspace {ws.root}: {len(days)} day(s) with runs, {len(status['runs'])} shown, "
          f"{len(status['alerts'])} open alert(s); report {page.stat().st_size / 1024:.0f} KiB")  # fmt: skip
    print("| command (fresh process) | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, med, lo, hi in rows:
        print(f"| `{name}` | {med:.2f} | {lo:.2f} | {hi:.2f} |")
    print(f"(report: {Path(page).as_uri()})")


if __name__ == "__main__":
    main()
