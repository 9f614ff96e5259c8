"""Deploy a registered version to TorchServe: register it, smoke it, then make it the default.

- **Smoke.** Golden requests (rows and columns layouts) go to the new version by name; its answers
  must equal, ranking and scores, what the archive's own code answers offline. A failed smoke
  unregisters the new version, leaving the serving default exactly as it was.
- **One worker per served version.** After a deploy or rollback TorchServe holds production, the
  previous production version (kept warm for an instant rollback; ``serving.keep_previous``) and a
  shadow if one runs; every other version is unregistered, its worker stopped.
- **Shadow.** ``deploy(..., shadow=True)`` registers and smokes the version but leaves production the
  default; production's worker mirrors a sample of live requests to it (``hap_runtime.shadow``).
  ``promote_shadow`` makes it production; ``stop_shadow`` removes it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hap.config import HapConfig
from hap.contract import read_partition
from hap.workspace import Workspace, write_json_atomic
from hap_runtime.shadow import CONFIG_FILE as SHADOW_FILE
from hap_runtime.spec import DEFAULT_SPEC
from registry.store import Registry
from serving.archive import archive_answers, build_archive, extract_archive, mar_name
from serving.errors import DeployFailed, ServingError
from serving.server import LocalTorchServe

log = logging.getLogger(__name__)


def sample_request(data_root: str | Path, ds: str, n_candidates: int = 1000, seed: int = 0) -> dict[str, Any]:
    """A realistic request built from the day's logs: one logged user, N distinct logged items."""
    rng = np.random.default_rng(seed)
    reqs = read_partition(data_root, "requests", ds)
    cands = read_partition(data_root, "candidates", ds)
    user_row = reqs.slice(int(rng.integers(reqs.num_rows)), 1).to_pylist()[0]
    user_names = [f.name for f in DEFAULT_SPEC.columns("user")]
    item_names = [f.name for f in DEFAULT_SPEC.side("item")]
    _, first = np.unique(cands["item_id"].to_numpy(), return_index=True)
    pick = rng.permutation(first)[:n_candidates]
    items = cands.select(item_names).take(pick).to_pylist()
    return {"user": {k: user_row[k] for k in user_names}, "candidates": items}


def columnar(request: dict[str, Any]) -> dict[str, Any]:
    """The same request in the compact layout: one list per item feature under ``items``."""
    cands = request["candidates"]
    names = [f.name for f in DEFAULT_SPEC.side("item")]
    rest = {k: v for k, v in request.items() if k != "candidates"}
    return {**rest, "items": {n: [c[n] for c in cands] for n in names}}


def golden_answers(mar: Path, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the archive must answer, computed offline by the archive's own code."""
    with tempfile.TemporaryDirectory() as tmp:
        return archive_answers(extract_archive(mar, tmp), bodies)


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


def _registered(server: LocalTorchServe) -> set[str]:
    return {v["modelVersion"] for v in server.versions()}


def _ensure_registered(server: LocalTorchServe, version: str) -> None:
    """Register ``version`` from the model store unless TorchServe already has it."""
    if version in _registered(server):
        return
    mar = server.model_store / mar_name(version)
    if not mar.exists():
        raise ServingError(f"archive {mar} is missing; repackage version {version} (hap package)")
    server.register(mar.name)


def shadow_state(server: LocalTorchServe) -> dict[str, Any] | None:
    path = server.home / SHADOW_FILE
    return json.loads(path.read_text()) if path.exists() else None


def prune(ws: Workspace, server: LocalTorchServe) -> list[str]:
    """Unregister every version but production, the previous one (if kept) and a running shadow."""
    pointer = Registry(ws).production() or {}
    keep = {pointer.get("version")}
    if server.cfg.keep_previous:
        keep.add(pointer.get("previous"))
    shadow = shadow_state(server)
    if shadow:
        keep.add(shadow["shadow"])
    removed = []
    for version in sorted(_registered(server) - keep):
        if version != server.default_version():
            server.unregister(version)
            removed.append(version)
    if removed:
        log.info("unregistered %s (kept %s)", removed, sorted(v for v in keep if v))
    return removed


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


def clone_version(ws: Workspace, version: str, ds: str, nudge: float) -> str:
    """Register a copy of ``version`` for day ``ds`` with both heads' biases shifted by ``nudge``:
    distinct weights (so a new version), scores shifted by a constant (so the same rankings). Deploy
    drills and the serving benchmarks roll through such copies."""
    import shutil

    import torch

    registry = Registry(ws)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(_known_version(ws, version), run)
        for part in ("light", "expressive"):
            weights = run / part / "weights.pt"
            state = torch.load(weights, weights_only=True)
            state["head.bias"] = state["head.bias"] + nudge
            torch.save(state, weights)
        return registry.register(ds, run)


def _known_version(ws: Workspace, version: str) -> Path:
    registry = Registry(ws)
    vdir = registry.version_dir(version)
    if not (vdir / "manifest.json").exists():
        known = [m["version"] for m in registry.versions()][-5:]
        raise DeployFailed(f"unknown version {version!r}; latest registered versions: {known or 'none'}")
    return vdir


def deploy(
    ws: Workspace,
    version: str,
    cfg: HapConfig,
    server: LocalTorchServe,
    smoke_ds: str,
    reason: str = "",
    shadow: bool = False,
) -> dict[str, Any]:
    """Register → golden smoke → set default (or start shadowing). Any failure unregisters the new
    version: the model that was serving keeps serving. Holds the server's lock: one deploy,
    rollback or shadow change at a time, across processes."""
    with server.lock():
        return _deploy(ws, version, cfg, server, smoke_ds, reason, shadow)


def _deploy(
    ws: Workspace, version: str, cfg: HapConfig, server: LocalTorchServe, smoke_ds: str, reason: str, shadow: bool
) -> dict[str, Any]:
    registry = Registry(ws)
    version_dir = _known_version(ws, version)
    previous = ensure_serving(ws, server)
    if shadow and version == previous:
        raise DeployFailed(f"{version} is production already; nothing to shadow")
    mar = server.model_store / mar_name(version)
    if not mar.exists():
        build_archive(version_dir, version, cfg, server.model_store)
    newly_registered = version not in _registered(server)
    try:
        if newly_registered:
            server.register(mar.name)
        request = sample_request(ws.data, smoke_ds, n_candidates=min(1000, cfg.routing.max_candidates))
        bodies = [request, columnar({**request, "k": 20, "m": 60})]
        for body, expected in zip(bodies, golden_answers(mar, bodies), strict=True):
            problem = smoke_check(server.predict(body, version=version), expected)
            if problem:
                layout = "columns" if "items" in body else "rows"
                raise DeployFailed(f"smoke request ({layout}) to version {version} failed: {problem}")
        if not shadow or previous is None:
            server.set_default(version)
    except Exception as exc:
        if newly_registered and version != previous:
            try:
                server.unregister(version)
            except Exception as cleanup:  # the next prune removes it; the deploy's own failure is the news
                log.warning("could not unregister %s after its failed deploy: %s", version, cleanup)
        raise DeployFailed(f"deploy of {version} failed, still serving {previous}: {exc}") from exc
    if shadow and previous is None:
        log.warning("no production version to shadow: %s becomes production directly", version)
    elif shadow:
        state = {"production": previous, "shadow": version, "sample": cfg.serving.shadow_sample,
                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": reason}  # fmt: skip
        old = shadow_state(server)
        write_json_atomic(server.home / SHADOW_FILE, state)
        registry.record_event("shadow_start", **state)
        if old and old["shadow"] != version:
            prune(ws, server)
        log.info("shadowing %s beside production %s", version, previous)
        return {"version": version, "previous": previous, "shadow": state, "archive": str(mar)}
    pointer = registry.set_production(version, reason=reason or f"daily deploy ds={smoke_ds}")
    _clear_shadow(server, registry, version)
    removed = prune(ws, server)
    log.info("deployed %s (previous %s)", version, previous)
    return {
        "version": version,
        "previous": previous,
        "production": pointer,
        "archive": str(mar),
        "unregistered": removed,
    }


def _clear_shadow(server: LocalTorchServe, registry: Registry, production: str, why: str = "") -> None:
    """End a running shadow, recording why: ``promoted`` when it became production, else ``why`` or
    ``replaced``."""
    state = shadow_state(server)
    if state:
        (server.home / SHADOW_FILE).unlink(missing_ok=True)
        outcome = "promoted" if state["shadow"] == production else why or "replaced"
        registry.record_event("shadow_end", shadow=state["shadow"], outcome=outcome, production=production)


def rollback(ws: Workspace, server: LocalTorchServe, reason: str) -> dict[str, Any]:
    """Make the previous production version the default again, in TorchServe and in the registry."""
    with server.lock():
        return _rollback(ws, server, reason)


def _rollback(ws: Workspace, server: LocalTorchServe, reason: str) -> dict[str, Any]:
    registry = Registry(ws)
    current = registry.production()
    if not current or not current.get("previous"):
        raise DeployFailed("nothing to roll back to: no previous production version recorded")
    target = current["previous"]
    server.start()
    _ensure_registered(server, target)
    server.set_default(target)
    pointer = registry.set_production(target, reason=f"rollback from {current['version']}: {reason}")
    _clear_shadow(server, registry, target, "stopped by rollback")
    prune(ws, server)
    log.warning("rolled back %s -> %s (%s)", current["version"], target, reason)
    return pointer


def shadow_report(server: LocalTorchServe) -> dict[str, Any]:
    """The running shadow and what its mirrored requests showed, per version."""
    state = shadow_state(server)
    out: dict[str, Any] = {"shadow": state, "versions": {}}
    for path in sorted((server.home / "shadow").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        ok = [r for r in rows if r.get("status") == 200]
        corr = [r["rank_corr"] for r in ok if r.get("rank_corr") is not None]

        def pct(values: list[float], q: float) -> float | None:
            return float(np.percentile(values, q)) if values else None

        out["versions"][path.stem] = {
            "requests": len(rows),
            "failed": len(rows) - len(ok),
            "mean_overlap": float(np.mean([r["overlap"] for r in ok])) if ok else None,
            "mean_rank_corr": float(np.mean(corr)) if corr else None,
            "production_worker_ms_p50": pct([r["production_worker_ms"] for r in ok], 50),
            "shadow_worker_ms_p50": pct([r["shadow_worker_ms"] for r in ok if r.get("shadow_worker_ms")], 50),
            "shadow_worker_ms_p99": pct([r["shadow_worker_ms"] for r in ok if r.get("shadow_worker_ms")], 99),
        }
    return out


def promote_shadow(ws: Workspace, cfg: HapConfig, server: LocalTorchServe, reason: str) -> dict[str, Any]:
    """Make the running shadow version production (it was smoked when it started shadowing)."""
    with server.lock():
        return _promote_shadow(ws, server, reason)


def _promote_shadow(ws: Workspace, server: LocalTorchServe, reason: str) -> dict[str, Any]:
    state = shadow_state(server)
    if not state:
        raise DeployFailed("no shadow version is running (start one with hap deploy --shadow)")
    version = state["shadow"]
    if version not in _registered(server):
        raise DeployFailed(f"shadow version {version} is not registered in TorchServe any more")
    server.set_default(version)
    registry = Registry(ws)
    pointer = registry.set_production(version, reason=f"shadow promoted: {reason}")
    _clear_shadow(server, registry, version)
    prune(ws, server)
    return pointer


def stop_shadow(ws: Workspace, server: LocalTorchServe, reason: str) -> str:
    """Stop mirroring to the shadow version and unregister it."""
    with server.lock():
        state = shadow_state(server)
        if not state:
            raise DeployFailed("no shadow version is running")
        _clear_shadow(server, Registry(ws), state["production"], f"stopped: {reason}")
        prune(ws, server)
        return state["shadow"]
