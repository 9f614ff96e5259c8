"""The training entry point: one model on prepared shards, as the whole job or as one DDP rank.

The KFP component calls ``train_worker`` in its own process; ``torchrun`` (here) and a Kubeflow
PyTorchJob (on a cluster) launch ``python -m torch.distributed.run … -m models.worker --prepared …``.
torchrun restarts the whole group when a worker dies; workers then resume from rank 0's last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from hap.config import HapConfig
from hap.workspace import write_json_atomic
from hap_runtime.nets import load_model, save_model
from models import distributed
from models.prepare import TRAIN_DIR, VALID_DIR, prepared_spec
from models.snapshot import write_snapshot
from models.stream import ShardStream, read_shards, shard_files
from models.train import checkpoint_files, train_expressive, train_light


def train_worker(
    prepared_dir: str, which: str, cfg: HapConfig, out_dir: str, checkpoint: str | None = None, init_dir: str = ""
) -> dict:
    """Train ``which`` ∈ {"light", "expressive"} on the prepared shards, streamed. One rank of a DDP
    job under torchrun, or the whole job when run alone. Rank 0 saves the model to ``out_dir``.
    ``init_dir``: the same day's light model, which the expressive model warm-starts from."""
    ctx = distributed.init(cfg.train.device)
    try:
        data = ShardStream(shard_files(Path(prepared_dir) / TRAIN_DIR))
        valid_files = shard_files(Path(prepared_dir) / VALID_DIR)
        valid = read_shards(valid_files) if valid_files else None
        spec = prepared_spec(prepared_dir)  # the fitted transforms: they travel in the model's model.json
        ckpt = Path(checkpoint) if checkpoint else Path(str(Path(out_dir)) + ".ckpt")
        if which == "light":
            model, history = train_light(data, cfg, spec, ctx=ctx, checkpoint=ckpt, valid=valid)
        elif which == "expressive":
            light = load_model(init_dir) if init_dir else None
            model, history = train_expressive(data, cfg, spec, light=light, valid=valid, ctx=ctx, checkpoint=ckpt)
        else:
            raise ValueError(f"which must be 'light' or 'expressive', got {which!r}")
        if ctx.is_main:
            save_model(model.cpu(), out_dir)
            if which == "light":  # the items a version can score by id (and a decoupled model's item vectors)
                history["snapshot_items"] = write_snapshot(model, prepared_dir, out_dir)
            write_json_atomic(Path(out_dir) / "history.json", history)
            for path in checkpoint_files(ckpt, model.cfg.members):  # the model is written: a later run starts fresh
                path.unlink(missing_ok=True)
        distributed.barrier(ctx)
    finally:
        distributed.shutdown(ctx)
    return history


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.worker", description="Train one HAP model (a DDP rank).")
    p.add_argument("--prepared", required=True, help="prepare step's output folder (train/ shards)")
    p.add_argument("--which", choices=("light", "expressive"), required=True)
    p.add_argument("--config", required=True, help="HapConfig JSON file")
    p.add_argument("--out", required=True, help="model folder, written by rank 0")
    p.add_argument("--checkpoint", default="", help="checkpoint file (default: <out>.ckpt)")
    p.add_argument("--init", default="", help="light model folder to warm-start the expressive model from")
    return p


def main(argv: list[str] | None = None) -> None:
    """Worker entry point: train one model on the prepared shards; rank 0 writes the model."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ.get('RANK', '0')}] %(levelname)s %(message)s")
    cfg = HapConfig.from_json(open(args.config).read())
    train_worker(args.prepared, args.which, cfg, args.out, args.checkpoint or None, init_dir=args.init)


if __name__ == "__main__":
    main()
