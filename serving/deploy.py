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


def smoke_check(response, version: str, request: dict[str, Any], m: int) -> str | None:
    """Return what is wrong with a smoke answer, or None when it is a proper ranked top-M."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    body = response.json()
    items = body.get("items", [])
    if body.get("model_version") != version:
        return f"answered by version {body.get('model_version')}, expected {version}"
    if len(items) != min(m, len(request["candidates"])):
        return f"{len(items)} items returned, expected {min(m, len(request['candidates']))}"
    if [it["rank"] for it in items] != list(range(1, len(items) + 1)):
        return "ranks are not 1..M"
    if not all(np.isfinite(it["score"]) for it in items):
        return "non-finite scores"
    return None


def ensure_serving(ws: Workspace, server: LocalTorchServe) -> str | None:
    """Start TorchServe if needed and make sure the registry's production version is the default."""
    server.start()
    prod = Registry(ws).production()
    if not prod:
        return None
    version = prod["version"]
    if version not in {v["modelVersion"] for v in server.versions()}:
        mar = server.model_store / mar_name(version)
        if not mar.exists():
            raise ServingError(f"production archive {mar} is missing; repackage version {version}")
        server.register(mar.name)
    if server.default_version() != version:
        server.set_default(version)
    return version


def deploy(ws: Workspace, version: str, cfg: HapConfig, server: LocalTorchServe, smoke_ds: str) -> dict[str, Any]:
    registry = Registry(ws)
    previous = ensure_serving(ws, server)
    mar = server.model_store / mar_name(version)
    if not mar.exists():
        build_archive(registry.version_dir(version), version, cfg.routing, server.model_store)
    newly_registered = version not in {v["modelVersion"] for v in server.versions()}
    if newly_registered:
        server.register(mar.name)
    request = sample_request(ws.data, smoke_ds, n_candidates=min(1000, cfg.routing.max_candidates))
    problem = smoke_check(server.predict(request, version=version), version, request, cfg.routing.m)
    if problem:
        if newly_registered and version != previous:
            server.unregister(version)
        raise DeployFailed(f"smoke request to version {version} failed: {problem}; still serving {previous}")
    server.set_default(version)
    pointer = registry.set_production(version, reason=f"daily deploy ds={smoke_ds}")
    log.info("deployed %s (previous %s)", version, previous)
    return {"version": version, "previous": previous, "production": pointer, "archive": str(mar)}
