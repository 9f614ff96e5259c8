"""Deploy a registered version: stage it, smoke it, then make it serve (``roll_out`` in ``_deploy``).

The decision is one code path for both targets: the local TorchServe (``LocalTarget``: register the
version by name, make it the default) and KServe (``serving.kserve.KServeTarget``: publish, canary
rollout, promote or roll back the InferenceService).

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

import contextlib
import fcntl
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator
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
from serving.kserve import Answer, KServeTarget, version_uri
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


def smoke_check(answer: Answer, expected: dict[str, Any], tolerance: float = 1e-4) -> str | None:
    """What is wrong with a served answer compared with the offline golden answer, or None."""
    if answer.status != 200:
        return f"HTTP {answer.status}: {answer.text[:300]}"
    body = json.loads(answer.text)
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
            for bias in _logit_biases(state):  # every member's: the ensemble's mean moves by nudge too
                state[bias] = state[bias] + nudge
            torch.save(state, weights)
        return registry.register(ds, run)


def _logit_biases(state: dict) -> list[str]:
    """The keys of the logit's own bias, whatever the architecture; one per member of an ensemble."""
    own = ("head.bias", "similarity.bias", "ranktower.similarity.bias")
    keys = [k for k in state if re.sub(r"^members\.\d+\.", "", k) in own]
    if not keys:
        raise DeployFailed(f"no logit bias among the weights' keys ({', '.join(list(state)[:5])}, …)")
    return keys


def _known_version(ws: Workspace, version: str) -> Path:
    registry = Registry(ws)
    vdir = registry.version_dir(version)
    if not (vdir / "manifest.json").exists():
        known = [m["version"] for m in registry.versions()][-5:]
        raise DeployFailed(f"unknown version {version!r}; latest registered versions: {known or 'none'}")
    return vdir


class LocalTarget:
    """The local TorchServe as ``roll_out``'s target: stage = register the version by name, ask =
    requests to that version, promote = make it the default, withdraw = unregister it if this
    deploy registered it."""

    kind = "local"

    def __init__(self, ws: Workspace, server: LocalTorchServe) -> None:
        self.ws, self.server, self.newly_registered = ws, server, False

    def serving(self) -> str | None:
        return ensure_serving(self.ws, self.server)

    def stage(self, version: str, mar: Path, previous: str | None) -> None:
        self.newly_registered = version not in _registered(self.server)
        if self.newly_registered:
            self.server.register(mar.name)

    def ask(self, version: str, bodies: list[dict[str, Any]]) -> list[Answer]:
        return [Answer(r.status_code, r.text) for r in (self.server.predict(b, version=version) for b in bodies)]

    def promote(self, version: str) -> None:
        self.server.set_default(version)

    def withdraw(self, version: str, previous: str | None) -> None:
        if self.newly_registered and version != previous:
            self.server.unregister(version)

    def restore(self, version: str) -> None:
        self.server.start()
        _ensure_registered(self.server, version)
        self.server.set_default(version)


Target = LocalTarget | KServeTarget


def target_for(ws: Workspace, server: LocalTorchServe | KServeTarget) -> Target:
    return server if isinstance(server, KServeTarget) else LocalTarget(ws, server)


@contextlib.contextmanager
def _deploy_lock(ws: Workspace, server: LocalTorchServe | KServeTarget) -> Iterator[None]:
    """One deploy, rollback or shadow change at a time: the local server's lock; for KServe a lock
    file in the workspace (another host's deploy is refused while its canary is in progress, and
    every write carries the ``resourceVersion`` it read)."""
    if isinstance(server, LocalTorchServe):
        with server.lock():
            yield
        return
    ws.serving.mkdir(parents=True, exist_ok=True)
    with (ws.serving / "kserve-deploy.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def deploy(
    ws: Workspace,
    version: str,
    cfg: HapConfig,
    server: LocalTorchServe | KServeTarget,
    smoke_ds: str,
    reason: str = "",
    shadow: bool = False,
) -> dict[str, Any]:
    """Stage → golden smoke → promote (or start shadowing, locally). Any failure withdraws the new
    version: the model that was serving keeps serving. ``server`` is the local TorchServe or a
    ``KServeTarget`` (``serving.mode: kserve``); the decision is the same code for both."""
    if shadow and isinstance(server, KServeTarget):
        raise DeployFailed("shadow deploys are local-mode only; on KServe the canary plays that part")
    with _deploy_lock(ws, server):
        return _deploy(ws, version, cfg, target_for(ws, server), smoke_ds, reason, shadow)


def _deploy(
    ws: Workspace, version: str, cfg: HapConfig, target: Target, smoke_ds: str, reason: str, shadow: bool
) -> dict[str, Any]:
    registry = Registry(ws)
    version_dir = _known_version(ws, version)
    previous = target.serving()
    if shadow and version == previous:
        raise DeployFailed(f"{version} is production already; nothing to shadow")
    store = target.server.model_store if isinstance(target, LocalTarget) else ws.serving / "model-store"
    mar = store / mar_name(version)
    if not mar.exists():
        build_archive(version_dir, version, cfg, store)
    try:
        target.stage(version, mar, previous)
        request = sample_request(ws.data, smoke_ds, n_candidates=min(1000, cfg.routing.max_candidates))
        bodies = [request, columnar({**request, "k": 20, "m": 60})]
        answers = target.ask(version, bodies)
        for body, answer, expected in zip(bodies, answers, golden_answers(mar, bodies), strict=True):
            problem = smoke_check(answer, expected)
            if problem:
                layout = "columns" if "items" in body else "rows"
                raise DeployFailed(f"smoke request ({layout}) to version {version} failed: {problem}")
        if not shadow or previous is None:
            target.promote(version)
    except Exception as exc:
        try:
            target.withdraw(version, previous)
        except Exception as cleanup:
            if isinstance(target, KServeTarget):  # the cluster's traffic may not be where it was: say so
                raise DeployFailed(
                    f"deploy of {version} failed ({exc}) and withdrawing it failed too ({cleanup}): check the "
                    f"InferenceService (runbook: Serving on KServe, roll back)"
                ) from exc
            # locally the default never moved; the next prune unregisters the version
            log.warning("could not withdraw %s after its failed deploy: %s", version, cleanup)
        registry.record_event("deploy_failed", version=version, serving=previous, error=str(exc)[:500])
        raise DeployFailed(f"deploy of {version} failed, still serving {previous}: {exc}") from exc
    if isinstance(target, KServeTarget):
        pointer = registry.set_production(version, reason=reason or f"daily deploy ds={smoke_ds}")
        log.info("deployed %s on KServe (previous %s)", version, previous)
        previous = previous if previous != version else pointer["previous"]  # a redeploy keeps the rollback target
        return {"version": version, "previous": previous, "production": pointer, "archive": str(mar),
                "storage_uri": version_uri(cfg.serving.kserve, version), "mode": "kserve"}  # fmt: skip
    server = target.server
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
        "previous": previous if previous != version else pointer["previous"],  # a redeploy keeps the rollback target
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


def rollback(ws: Workspace, server: LocalTorchServe | KServeTarget, reason: str) -> dict[str, Any]:
    """Make the previous production version serve again, on the target and in the registry."""
    with _deploy_lock(ws, server):
        return _rollback(ws, target_for(ws, server), reason)


def _rollback(ws: Workspace, target: Target, reason: str) -> dict[str, Any]:
    registry = Registry(ws)
    current = registry.production()
    if not current or not current.get("previous"):
        raise DeployFailed("nothing to roll back to: no previous production version recorded")
    previous = current["previous"]
    target.restore(previous)
    pointer = registry.set_production(previous, reason=f"rollback from {current['version']}: {reason}")
    if isinstance(target, LocalTarget):
        _clear_shadow(target.server, registry, previous, "stopped by rollback")
        prune(ws, target.server)
    log.warning("rolled back %s -> %s (%s)", current["version"], previous, reason)
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
