"""Zero downtime: open-loop load through ten consecutive deploys, a rollback and a killed worker, with
the failed requests counted per event and the worker count and memory after every deploy.

The product's own deploy (register → golden smoke → set default → unregister all but production
and the previous version) and rollback run while 1,000-candidate requests arrive at a fixed rate.
The client retries transient answers with the product client's backoff (``worker_died``,
``overloaded``); each request's first answer is kept too, so both the raw and the retried failures
are reported.

Works in a temporary workspace holding the day's data and copies of the workspace's production
version (``clone_version``: distinct weights, same rankings), with its own TorchServe (ports
$HAP_SERVE_PORT+20..+24). Needs `make demo` first. Run on an otherwise idle machine:
.venv/bin/python bench/bench_zero_downtime.py [--rate 50] [--deploys 10]
"""

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path

from loadgen import LoadClient, Target, open_loop, summary

from hap.workspace import Workspace
from registry.store import Registry
from serving.deploy import clone_version, columnar, deploy, rollback, sample_request
from serving.server import LocalTorchServe, Ports
from workflow.flow import load_config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=50)
    p.add_argument("--deploys", type=int, default=10)
    p.add_argument("--gap", type=float, default=3.0, help="seconds between one event's end and the next")
    p.add_argument("--tail", type=float, default=10.0, help="seconds of load after the last event")
    args = p.parse_args()
    src, cfg = Workspace.from_env(), load_config()
    prod = Registry(src).production()
    if not prod:
        raise SystemExit("no production model: run `make demo` first")
    ds = next(m["ds"] for m in Registry(src).versions() if m["version"] == prod["version"])
    with tempfile.TemporaryDirectory(prefix="hap-zero-") as tmp:
        ws = Workspace(Path(tmp))
        ws.root.mkdir(exist_ok=True)
        os.symlink(src.data, ws.data)
        base_version = Registry(ws).register(ds, Registry(src).version_dir(prod["version"]))
        versions = [base_version, *(clone_version(ws, base_version, ds, 0.01 * i) for i in range(1, args.deploys + 1))]
        port = int(os.environ.get("HAP_SERVE_PORT", "8080")) + 20
        server = LocalTorchServe(ws.serving, Ports(port, port + 1, port + 2, port + 3, port + 4), cfg.serving)
        try:
            deploy(ws, versions[0], cfg, server, smoke_ds=ds, reason="benchmark start")
            raws = [json.dumps(columnar(sample_request(ws.data, ds, 1000, seed=i))).encode() for i in range(16)]
            target = Target.for_home(server.home, server.inference_url, server.management_url, "/predictions/hap")
            client = LoadClient(target, raws, timeout_s=15, retries=4)
            run(ws, cfg, server, client, versions, ds, args)
        finally:
            server.stop()


def run(ws, cfg, server, client, versions, ds, args) -> None:
    snapshots = []

    def deploy_event(version: str):
        def go():
            out = deploy(ws, version, cfg, server, ds, "benchmark")
            time.sleep(1.0)  # let the unregistered worker exit before counting
            snapshots.append({"version": version, "registered": len(server.versions()), **server.memory_mb()})
            return {"unregistered": out.get("unregistered")}

        return go

    def kill_event():
        pid = server.describe(server.default_version())["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        return pid

    events = [(args.gap, f"deploy {i + 1}", deploy_event(v)) for i, v in enumerate(versions[1:])]
    events += [(args.gap, "rollback", lambda: rollback(ws, server, "benchmark rollback")["version"]),
               (args.gap, "kill worker", kill_event)]  # fmt: skip
    print(f"{args.rate:.0f} rps open loop, 1,000 candidates/request (columns), through {len(versions) - 1} deploys, "
          f"a rollback and a killed worker, {args.gap:.0f} s apart, then {args.tail:.0f} s more")  # fmt: skip
    outcomes, log = open_loop(client, args.rate, 1.0, [*events, (args.tail, "tail", lambda: None)])
    print("\n| event | took s | requests from 1 s before to 3 s after | failed, first answer | failed after retries | kinds "
          "| p99 ms during |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for e in sorted(log, key=lambda e: e["start"]):
        if e["event"] == "tail":
            continue
        window = [o for o in outcomes if e["start"] - 1.0 <= o.scheduled <= e["end"] + 3.0]
        first = [o for o in window if o.first_kind != "ok"]
        final = [o for o in window if o.kind != "ok"]
        kinds = {k: sum(o.first_kind == k for o in first) for k in {o.first_kind for o in first}}
        p99 = summary(window)["p99_ms"]
        print(f"| {e['event']}{' (ERROR ' + e['error'] + ')' if e['error'] else ''} | {e['end'] - e['start']:.1f} | "
              f"{len(window)} | {len(first)} | {len(final)} | {kinds or '—'} | {p99} |")  # fmt: skip
    quiet = [o for o in outcomes if not any(e["start"] - 1.0 <= o.scheduled <= e["end"] + 3.0 for e in log)]
    s = summary(outcomes, outcomes[-1].scheduled if outcomes else None)
    print(f"\nwhole run: {s}")
    print(f"between events: {summary(quiet)}")
    print("\n| after deploy | version | registered versions | worker processes | frontend RSS MB | workers RSS MB |")
    print("|---|---|---|---|---|---|")
    for i, snap in enumerate(snapshots, start=1):
        print(f"| {i} | {snap['version']} | {snap['registered']} | {len(snap['workers'])} | {snap['frontend']} | "
              f"{' + '.join(str(w) for w in snap['workers'])} = {sum(snap['workers']):.0f} |")  # fmt: skip
    print(json.dumps({"events": log, "summary": s, "snapshots": snapshots}, default=str))


if __name__ == "__main__":
    main()
