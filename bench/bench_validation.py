"""Validation throughput: one day of logs through every suite (read, derive, GX, Data Docs, report).

Run: .venv/bin/python bench/bench_validation.py [--requests 7500 15000 30000 60000]
(about 33 candidate rows per request: 30,000 requests is about 1M candidate rows).
"""

import argparse
import os
import tempfile
import time

from hap.workspace import Workspace
from samples.simulator import CascadeSimulator


def main() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from expectations.validate import describe, validate_day

    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, nargs="+", default=[7500, 15000, 30000, 60000])
    args = p.parse_args()
    sim = CascadeSimulator()
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: GX imports and context load, not timed
        sim.write_days(Workspace.from_env(tmp).data, "2026-11-20", 1, 200)
        validate_day(tmp, "2026-11-20")
    print("| requests | candidate rows | wall s | rows/s | read s | derive s | GX s | Data Docs s |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.requests:
        with tempfile.TemporaryDirectory() as tmp:
            ws = Workspace.from_env(tmp)
            sim.write_days(ws.data, "2026-11-20", 1, n)
            t0 = time.perf_counter()
            verdict = validate_day(ws.root, "2026-11-20")
            wall = time.perf_counter() - t0
            assert verdict["success"], describe(verdict)
            rows, t = verdict["stats"]["candidate_rows"], verdict["timings_s"]
            t["gx"] = sum(v for k, v in t.items() if k.startswith("gx."))
            print(
                f"| {n} | {rows:,} | {wall:.1f} | {rows / wall:,.0f} | {t['read']:.1f} | {t['derive']:.1f} | "
                f"{t['gx']:.1f} | {t['data_docs']:.1f} |"
            )


if __name__ == "__main__":
    main()
