"""Shadow scoring: the production worker mirrors a sample of its live requests to a candidate version.

``hap deploy --shadow`` registers the candidate beside production (never the default) and writes
``shadow.json`` into the serving home: ``{"production": P, "shadow": S, "sample": 0.1}``. The worker
serving P reads it (re-checked every few seconds), and after answering a batch hands a sample of
its requests with their answers to a background thread. That thread sends each request to version
S through TorchServe and appends one JSON line per request to ``shadow/<S>.jsonl``: top-M overlap,
rank correlation of the shared items' scores and both versions' worker time. Production answers
first and never waits: the queue is bounded and full means skip. Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

from hap_runtime.keyfile import HOME_ENV, URL_ENV, TorchServeAPI

log = logging.getLogger(__name__)

CONFIG_FILE = "shadow.json"
WORKER_MS_HEADER = "X-Hap-Worker-Ms"


def rank_correlation(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho of two equally long score lists (None below 3 items or without spread)."""
    n = len(a)
    if n < 3:
        return None

    def ranks(x: list[float]) -> list[float]:
        order = sorted(range(n), key=x.__getitem__)
        r = [0.0] * n
        for pos, i in enumerate(order):
            r[i] = float(pos)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va and vb else None


def compare(production: dict[str, Any], shadow: dict[str, Any]) -> dict[str, Any]:
    """How far the shadow's top-M is from production's for one request."""
    prod = {it["item_id"]: it["score"] for it in production["items"]}
    shad = {it["item_id"]: it["score"] for it in shadow["items"]}
    shared = [i for i in prod if i in shad]
    return {
        "m": len(prod),
        "overlap": len(shared) / max(len(prod), 1),
        "rank_corr": rank_correlation([prod[i] for i in shared], [shad[i] for i in shared]),
    }


class ShadowMirror:
    """Lives in the production worker; does nothing unless ``shadow.json`` names this version."""

    def __init__(self, home: Path, inference_url: str, model: str, version: str, max_queue: int = 32) -> None:
        self.home, self.model, self.version = home, model, version
        self.api = TorchServeAPI(home, inference_url, "inference")
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._config: dict[str, Any] | None = None
        self._checked = 0.0
        self._mtime = 0.0
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, model: str, version: str) -> ShadowMirror | None:
        home, url = os.environ.get(HOME_ENV), os.environ.get(URL_ENV)
        return cls(Path(home), url, model, version) if home and url else None

    def config(self) -> dict[str, Any] | None:
        """The shadow assignment if it mirrors this version, re-read at most every 2 s."""
        now = time.monotonic()
        if now - self._checked > 2.0:
            self._checked = now
            path = self.home / CONFIG_FILE
            try:
                mtime = path.stat().st_mtime
                if mtime != self._mtime:
                    self._mtime, self._config = mtime, json.loads(path.read_text())
            except (OSError, ValueError):
                self._mtime, self._config = 0.0, None
        cfg = self._config
        return cfg if cfg and cfg.get("production") == self.version and cfg.get("shadow") != self.version else None

    def offer(self, bodies: list[Any], answers: list[str], worker_ms: float) -> None:
        """Hand a sample of a batch's answered requests to the mirror thread; never blocks."""
        cfg = self.config()
        if cfg is None:
            return
        rate = float(cfg.get("sample", 0.1))
        for body, answer in zip(bodies, answers, strict=True):
            if random.random() < rate:
                try:
                    self.queue.put_nowait((cfg["shadow"], body, answer, worker_ms))
                except queue.Full:
                    return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="hap-shadow", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            shadow, body, answer, prod_ms = self.queue.get()
            try:
                record = self._mirror(shadow, body, json.loads(answer), prod_ms)
            except Exception as exc:  # the mirror must never disturb production
                record = {"status": "error", "error": repr(exc)[:300]}
            record.update(ts=time.time(), production=self.version, shadow=shadow)
            out = self.home / "shadow" / f"{shadow}.jsonl"
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError:
                log.warning("cannot write shadow record to %s", out)

    def _mirror(self, shadow: str, body: Any, production: dict[str, Any], prod_ms: float) -> dict[str, Any]:
        payload = json.dumps({**body, "k": production["k"], "m": production["m"]}).encode()
        resp, data, e2e_ms = self.api.call("POST", f"/predictions/{self.model}/{shadow}", payload,
                                           {"Content-Type": "application/json"})  # fmt: skip
        if resp.status != 200:
            return {"status": resp.status, "error": data[:300].decode("utf-8", "replace")}
        shadow_ms = resp.getheader(WORKER_MS_HEADER)
        return {
            "status": 200,
            **compare(production, json.loads(data)),
            "production_worker_ms": round(prod_ms, 3),
            "shadow_worker_ms": float(shadow_ms) if shadow_ms else None,
            "shadow_e2e_ms": round(e2e_ms, 3),
        }
