"""Helpers the serving tests share (local TorchServe and KServe): a workspace holding a small day's
logs, registered versions with distinct weights, and the comparison of two answers."""

from __future__ import annotations

import json
from pathlib import Path

from hap.config import HapConfig, TrainConfig
from hap.contract import write_partition
from hap.workspace import Workspace
from hap_runtime.nets import save_model
from hap_runtime.spec import DEFAULT_SPEC
from models.data import encode_tables
from models.train import train_expressive, train_light
from registry.store import Registry
from serving.deploy import clone_version

DS = "2026-11-20"


def make_versions(ws: Workspace, small_day, n: int) -> list[str]:
    """``n`` registered versions with distinct weights: one small trained pair and its nudged clones."""
    data = encode_tables(small_day.requests, small_day.candidates, DEFAULT_SPEC, "click")
    tcfg = HapConfig(train=TrainConfig(epochs=1, batch_requests=64))
    run = ws.root / "runs" / f"ds={DS}"
    light = train_light(data, tcfg, DEFAULT_SPEC)[0]
    save_model(light, run / "light")
    save_model(train_expressive(data, tcfg, DEFAULT_SPEC, light=light)[0], run / "expressive")
    evaluation = {"holdout": {"days": [DS], "ds": DS}, "candidate": {"light.auc.overall": 0.8}}
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    first = Registry(ws).register("2026-10-01", run)
    return [first, *(clone_version(ws, first, f"2026-10-{i + 1:02d}", 0.01 * i) for i in range(1, n))]


def day_workspace(root: Path, small_day) -> Workspace:
    """A workspace holding the small day's logs (the smoke requests are built from them)."""
    ws = Workspace(root)
    write_partition(ws.data, "requests", DS, small_day.requests)
    write_partition(ws.data, "candidates", DS, small_day.candidates)
    return ws


def same_answer(got: dict, want: dict) -> None:
    """Same ranking and stages; scores equal up to float summation order (batched vs alone)."""
    assert [(it["item_id"], it["stage"]) for it in got["items"]] == [
        (it["item_id"], it["stage"]) for it in want["items"]
    ]
    assert max(abs(g["score"] - w["score"]) for g, w in zip(got["items"], want["items"], strict=True)) < 1e-5
