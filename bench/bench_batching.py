"""Request-level batching vs. per-candidate user side, and where training time goes.

The request-only layout computes the user tower (and the sequence embeddings) once per request
and broadcasts it to the request's candidates; the per-candidate layout repeats the user side
for every candidate row, as a flat sample table would.

Run: .venv/bin/python bench/bench_batching.py [--requests 3000] [--steps 40]
"""

import argparse
import time

import numpy as np
import torch

from hap.config import HapConfig
from hap_runtime.nets import PreRanker
from hap_runtime.spec import DEFAULT_SPEC
from models.data import encode_tables
from models.losses import hap_loss
from models.train import train_expressive, train_light
from samples.simulator import CascadeSimulator


def step_time(model: PreRanker, batches: list, per_candidate: bool, cfg: HapConfig) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for b in batches:
        if per_candidate:  # repeat the user side per candidate row
            logits = model(b.user_x[b.req], b.seq[b.req], b.item_x, torch.arange(len(b.req)))
        else:
            logits = model(b.user_x, b.seq, b.item_x, b.req)
        loss, _ = hap_loss(logits, b, cfg.light_loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(2)
    cfg = HapConfig()
    day = CascadeSimulator(cfg.sim).simulate_day("2026-11-20", args.requests)
    data = encode_tables(day.requests, day.candidates, DEFAULT_SPEC, "click")
    rng = np.random.default_rng(0)
    batches = [b for _, b in zip(range(args.steps), data.batches(cfg.train.batch_requests, rng), strict=False)]
    samples = sum(len(b.label) for b in batches)
    print(
        f"{len(batches)} batches of {cfg.train.batch_requests} requests, {samples / len(batches):.0f} candidates each"
    )
    print("| model | request-level samples/s | per-candidate samples/s | speed-up |")
    print("|---|---|---|---|")
    for name, mcfg in (("light", cfg.light), ("expressive", cfg.expressive)):
        torch.manual_seed(0)
        rl = step_time(PreRanker(mcfg, DEFAULT_SPEC), batches, False, cfg)
        torch.manual_seed(0)
        pc = step_time(PreRanker(mcfg, DEFAULT_SPEC), batches, True, cfg)
        print(f"| {name} | {samples / rl:,.0f} | {samples / pc:,.0f} | {pc / rl:.2f}x |")

    print("\nfull training (3 epochs, gradient monitor on) — where the time goes:")
    print("| model | samples/epoch | samples/s | data path s | compute s | data share |")
    print("|---|---|---|---|---|---|")
    for name, fit in (("light (all sources)", train_light), ("expressive (hard sources)", train_expressive)):
        _, hist = fit(data, cfg, DEFAULT_SPEC)
        e = hist["epochs"]
        data_s = sum(x["data_seconds"] for x in e)
        comp_s = sum(x["compute_seconds"] for x in e)
        sps = np.mean([x["samples_per_s"] for x in e])
        n = int(round(sps * e[0]["seconds"]))
        print(f"| {name} | {n:,} | {sps:,.0f} | {data_s:.2f} | {comp_s:.2f} | {data_s / (data_s + comp_s):.1%} |")


if __name__ == "__main__":
    main()
