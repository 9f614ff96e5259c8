"""The light pass over candidates sent by id: a decoupled light model reading the item snapshot's
stored vectors vs the same model and today's interaction model computing the item side from the
features, in-process, one request of N candidates, parsing excluded (``StageTimes.light_ms``).

Models are freshly initialised (timing does not depend on the weights) with the embedded feature
spec; the snapshot holds ``--items`` random items, the request N of them. One torch thread, as each
of the two serving workers on the 2-core machine.

Run: .venv/bin/python bench/bench_decoupled.py [--n 10000] [--items 50000] [--repeats 50]
Prints a Markdown table and writes bench/results/decoupled.json.
"""

import argparse
import json
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from hap_runtime.codec import ParsedRequest
from hap_runtime.config import ModelConfig, RoutingConfig
from hap_runtime.nets import PreRanker, save_model
from hap_runtime.scorer import TwoStageScorer
from hap_runtime.snapshot import SNAPSHOT_FILE, ItemSnapshot
from hap_runtime.spec import DEFAULT_SPEC

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("two_tower", "ranktower", "interaction")


def version_dir(root: Path, arch: str, n_items: int) -> Path:
    torch.manual_seed(0)
    light = PreRanker(ModelConfig(arch=arch), DEFAULT_SPEC).eval()
    save_model(light, root / "light")
    save_model(PreRanker(ModelConfig(attention=True, mlp_dims=(128, 64, 32)), DEFAULT_SPEC), root / "expressive")
    feats = light.item_feats
    item_x = torch.stack([torch.randint(1, f.table_size, (n_items,)) for f in feats], dim=1)  # (S, Fi)
    with torch.no_grad():
        vectors = light.item_side(item_x) if arch != "interaction" else None
    ItemSnapshot(torch.arange(1, n_items + 1), item_x, vectors).save(root / "light" / SNAPSHOT_FILE)
    (root / "routing.json").write_text(json.dumps(asdict(RoutingConfig(k=0, m=50, max_candidates=n_items))))
    return root


def light_ms(scorer: TwoStageScorer, req: ParsedRequest, repeats: int) -> float:
    for _ in range(3):
        scorer.score_batch([req])
    return statistics.median(scorer.score_batch([req])[1].light_ms for _ in range(repeats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for arch in ARCHS:
        with tempfile.TemporaryDirectory() as tmp:
            scorer = TwoStageScorer(version_dir(Path(tmp), arch, args.items))
            user = {f.name: 1 for f in DEFAULT_SPEC.side("user")}
            body = {"user": {**user, "device": "ios", "network": "wifi", "hist_item_ids": list(range(1, 51))},
                    "item_ids": torch.randperm(args.items)[: args.n].add(1).tolist(), "k": 0}  # fmt: skip
            by_id = scorer.parse(body)
            by_features = ParsedRequest(by_id.user_x, by_id.seq, by_id.item_x, by_id.item_ids, 0, 50, 0)
            row = {"arch": arch, "by_features_ms": light_ms(scorer, by_features, args.repeats)}
            if scorer.snapshot.vectors is not None:
                row["by_id_stored_vectors_ms"] = light_ms(scorer, by_id, args.repeats)
            rows.append(row)
    print(f"| light model | N = {args.n:,} by id, stored item vectors (ms) | item side from features (ms) |")
    print("|---|---|---|")
    for r in rows:
        stored = r.get("by_id_stored_vectors_ms")
        print(f"| {r['arch']} | {'—' if stored is None else f'{stored:.2f}'} | {r['by_features_ms']:.2f} |")
    out = ROOT / "bench" / "results" / "decoupled.json"
    out.write_text(json.dumps({"n": args.n, "items": args.items, "threads": 1, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
