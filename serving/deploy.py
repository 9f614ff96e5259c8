"""Deploy a registered version to TorchServe: register it, smoke it, then make it the default.

A failed smoke unregisters the new version, leaving the serving default exactly as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hap.config import HapConfig
from hap.contract import read_partition
from hap.features import DEFAULT_SPEC
from hap.registry import Registry
from hap.workspace import Workspace
from serving.archive import build_archive, mar_name
from serving.server import LocalTorchServe, ServingError

log = logging.getLogger(__name__)


class DeployFailed(RuntimeError):
    pass


def sample_request(data_root: str | Path, ds: str, n_candidates: int = 1000, seed: int = 0) -> dict[str, Any]:
    """A realistic request built from the day's logs: one logged user, N distinct logged items."""
    rng = np.random.default_rng(seed)
    reqs = read_partition(data_root, "requests", ds)
    cands = read_partition(data_root, "candidates", ds)
    user_row = reqs.slice(int(rng.integers(reqs.num_rows)), 1).to_pylist()[0]
    user_names = [f.name for f in DEFAULT_SPEC.features if f.side == "user"]
    item_names = [f.name for f in DEFAULT_SPEC.side("item")]
    _, first = np.unique(cands["item_id"].to_numpy(), return_index=True)
    pick = rng.permutation(first)[:n_candidates]
    items = cands.select(item_names).take(pick).to_pylist()
    return {"user": {k: user_row[k] for k in user_names}, "candidates": items}


def golden_answer(version_dir: Path, version: str, cfg: HapConfig, request: dict[str, Any]) -> dict[str, Any]:
    """What the version must answer, computed offline by the same scorer the handler wraps."""
    import tempfile

    from serving.archive import stage_bundle
    from serving.scorer import TwoStageScorer

    with tempfile.TemporaryDirectory() as tmp:
        return TwoStageScorer(stage_bundle(version_dir, version, cfg.routing, Path(tmp) / "b"))(request)


def smoke_check(response, expected: dict[str, Any], tolerance: float = 1e-4) -> str | None:
    """What is wrong with a served answer compared with the offline golden answer, or None."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    body = response.json()
    if body.get("model_version") != expected["model_version"]:
        return f"answered by version {body.get('model_version')}, expected {expected['model_version']}"
    got, want = body.get("items", []), expected["items"]
    if [it["item_id"] for it in got] != [it["item_id"] for it in want]:
        return f"ranking differs from the offline evaluation ({len(got)} vs {len(want)} items)"
    worst = max((abs(g["score"] - w["score"]) for g, w in zip(got, want, strict=True)), default=0.0)
    if not worst <= tolerance:
        return f"scores differ from the offline evaluation by up to {worst:.2e} (tolerance {tolerance})"
    return None


def _ensure_registered(server: LocalTorchServe, version: str) -> None:
    """Register ``version`` from the model store unless TorchServe already has it."""
    if version in {v["modelVersion"] for v in server.versions()}:
        return
    mar = server.model_store / mar_name(version)
    if not mar.exists():
        raise ServingError(f"archive {mar} is missing; repackage version {version}")
    server.register(mar.name)


def ensure_serving(ws: Workspace, server: LocalTorchServe) -> str | None:
    """Start TorchServe if needed and make sure the registry's production version is the default."""
    server.start()
    prod = Registry(ws).production()
    if not prod:
        return None
    version = prod["version"]
    _ensure_registered(server, version)
    if server.default_version() != version:
        server.set_default(version)
    return version


def deploy(
    ws: Workspace, version: str, cfg: HapConfig, server: LocalTorchServe, smoke_ds: str, reason: str = ""
) -> dict[str, Any]:
    """Register → golden smoke → set default. Any failure unregisters the new version: the model
    that was serving keeps serving."""
    registry = Registry(ws)
    previous = ensure_serving(ws, server)
    mar = server.model_store / mar_name(version)
    if not mar.exists():
        build_archive(registry.version_dir(version), version, cfg, server.model_store)
    newly_registered = version not in {v["modelVersion"] for v in server.versions()}
    try:
        if newly_registered:
            server.register(mar.name)
        request = sample_request(ws.data, smoke_ds, n_candidates=min(1000, cfg.routing.max_candidates))
        expected = golden_answer(registry.version_dir(version), version, cfg, request)
        problem = smoke_check(server.predict(request, version=version), expected)
        if problem:
            raise DeployFailed(f"smoke request to version {version} failed: {problem}")
    except Exception as exc:
        if newly_registered and version != previous:
            server.unregister(version)
        raise DeployFailed(f"deploy of {version} failed, still serving {previous}: {exc}") from exc
    server.set_default(version)
    pointer = registry.set_production(version, reason=reason or f"daily deploy ds={smoke_ds}")
    log.info("deployed %s (previous %s)", version, previous)
    return {"version": version, "previous": previous, "production": pointer, "archive": str(mar)}


def rollback(ws: Workspace, server: LocalTorchServe, reason: str) -> dict[str, Any]:
    """Make the previous production version the default again, in TorchServe and in the registry."""
    registry = Registry(ws)
    current = registry.production()
    if not current or not current.get("previous"):
        raise DeployFailed("nothing to roll back to: no previous production version recorded")
    target = current["previous"]
    server.start()
    _ensure_registered(server, target)
    server.set_default(target)
    pointer = registry.set_production(target, reason=f"rollback from {current['version']}: {reason}")
    log.warning("rolled back %s -> %s (%s)", current["version"], target, reason)
    return pointer
