"""Serving latency, one client: 1,000-candidate requests through the real TorchServe on 127.0.0.1,
side by side with the same archive's code in-process (decode → parse → score → encode, one torch
thread like the worker), alternating blocks of 20 requests so that both see the same machine
state. The server's overhead is the difference of the two p50s.

Layouts: rows (one object per candidate) and columns (the compact layout: one list per feature).
Routing variants of the same version: light only (K=0), HAP at several K, expressive on all (K=N).

Needs a production model (run `make demo` first; uses $HAP_HOME, default ./.hap). Starts its own
TorchServe in a temporary home (ports $HAP_SERVE_PORT+10..+14) with the product's serving config.
Run on an otherwise idle machine: .venv/bin/python bench/bench_latency.py [--requests 400] [--ks 50 200 500]
"""

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from loadgen import BenchServer, LoadClient, closed_loop, summary

from hap.workspace import Workspace
from hap_runtime.codec import decode_body
from hap_runtime.scorer import TwoStageScorer
from registry.store import Registry
from serving.archive import extract_archive, mar_name
from serving.deploy import columnar, sample_request
from workflow.flow import load_config


def in_process(scorer: TwoStageScorer, raws: list[bytes], n: int, first: int = 0) -> list[float]:
    """What the worker does for one request, timed: decode, parse, score, encode the answer."""
    lat = []
    for i in range(first, first + n):
        t = time.perf_counter()
        answer = scorer.score_batch([scorer.parse(decode_body(raws[i % len(raws)], 1 << 30))])[0][0]
        json.dumps(answer)
        lat.append((time.perf_counter() - t) * 1e3)
    return lat


def interleaved(client: LoadClient, scorer: TwoStageScorer, raws: list[bytes], n: int) -> tuple[list, list[float]]:
    """``n`` requests each way, alternating blocks of 20 so that both see the same machine state."""
    served, local = [], []
    in_process(scorer, raws, 20)  # warm-up
    closed_loop(client, 20)
    for start in range(0, n, 20):
        served += closed_loop(client, 20)
        local += in_process(scorer, raws, 20, start)
    return served, local


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--ks", type=int, nargs="+", default=[50, 200, 500])
    args = p.parse_args()
    ws, cfg = Workspace.from_env(), load_config()
    ds = Registry(ws).versions()[-1]["ds"]
    requests = [sample_request(ws.data, ds, args.candidates, seed=i) for i in range(20)]
    n = len(requests[0]["candidates"])
    variants = [("light only", 0), *[(f"HAP K={k}", k) for k in args.ks], ("expressive on all", n)]
    torch.set_num_threads(cfg.serving.torch_threads or torch.get_num_threads())
    with BenchServer(ws, cfg) as bench, tempfile.TemporaryDirectory() as tmp:
        server = bench.server
        scorer = TwoStageScorer(extract_archive(server.model_store / mar_name(server.default_version()), tmp))
        print(f"version {server.default_version()}, {n} candidates/request, {args.requests} requests per cell, "
              f"M={cfg.routing.m}, batch delay {cfg.serving.max_batch_delay_ms} ms, "
              f"{cfg.serving.torch_threads} torch thread(s) in the worker")  # fmt: skip
        warm = [json.dumps(columnar(b)).encode() for b in requests]
        closed_loop(LoadClient(bench.target(), warm), 1000)  # the JVM's JIT compiles the hot path first
        print("| layout | variant | server p50 ms | p95 | p99 | in-process p50 ms | p95 | p99 | overhead at p50 ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        results = []
        for layout, convert in (("rows", lambda b: b), ("columns", columnar)):
            for name, k in variants:
                raws = [json.dumps(convert({**b, "k": k})).encode() for b in requests]
                outcomes, local_ms = interleaved(LoadClient(bench.target(), raws), scorer, raws, args.requests)
                served = summary(outcomes)
                assert served["failed"] == 0, served
                local = np.percentile(local_ms, [50, 95, 99]).round(1).tolist()
                overhead = round(served["p50_ms"] - local[0], 1)
                results.append({"layout": layout, "variant": name, "server": served, "in_process": local})
                print(f"| {layout} | {name} | {served['p50_ms']} | {served['p95_ms']} | {served['p99_ms']} | "
                      f"{local[0]} | {local[1]} | {local[2]} | {overhead} |")  # fmt: skip
    print(json.dumps(results))


if __name__ == "__main__":
    main()
