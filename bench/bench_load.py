"""Capacity: open-loop load at increasing rates through the real TorchServe on 127.0.0.1.

1,000-candidate requests (columns layout by default), sent on a fixed schedule whatever the server
does; latency counts from each request's scheduled time. Per rate: requests answered per second,
p50/p95/p99, failures by kind, and the CPU seconds per second used by the frontend (JVM), the workers
and this load generator (all on the same 2 cores).

Needs a production model (run `make demo` first; uses $HAP_HOME). Starts its own TorchServe in a
temporary home (ports $HAP_SERVE_PORT+10..+14) with the product's serving config.
Run on an otherwise idle machine: .venv/bin/python bench/bench_load.py [--rates 50 100 150 200] [--seconds 30]
"""

import argparse
import json
import os
import time

from loadgen import BenchServer, LoadClient, cpu_seconds, open_loop, summary

from hap.workspace import Workspace
from registry.store import Registry
from serving.deploy import columnar, sample_request
from workflow.flow import load_config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rates", type=float, nargs="+", default=[25, 50, 75, 100, 125, 150, 175, 200, 225])
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--layout", choices=["rows", "columns"], default="columns")
    args = p.parse_args()
    ws, cfg = Workspace.from_env(), load_config()
    ds = Registry(ws).versions()[-1]["ds"]
    convert = columnar if args.layout == "columns" else (lambda b: b)
    raws = [json.dumps(convert(sample_request(ws.data, ds, args.candidates, seed=i))).encode() for i in range(32)]
    rows = []
    with BenchServer(ws, cfg) as bench:
        server = bench.server
        workers = [w["pid"] for w in server.describe(server.default_version())["workers"]]
        pids = {"frontend": [server.pid()], "workers": workers, "loadgen": [os.getpid()]}
        client = LoadClient(bench.target(), raws, timeout_s=10)
        open_loop(client, 50, 20)  # warm-up: 1,000 requests, so the JVM's JIT has compiled the hot path
        print(f"version {server.default_version()}, {args.candidates} candidates/request ({args.layout}), "
              f"{args.seconds:.0f} s per rate, batch size {cfg.serving.batch_size}, batch delay "
              f"{cfg.serving.max_batch_delay_ms} ms, job queue {cfg.serving.job_queue_size}")  # fmt: skip
        print("| offered rps | answered rps | p50 ms | p95 ms | p99 ms | failed | failures by kind "
              "| CPU s/s frontend | workers | load generator | RSS MB frontend | workers |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for rate in args.rates:
            before = cpu_seconds(pids)
            t0 = time.monotonic()
            outcomes, _ = open_loop(client, rate, args.seconds)
            wall = time.monotonic() - t0
            cpu = {k: round((v - before[k]) / wall, 2) for k, v in cpu_seconds(pids).items()}
            s = summary(outcomes, wall)
            mem = server.memory_mb()
            rows.append({"rate": rate, **s, "cpu": cpu, "rss_mb": mem})
            print(f"| {rate:.0f} | {s['answered_per_s']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | "
                  f"{s['failed']} | {s['failed_by_kind'] or '—'} | {cpu['frontend']} | {cpu['workers']} | "
                  f"{cpu['loadgen']} | {mem['frontend']} | {sum(mem['workers']):.0f} |")  # fmt: skip
            time.sleep(3)  # let the queue drain between rates
    clean = [r["rate"] for r in rows if r["failed"] == 0]
    print(f"highest offered rate with 0 failures: {max(clean) if clean else 'none'} rps")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
