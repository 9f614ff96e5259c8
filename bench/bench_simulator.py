"""Simulator throughput: candidate rows per second, generation and Parquet write, by day size.

Run: .venv/bin/python bench/bench_simulator.py [--requests 3000 20000] [--repeat 3]
"""

import argparse
import platform
import tempfile
import time

import numpy as np

from hap.config import SimConfig
from hap.contract import write_partition
from samples.simulator import CascadeSimulator


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, nargs="+", default=[3000, 20000])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    t0 = time.perf_counter()
    sim = CascadeSimulator(SimConfig())
    print(f"world build ({sim.cfg.n_users} users, {sim.cfg.n_items} items): {time.perf_counter() - t0:.2f}s")
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print("| requests/day | candidate rows | simulate s (median) | rows/s | + parquet write s | rows/s incl. write |")
    print("|---|---|---|---|---|---|")
    for n in args.requests:
        sim_s, write_s = [], []
        for r in range(args.repeat):
            t = time.perf_counter()
            log = sim.simulate_day(f"2026-11-{20 + r:02d}", n)
            sim_s.append(time.perf_counter() - t)
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                write_partition(tmp, "requests", log.ds, log.requests)
                write_partition(tmp, "candidates", log.ds, log.candidates)
                write_s.append(time.perf_counter() - t)
        rows = log.candidates.num_rows
        s, w = float(np.median(sim_s)), float(np.median(write_s))
        print(f"| {n} | {rows} | {s:.2f} | {rows / s:,.0f} | {w:.2f} | {rows / (s + w):,.0f} |")


if __name__ == "__main__":
    main()
