"""Cross-request batching: the same version served with TorchServe batch size 1 and 8, under closed-loop
load from 1, 4 and 8 concurrent clients (1,000-candidate requests), side by side in one run.

Also in-process: 8 parsed requests scored one by one vs. in one ``score_batch`` call, to separate
the models' gain from the server's queueing.

Needs a deployed model: run `make demo` first (uses $HAP_HOME, default ./.hap). It starts its own
TorchServe in a temporary home (ports $HAP_SERVE_PORT+10..+14), leaving the demo's server alone.
Run: .venv/bin/python bench/bench_serve_batching.py [--seconds 15] [--batch-sizes 1 8]
"""

import argparse
import dataclasses
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from hap.config import HapConfig, ServingConfig
from hap.workspace import Workspace
from hap_runtime.scorer import TwoStageScorer
from registry.store import Registry
from serving.archive import build_archive, stage_bundle
from serving.deploy import sample_request
from serving.server import LocalTorchServe, Ports


def load(server: LocalTorchServe, version: str, bodies: list[dict], clients: int, seconds: float) -> dict:
    """Closed loop: each client sends its next request as soon as the last one is answered."""
    lat: list[float] = []
    stop = time.monotonic() + seconds

    def client(c: int) -> None:
        i = c
        while time.monotonic() < stop:
            t = time.perf_counter()
            r = server.predict(bodies[i % len(bodies)], version=version)
            lat.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
            i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p50, p95 = np.percentile(lat, [50, 95])
    return {"rps": len(lat) / (time.monotonic() - t0), "p50": p50, "p95": p95}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    args = p.parse_args()
    ws = Workspace.from_env()
    registry = Registry(ws)
    prod = registry.production()
    if not prod:
        raise SystemExit("no production model: run `make demo` first")
    ds = registry.versions()[-1]["ds"]
    bodies = [sample_request(ws.data, ds, args.candidates, seed=i) for i in range(16)]
    cfg = HapConfig()

    with tempfile.TemporaryDirectory() as tmp:
        scorer = TwoStageScorer(stage_bundle(registry.version_dir(prod["version"]), prod["version"], cfg.routing,
                                             Path(tmp) / "b"))  # fmt: skip
        parsed = [scorer.parse(b) for b in bodies[:8]]
        for _ in range(3):
            scorer.score_batch(parsed)
        reps = 20
        t = time.perf_counter()
        for _ in range(reps):
            for r in parsed:
                scorer.score_batch([r])
        one_by_one = (time.perf_counter() - t) / reps * 1000
        t = time.perf_counter()
        for _ in range(reps):
            scorer.score_batch(parsed)
        batched = (time.perf_counter() - t) / reps * 1000
        t = time.perf_counter()
        for _ in range(reps):
            for b in bodies[:8]:
                scorer.parse(b)
        parse_ms = (time.perf_counter() - t) / reps * 1000
        print(f"in-process, 8 requests x {args.candidates} candidates, K=200: parse {parse_ms:.1f} ms; "
              f"score one by one {one_by_one:.1f} ms, in one batch {batched:.1f} ms "
              f"({one_by_one / batched:.2f}x)")  # fmt: skip

        base = int(os.environ.get("HAP_SERVE_PORT", "8080")) + 10
        server = LocalTorchServe(Path(tmp) / "ts", Ports(base, base + 1, base + 2, base + 3, base + 4))
        server.start()
        try:
            versions = {}
            for bs in args.batch_sizes:
                label = f"{prod['version']}-b{bs}"
                bcfg = dataclasses.replace(cfg, serving=ServingConfig(batch_size=bs, max_batch_delay_ms=5))
                build_archive(registry.version_dir(prod["version"]), label, bcfg, server.model_store)
                server.register(f"hap-{label}.mar")
                versions[bs] = label
            print(f"\nTorchServe, 1 worker, max batch delay 5 ms, {args.seconds:.0f} s per cell")
            print("| clients | " + " | ".join(f"batch {bs}: req/s, p50, p95 ms" for bs in args.batch_sizes) + " |")
            print("|---|" + "---|" * len(args.batch_sizes))
            for clients in args.clients:
                cells = []
                for label in versions.values():
                    load(server, label, bodies, clients, 2)  # warm-up
                    r = load(server, label, bodies, clients, args.seconds)
                    cells.append(f"{r['rps']:.1f}, {r['p50']:.1f}, {r['p95']:.1f}")
                print(f"| {clients} | " + " | ".join(cells) + " |")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
