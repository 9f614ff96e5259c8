"""Scale-out: peak memory of the streaming data path vs. loading the day, training throughput vs.
processes (DDP under torchrun) and day size, and the cost curve of a daily run as the data grows.

Day sizes are multiples of the demo day (3,000 requests, ~33 logged candidates each).

1. memory: one day → train the light model for one epoch, each in a fresh process (peak RSS):
   ``stream`` = prepare (hash-bucketed shards) + ShardStream training; ``in-memory`` = the whole day
   encoded into arrays, then the same training loop.
2. throughput: light-model training samples/s for 1 process (2 threads) and 2 DDP ranks (1 thread
   each, gloo) on one day of each size; ``--device cuda`` on a GPU machine (nccl).
3. cost: one daily run (validate the day with GX, then the KFP pipeline: prepare the 3-day window,
   train light and expressive, evaluate) at each size, through the real KFP local runner.

Run: .venv/bin/python bench/bench_scaling.py [--scales 1,4,16] [--procs 1,2] [--parts memory,throughput,cost]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hap.config import HapConfig

DEMO_REQUESTS = 3000
END = "2026-11-22"


def _cfg(window: int, epochs: int, processes: int = 1, device: str = "auto") -> HapConfig:
    base = HapConfig(window_days=window)
    return dataclasses.replace(
        base,
        train=dataclasses.replace(base.train, epochs=epochs, monitor_every=0, device=device),
        job=dataclasses.replace(base.job, processes=processes),
    )


def _simulate(root: Path, requests: int, days: int) -> list[str]:
    from hap.workspace import Workspace
    from samples.simulator import CascadeSimulator

    ws = Workspace(root)
    start = (dt.date.fromisoformat(END) - dt.timedelta(days=days - 1)).isoformat()
    out = CascadeSimulator(HapConfig().sim).write_days(ws.data, start, days, requests)
    for day in out:
        ws.record_validation(day, {"success": True})  # part 3 replaces the last day's with GX's own
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, root: Path, device: str) -> dict:
    """One measurement in this (fresh) process; prints JSON."""
    import torch  # noqa: F401 - the baseline includes torch, as every mode does

    from hap_runtime.spec import DEFAULT_SPEC
    from models.data import load_day
    from models.prepare import prepare
    from models.train import train_light
    from models.worker import train_worker

    cfg = _cfg(1, 1, device=device)
    t0 = time.perf_counter()
    if mode == "baseline":
        return {"rss_mb": _rss_mb()}
    if mode == "stream":
        manifest = prepare(str(root), END, cfg, str(root / "prepared-mem"))
        t1 = time.perf_counter()
        history = train_worker(str(root / "prepared-mem"), "light", cfg, str(root / "light-mem"))
        shutil.rmtree(root / "prepared-mem")
        samples = manifest["train_samples"]
    else:
        data = load_day(root / "data", END, DEFAULT_SPEC, cfg.label)
        t1 = time.perf_counter()
        _, history = train_light(data, cfg, DEFAULT_SPEC)
        samples = len(data.label)
    return {
        "rss_mb": _rss_mb(),
        "samples": samples,
        "load_s": t1 - t0,
        "train_s": history["seconds"],
        "samples_per_s": history["epochs"][-1]["samples_per_s"],
    }


def _run_child(mode: str, root: Path, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def part_memory(work: Path, scales: list[int], device: str) -> list[dict]:
    rows, base = [], _run_child("baseline", work, device)["rss_mb"]
    for s in scales:
        root = work / f"mem-{s}x"
        _simulate(root, DEMO_REQUESTS * s, 1)
        for mode in ("stream", "in-memory"):
            r = _run_child(mode, root, device)
            rows.append({"scale": s, "mode": mode, "rss_above_baseline_mb": r["rss_mb"] - base, **r})
            print(f"memory {s:>2}x {mode:<9} peak {r['rss_mb']:7.0f} MB (+{r['rss_mb'] - base:6.0f} over imports)"
                  f"  {r['samples']:>9,} samples  load {r['load_s']:5.1f}s train {r['train_s']:6.1f}s", flush=True)  # fmt: skip
        shutil.rmtree(root)
    return rows


def part_throughput(work: Path, scales: list[int], procs: list[int], device: str) -> list[dict]:
    from components.launch import launch_training
    from models.prepare import prepare

    rows = []
    for s in scales:
        root = work / f"tp-{s}x"
        _simulate(root, DEMO_REQUESTS * s, 1)
        manifest = prepare(str(root), END, _cfg(1, 1), str(root / "prepared"))
        for p in procs:
            cfg = _cfg(1, 2, processes=p, device=device)
            t0 = time.perf_counter()
            history = launch_training(str(root / "prepared"), "light", cfg, str(root / f"light-{p}"))
            wall = time.perf_counter() - t0
            last = history["epochs"][-1]  # the second epoch: warm caches, no first-step overhead
            rows.append({"scale": s, "processes": p, "device": history["device"], "samples": manifest["train_samples"],
                         "samples_per_s": last["samples_per_s"], "epoch_s": last["seconds"], "wall_s": wall})  # fmt: skip
            print(f"throughput {s:>2}x {p} proc(s) on {history['device']:<6} {last['samples_per_s']:9,.0f} samples/s"
                  f"  epoch {last['seconds']:6.1f}s  wall incl. launch {wall:6.1f}s", flush=True)  # fmt: skip
        shutil.rmtree(root)
    return rows


def part_cost(work: Path, scales: list[int], device: str) -> list[dict]:
    from hap.workspace import Workspace
    from workflow import flow

    rows = []
    for s in scales:
        root = work / f"cost-{s}x"
        _simulate(root, DEMO_REQUESTS * s, 3)
        ws = Workspace(root)
        os.environ["HAP_HOME"] = str(root)
        cfg = _cfg(3, HapConfig().train.epochs, device=device)  # the daily defaults: 3-day window, early stopping
        t0 = time.perf_counter()
        verdict = flow.validate(END, ws, cfg)
        t1 = time.perf_counter()
        run_dir = Path(flow.train(END, ws, cfg))
        t2 = time.perf_counter()
        hist = {m: json.loads((run_dir / m / "history.json").read_text()) for m in ("light", "expressive")}
        ev = json.loads((run_dir / "evaluation.json").read_text())
        row = {"scale": s, "requests_per_day": DEMO_REQUESTS * s, "window_samples": ev["holdout"]["train_samples"],
               "validate_s": t1 - t0, "pipeline_s": t2 - t1, "total_s": t2 - t0,
               "light_train_s": hist["light"]["seconds"], "expressive_train_s": hist["expressive"]["seconds"],
               "light_auc": ev["candidate"]["light.auc.overall"], "validation": verdict.get("status")}  # fmt: skip
        rows.append(row)
        print(f"cost {s:>2}x {row['window_samples']:>10,} window samples: validate {row['validate_s']:6.1f}s  "
              f"KFP pipeline {row['pipeline_s']:6.1f}s (light {row['light_train_s']:.1f}s, expressive "
              f"{row['expressive_train_s']:.1f}s)  total {row['total_s']:6.1f}s  light AUC {row['light_auc']:.3f}",
              flush=True)  # fmt: skip
        shutil.rmtree(root)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", default="1,4,16")
    p.add_argument("--procs", default="1,2")
    p.add_argument("--parts", default="memory,throughput,cost")
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine (nccl)")
    p.add_argument("--out", default="bench/results/scaling.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.root), args.device)))
        return
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    scales = [int(x) for x in args.scales.split(",")]
    procs = [int(x) for x in args.procs.split(",")]
    parts = args.parts.split(",")
    work = Path(tempfile.mkdtemp(prefix="hap-scaling-"))
    result: dict = {"date": dt.date.today().isoformat(), "machine": f"{platform.node()} {os.cpu_count()} cores",
                    "device": args.device}  # fmt: skip
    try:
        if "memory" in parts:
            result["memory"] = part_memory(work, scales, args.device)
        if "throughput" in parts:
            result["throughput"] = part_throughput(work, scales, procs, args.device)
        if "cost" in parts:
            result["cost"] = part_cost(work, scales, args.device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
