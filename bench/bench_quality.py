"""Quality benchmark: what GHCL and DAMR buy, side by side on one fixed simulated window.

Methods (same data, same held-out requests, seeds fixed, repeated over seeds):
  light+BCE-mixed, light+softmax-mixed, light+GHCL, expressive on all sources scoring all
  candidates (uniform scaling), the hard-trained expressive model alone, and HAP two-stage
  (light+GHCL on all, expressive trained on hard sources re-scores the light top-K) for several K.

Run: .venv/bin/python bench/bench_quality.py [--seeds 0 1 2] [--requests 3000] [--ks 3 6 12 24]
Writes bench/results/quality.json and docs/quality_recall_vs_flops.png; prints a Markdown table.
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from hap import SOURCES
from hap.config import HapConfig, LossConfig
from hap.simulator import CascadeSimulator
from hap_runtime.spec import DEFAULT_SPEC
from models.data import EncodedData, encode_tables, holdout_mask
from models.metrics import flops_per_request, gauc, predict, slice_aucs, two_stage_recall
from models.train import train_expressive, train_model

ROOT = Path(__file__).resolve().parents[1]
SLICES = ("overall", *SOURCES)


def window(n_requests: int) -> tuple[EncodedData, EncodedData]:
    """3 simulated days; the last day's hash-split held-out requests are the test set (as in the pipeline)."""
    sim = CascadeSimulator(HapConfig().sim)
    days = [sim.simulate_day(ds, n_requests) for ds in ("2026-11-20", "2026-11-21", "2026-11-22")]
    enc = [encode_tables(d.requests, d.candidates, DEFAULT_SPEC, "click") for d in days]
    held = holdout_mask(enc[-1].request_ids, 0.2)
    train = EncodedData.concat(enc[:-1] + [enc[-1].select_requests(np.flatnonzero(~held))])
    return train, enc[-1].select_requests(np.flatnonzero(held))


def score_row(scores: np.ndarray, test: EncodedData, m: int) -> dict:
    row = {k.removeprefix("auc."): v for k, v in slice_aucs(scores, test).items() if k.startswith("auc.")}
    row["gauc"] = gauc(scores, test)
    r = two_stage_recall(scores, scores, test, k=0, m=m)
    row.update(recall=r["light_recall_at_m"], ndcg=r["light_ndcg_at_m"])
    return row


def run_seed(cfg: HapConfig, train: EncodedData, test: EncodedData, ks: list[int], n_eval: int) -> dict:
    m = cfg.eval.m
    out: dict[str, dict] = {}
    models = {}
    light_losses = {
        "light+BCE-mixed": LossConfig(mode="bce"),
        "light+softmax-mixed": LossConfig(mode="softmax"),
        "light+GHCL": cfg.light_loss,
    }
    for name, loss in light_losses.items():
        t = time.perf_counter()
        model, hist = train_model(train, cfg.light, loss, cfg.train, DEFAULT_SPEC)
        out[name] = {**score_row(predict(model, test), test, m), "train_s": time.perf_counter() - t}
        out[name]["flops"] = flops_per_request(model, None, n_eval, 0)["total"]
        models[name] = (model, hist)
    light, light_hist = models["light+GHCL"]

    t = time.perf_counter()
    uniform, _ = train_model(train, cfg.expressive, cfg.light_loss, cfg.train, DEFAULT_SPEC)
    out["expressive on all (uniform)"] = {
        **score_row(predict(uniform, test), test, m),
        "train_s": time.perf_counter() - t,
        "flops": flops_per_request(uniform, None, n_eval, 0)["total"],
    }

    t = time.perf_counter()
    expr, _ = train_expressive(train, cfg, DEFAULT_SPEC)
    expr_s = time.perf_counter() - t
    s_light, s_expr = predict(light, test), predict(expr, test)
    out["expressive (hard-trained) alone"] = {
        **score_row(s_expr, test, m),
        "train_s": expr_s,
        "flops": flops_per_request(expr, None, n_eval, 0)["total"],
    }
    for k in ks:
        r = two_stage_recall(s_light, s_expr, test, k=k, m=m)
        out[f"HAP two-stage K={k}"] = {
            **{s: out["light+GHCL"][s] for s in SLICES},  # slices are the light (routing) model's
            "gauc": out["light+GHCL"]["gauc"],
            "recall": r["recall_at_m"],
            "ndcg": r["ndcg_at_m"],
            "train_s": out["light+GHCL"]["train_s"] + expr_s,
            "flops": flops_per_request(light, expr, n_eval, k)["total"],
        }
    out["_monitor"] = light_hist["grad_monitor"]
    return out


def summarize(runs: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    names = [n for n in runs[0] if not n.startswith("_")]
    return {
        n: {k: (float(np.mean([r[n][k] for r in runs])), float(np.std([r[n][k] for r in runs]))) for k in runs[0][n]}
        for n in names
    }


def table(summary: dict, m: int, n_eval: int) -> str:
    cols = [*SLICES, "gauc", "recall", "ndcg"]
    head = "| method | " + " | ".join(f"AUC {c}" if c in SLICES else c for c in cols)
    head += f" | FLOPs/request (N={n_eval}) | train s |"
    lines = [head.replace("recall", f"recall@{m}").replace("ndcg", f"NDCG@{m}"), "|" + "---|" * (len(cols) + 3)]
    for name, row in summary.items():
        cells = [f"{row[c][0]:.4f} ± {row[c][1]:.4f}" for c in cols]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {row['flops'][0] / 1e6:.2f} M | {row['train_s'][0]:.1f} |"
        )
    return "\n".join(lines)


def plot(summary: dict, path: Path, m: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    hap = [(v["flops"][0], v["recall"][0], v["recall"][1], n) for n, v in summary.items() if n.startswith("HAP")]
    ax.errorbar([h[0] / 1e6 for h in hap], [h[1] for h in hap], yerr=[h[2] for h in hap], marker="o", label="HAP")
    for h in hap:
        ax.annotate(h[3].split()[-1], (h[0] / 1e6, h[1]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    for name, marker in (("light+GHCL", "s"), ("expressive on all (uniform)", "^"), ("light+BCE-mixed", "x")):
        v = summary[name]
        ax.errorbar(v["flops"][0] / 1e6, v["recall"][0], yerr=v["recall"][1], marker=marker, ls="", label=name)
    ax.set_xlabel("MFLOPs per request")
    ax.set_ylabel(f"recall@{m} of positives")
    ax.set_title("Two-stage recall vs. compute (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--ks", type=int, nargs="+", default=[3, 6, 12, 24])
    args = p.parse_args()
    t0 = time.perf_counter()
    train, test = window(args.requests)
    n_eval = int(round(len(test.label) / test.n_requests))
    print(f"train: {train.n_requests} requests / {len(train.label)} samples; test: {test.n_requests} requests")
    base = HapConfig()
    runs = []
    for seed in args.seeds:
        cfg = replace(base, train=replace(base.train, seed=seed))
        runs.append(run_seed(cfg, train, test, args.ks, n_eval))
        print(f"seed {seed} done at {time.perf_counter() - t0:.0f}s")
    summary = summarize(runs)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    plot(summary, ROOT / "docs" / "quality_recall_vs_flops.png", base.eval.m)
    print(table(summary, base.eval.m, n_eval))
    mon = runs[0]["_monitor"]
    print("\ngradient conflict on shared layers (light+GHCL, seed 0): cosine between sources' gradients")
    for entry in (mon[0], mon[len(mon) // 2], mon[-1]):
        cos = ", ".join(f"{k} {v:+.2f}" for k, v in entry["cosine"].items())
        norms = ", ".join(f"{k} {v:.2f}" for k, v in entry["norm"].items())
        print(f"  step {entry['step']}: {cos}; norms {norms}")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
