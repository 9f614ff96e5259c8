"""Light-model benchmark: does each light architecture × loss beat its own features, on a real log
and on simulated worlds? Everything goes through the pipeline's own prepare step (fitted transforms,
the held-out and validation splits, the baselines' earlier-days item rate).

Data:
- the MIND slice (``../shared/data/mind-small-slice``) through ``hap ingest``'s code with
  ``configs/real_logs.yaml``; every day with two earlier days is a run day (window of 3 days), its
  held-out requests pooled across days;
- simulated worlds β ∈ {0, 4}: 3 days × ``--requests``, the last one the run day.

Rows: each light variant (``VARIANTS``) and the baselines (each numeric item feature alone, the
earlier-days item click rate). Columns: AUC per slice, GAUC, Recall@100 and NDCG@100 of clicked
items among each request's candidates, the margin of expose AUC over the best single feature with
its paired-bootstrap 95% interval (same pooled requests), Recall@100 vs today's default
(interaction × GHCL) with its paired interval, FLOPs per candidate (N = 1,000), training samples/s.

Run: .venv/bin/python bench/bench_models.py [--worlds mind 0 4] [--requests 1500] [--boot 500]
[--buckets N] [--tag T] [--variants NAME ...]. Writes bench/results/models[-T].json and docs/models_margin[-T].png; prints
a Markdown table.
"""

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hap import SLICES
from hap.config import HapConfig, LossConfig, TransformConfig
from hap.workspace import Workspace
from hap_runtime.config import ModelConfig
from models.baselines import baseline_scores
from models.data import EncodedData
from models.evaluation import baseline_margins, bootstrap_mean_ci, held_out_views
from models.metrics import flops_per_request, gauc, predict, ranking_at, slice_aucs
from models.prepare import TRAIN_DIR, VALID_DIR, prepare, prepared_spec
from models.stream import ShardStream, read_shards, shard_files
from models.train import train_model

ROOT = Path(__file__).resolve().parents[1]
MIND = ROOT.parent / "shared" / "data" / "mind-small-slice"
AT = 100
DEFAULT = "interaction × ghcl"
TWO_TOWER = ModelConfig(arch="two_tower")
RANKTOWER = ModelConfig(arch="ranktower")
# RankTower's hybrid loss: pointwise BCE, the graded listwise term on exposed items, distillation of
# the logged ranking stage's order (models.losses)
HYBRID = LossConfig(mode="bce", listwise_weight=1.0, distill_weight=0.5)
VARIANTS = {  # name: (light model, light loss)
    DEFAULT: (ModelConfig(), LossConfig()),
    "interaction × bce": (ModelConfig(), LossConfig(mode="bce")),
    "interaction(cumulative) × bce": (ModelConfig(numeric="cumulative"), LossConfig(mode="bce")),
    "interaction(linear) × bce": (ModelConfig(numeric="linear"), LossConfig(mode="bce")),
    "interaction(linear) ×3 × bce": (ModelConfig(numeric="linear", members=3), LossConfig(mode="bce")),
    "interaction(linear) ×5 × bce": (ModelConfig(numeric="linear", members=5), LossConfig(mode="bce")),
    "interaction × softmax": (ModelConfig(), LossConfig(mode="softmax")),
    "interaction × hybrid": (ModelConfig(), HYBRID),
    "two_tower(cosine) × bce": (TWO_TOWER, LossConfig(mode="bce")),
    "two_tower(dot) × bce": (dataclasses.replace(TWO_TOWER, similarity="dot"), LossConfig(mode="bce")),
    "ranktower × bce": (RANKTOWER, LossConfig(mode="bce")),
    "ranktower × hybrid": (RANKTOWER, HYBRID),
}


def mind_runs(root: Path, buckets: int = 0) -> tuple[HapConfig, list[Path]]:
    from samples.ingest import ingest

    cfg = HapConfig.load(ROOT / "configs" / "real_logs.yaml")
    if buckets:  # another resolution than the shipped fit
        cfg = dataclasses.replace(cfg, transform=dataclasses.replace(cfg.transform, buckets=buckets))
    ws = Workspace(root)
    days = ingest(MIND / "behaviors.tsv", "mind", ws.data, cfg, news=MIND / "news.tsv")
    for day in days:
        ws.record_validation(day, {"success": True})  # the daily DAG's GX verdict: every MIND day passes it
    return cfg, [_prepare(root, day, cfg) for day in days[2:]]  # the days with two earlier days


def sim_runs(root: Path, beta: float, n_requests: int) -> tuple[HapConfig, list[Path]]:
    from samples.simulator import CascadeSimulator

    cfg = HapConfig()
    cfg = dataclasses.replace(
        cfg, sim=dataclasses.replace(cfg.sim, session_beta=beta), transform=TransformConfig(fit=True)
    )
    ws = Workspace(root)
    days = CascadeSimulator(cfg.sim).write_days(ws.data, "2026-11-20", 3, n_requests)
    for day in days:
        ws.record_validation(day, {"success": True})
    return cfg, [_prepare(root, days[-1], cfg)]


def _prepare(root: Path, ds: str, cfg: HapConfig) -> Path:
    out = root / f"prepared-{ds}"
    prepare(str(root), ds, cfg, str(out))
    return out


def run_world(cfg: HapConfig, prepared: list[Path], n_boot: int, variants: dict = VARIANTS) -> dict:
    """Every variant trained per run day; held-out requests and scores pooled over the days."""
    helds, raws_scores, scores = [], [], {v: [] for v in variants}
    speed, flops = {v: [] for v in variants}, {}
    for prep in prepared:
        spec = prepared_spec(prep)
        held, _, raw = held_out_views(prep, spec, cfg)
        helds.append(held)
        raws_scores.append(baseline_scores(raw, spec, prep))
        stream, valid = ShardStream(shard_files(prep / TRAIN_DIR)), read_shards(shard_files(prep / VALID_DIR))
        for name, (model_cfg, loss_cfg) in variants.items():
            model, history = train_model(stream, model_cfg, loss_cfg, cfg.train, spec, valid=valid, name=name)
            scores[name].append(predict(model, held))
            speed[name].append(np.mean([e["samples_per_s"] for e in history["epochs"]]))
            flops[name] = flops_per_request(model, None, 1000, 0)["light"] / 1000
    held = EncodedData.concat(helds)
    names = set.intersection(*(set(s) for s in raws_scores))
    baselines = {n: np.concatenate([s[n] for s in raws_scores]) for n in sorted(names)}
    pooled = {name: np.concatenate(parts) for name, parts in scores.items()}
    recall_default, _ = ranking_at(pooled[DEFAULT], held, AT)
    rows = []
    for name, s in pooled.items():
        margins, intervals, summary = baseline_margins(s, held, baselines, n_boot)
        recall, ndcg = ranking_at(s, held, AT)
        rows.append({
            "row": name, **_aucs(s, held), "gauc": gauc(s, held),
            f"recall@{AT}": float(np.nanmean(recall)), f"ndcg@{AT}": float(np.nanmean(ndcg)),
            "best_feature": summary["best_feature"], "margin": margins["light_vs_best_feature.auc.expose"],
            "margin_ci95": intervals["light_vs_best_feature.auc.expose"],
            "recall_vs_default": float(np.nanmean(recall - recall_default)),
            "recall_vs_default_ci95": bootstrap_mean_ci(recall - recall_default, n_boot),
            "flops_per_candidate": flops[name], "samples_per_s": float(np.mean(speed[name])),
        })  # fmt: skip
    for name in summary["aucs"]:  # the baselines, as the last variant's summary named them
        score = baselines[name.removesuffix(" (reversed)")]
        if name.endswith(" (reversed)"):
            score = np.where(np.isfinite(score), -score, -np.inf)
        recall, ndcg = ranking_at(score, held, AT)
        rows.append({"row": f"baseline: {name}", **_aucs(score, held), "gauc": gauc(score, held),
                     f"recall@{AT}": float(np.nanmean(recall)), f"ndcg@{AT}": float(np.nanmean(ndcg))})  # fmt: skip
    return {"requests": held.n_requests, "candidates": len(held.label), "days": len(prepared), "rows": rows}


def _aucs(scores: np.ndarray, held: EncodedData) -> dict[str, float]:
    return {f"auc.{s}": v for s, v in ((s, slice_aucs(scores, held)[f"auc.{s}"]) for s in SLICES)}


def markdown(world: str, result: dict) -> str:
    head = ["row", *(f"AUC {s}" for s in SLICES), "GAUC", f"R@{AT}", f"N@{AT}", "margin vs best feature [95% CI]",
            f"R@{AT} vs default [95% CI]", "FLOPs/cand", "samples/s"]  # fmt: skip
    lines = [f"### {world}: {result['requests']} held-out requests, {result['candidates']} candidates, "
             f"{result['days']} run day(s)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip

    def f(v, d=4):
        return "—" if v is None else f"{v:.{d}f}"

    for r in result["rows"]:
        margin = (
            f"{r['margin']:+.4f} [{r['margin_ci95'][0]:+.4f}, {r['margin_ci95'][1]:+.4f}] ({r['best_feature']})"
            if "margin" in r
            else "—"
        )
        rec = f"{r['recall_vs_default']:+.4f} [{r['recall_vs_default_ci95'][0]:+.4f}, {r['recall_vs_default_ci95'][1]:+.4f}]" if "margin" in r else "—"  # fmt: skip
        lines.append("| " + " | ".join([r["row"], *(f(r[f"auc.{s}"]) for s in SLICES), f(r["gauc"]), f(r[f"recall@{AT}"]),
                                         f(r[f"ndcg@{AT}"]), margin, rec, f(r.get("flops_per_candidate"), 0),
                                         f(r.get("samples_per_s"), 0)]) + " |")  # fmt: skip
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.2), squeeze=False)
    for ax, (world, result) in zip(axes[0], results.items(), strict=True):
        rows = [r for r in result["rows"] if "margin" in r]
        y = np.arange(len(rows))
        lo = [r["margin"] - r["margin_ci95"][0] for r in rows]
        hi = [r["margin_ci95"][1] - r["margin"] for r in rows]
        ax.errorbar([r["margin"] for r in rows], y, xerr=[lo, hi], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(y, [r["row"] for r in rows], fontsize=7)
        ax.set_title(f"{world}: expose AUC − best feature", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", nargs="+", default=["mind", "0", "4"], help="mind and/or simulated β values")
    p.add_argument("--requests", type=int, default=1500, help="requests per simulated day")
    p.add_argument("--boot", type=int, default=500)
    p.add_argument("--buckets", type=int, default=0, help="the MIND world's fitted buckets (default: real_logs.yaml's)")
    p.add_argument("--tag", default="", help="suffix of the outputs' names (a partial run keeps the full one's)")
    p.add_argument("--variants", nargs="+", default=None, help=f"rows to train beside {DEFAULT!r} (default: all)")
    args = p.parse_args()
    unknown = set(args.variants or ()) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    variants = {n: v for n, v in VARIANTS.items() if args.variants is None or n == DEFAULT or n in args.variants}
    results: dict[str, dict] = {}
    t0 = time.time()
    for w in args.worlds:
        with tempfile.TemporaryDirectory() as tmp:
            cfg, prepared = (
                mind_runs(Path(tmp), args.buckets) if w == "mind" else sim_runs(Path(tmp), float(w), args.requests)
            )
            name = "MIND slice" if w == "mind" else f"simulated β = {w}"
            results[name] = run_world(cfg, prepared, args.boot, variants)
            print(markdown(name, results[name]), "\n", flush=True)
    suffix = f"-{args.tag}" if args.tag else ""
    out, png = ROOT / "bench" / "results" / f"models{suffix}.json", ROOT / "docs" / f"models_margin{suffix}.png"
    out.write_text(json.dumps({"seconds": time.time() - t0, "worlds": results}, indent=1))
    plot(results, png)
    print(f"wrote {out} and {png} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
