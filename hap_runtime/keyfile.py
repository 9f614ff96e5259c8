"""Calling TorchServe's own APIs from inside a worker (the shadow mirror, the queue watch).

The local server tells its workers where things are through the environment (``HOME_ENV``: the
serving home holding ``key_file.json`` and ``shadow.json``; ``URL_ENV`` / ``MGMT_ENV``: the
inference and management addresses). TorchServe rewrites the key file in place when a key is
renewed, and swaps the key in before the file is written: a torn read is retried, and after a
refused key the client waits (up to 2 s) for the file to hold another one. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

KEY_FILE = "key_file.json"
HOME_ENV, URL_ENV, MGMT_ENV = "HAP_SERVING_HOME", "HAP_INFERENCE_URL", "HAP_MANAGEMENT_URL"


def load_key_file(path: Path, wait_s: float = 1.0) -> dict[str, Any]:
    """The key file's content, retrying a read torn by TorchServe's in-place rewrite."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def read_key(home: Path, kind: str, not_this: str = "", wait_s: float = 2.0) -> str:
    """The ``kind`` key on file; with ``not_this``, wait up to ``wait_s`` for a different one."""
    deadline = time.monotonic() + wait_s
    while True:
        key = load_key_file(home / KEY_FILE)[kind]["key"]
        if key != not_this or time.monotonic() > deadline:
            return key
        time.sleep(0.05)


def refused(status: int, body: bytes) -> bool:
    """TorchServe's answer to a missing, wrong or expired token."""
    return status in (400, 401) and b"InvalidKeyException" in body[:300]


class TorchServeAPI:
    """One of TorchServe's HTTP APIs called with this home's ``kind`` key: kept until refused, then
    re-read and the call made once more."""

    def __init__(self, home: Path, url: str, kind: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.home, self.host, self.port, self.kind = home, host, int(port or 80), kind
        self.key = ""

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes, float]:  # fmt: skip
        """(response, its body, milliseconds) of one call. Without a key file (token authorization
        off, as inside a KServe pod whose management API listens on its loopback only) no token is sent."""
        if not self.key and (self.home / KEY_FILE).exists():
            self.key = read_key(self.home, self.kind)
        for attempt in range(2):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            auth = {"Authorization": f"Bearer {self.key}"} if self.key else {}
            try:
                t0 = time.perf_counter()
                conn.request(method, path, body=body, headers={**(headers or {}), **auth})
                resp = conn.getresponse()
                data = resp.read()
                ms = (time.perf_counter() - t0) * 1e3
            finally:
                conn.close()
            if attempt or not refused(resp.status, data) or not (self.home / KEY_FILE).exists():
                return resp, data, ms
            self.key = read_key(self.home, self.kind, not_this=self.key)
        raise AssertionError("unreachable")
