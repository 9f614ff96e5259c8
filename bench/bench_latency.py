"""Serving latency: 1,000-candidate requests through the real TorchServe on 127.0.0.1, side by side
with the same scorer in-process (the server's overhead is the difference).

Routing variants per request (same deployed version): light only (K=0), HAP two-stage at several K,
and the expressive model on every candidate (K=N).

Needs a deployed model: run `make demo` first (uses $HAP_HOME, default ./.hap).
Run: .venv/bin/python bench/bench_latency.py [--requests 200] [--ks 50 200 500]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from serving.scorer import TwoStageScorer

from hap.config import HapConfig
from hap.flow import server_for
from hap.registry import Registry
from hap.workspace import Workspace
from serving.archive import stage_bundle
from serving.deploy import ensure_serving, sample_request


def pct(x: list[float]) -> str:
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return f"{p50:.1f} | {p95:.1f} | {p99:.1f}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--ks", type=int, nargs="+", default=[50, 200, 500])
    args = p.parse_args()
    ws = Workspace.from_env()
    prod = Registry(ws).production()
    if not prod:
        raise SystemExit("no production model: run `make demo` first")
    server = server_for(ws)
    ensure_serving(ws, server)
    ds = Registry(ws).versions()[-1]["ds"]
    bodies = [sample_request(ws.data, ds, args.candidates, seed=i) for i in range(20)]
    n = len(bodies[0]["candidates"])
    variants = [("light only", 0), *[(f"HAP K={k}", k) for k in args.ks], ("expressive on all", n)]
    with tempfile.TemporaryDirectory() as tmp:
        scorer = TwoStageScorer(
            stage_bundle(
                Registry(ws).version_dir(prod["version"]), prod["version"], HapConfig().routing, Path(tmp) / "b"
            )
        )
        print(f"version {prod['version']}, {n} candidates/request, {args.requests} requests per variant, M=50")
        print("| variant | server p50 ms | p95 | p99 | candidates/s (server) | in-process p50 ms | p95 | p99 |")
        print("|---|---|---|---|---|---|---|---|")
        for name, k in variants:
            served, local = [], []
            for i in range(args.requests + 10):  # first 10: warm-up
                body = {**bodies[i % len(bodies)], "k": k, "m": 50}
                t = time.perf_counter()
                r = server.predict(body)
                dt = (time.perf_counter() - t) * 1000
                assert r.status_code == 200, r.text
                t = time.perf_counter()
                scorer(body)
                dl = (time.perf_counter() - t) * 1000
                if i >= 10:
                    served.append(dt)
                    local.append(dl)
            cps = n / (np.mean(served) / 1000)
            print(f"| {name} | {pct(served)} | {cps:,.0f} | {pct(local)} |")


if __name__ == "__main__":
    main()
