"""TorchServe's API tokens: read them where TorchServe writes them, and renew them before they expire.

TorchServe (token authorization on, the default) writes ``key_file.json`` into its working
directory at start: a management key and an inference key, each with an expiration time
(``token_expiration_min``), and an API key that does not expire and is only good for
``GET /token?type=management|inference`` on the management port, which replaces that key at once.

- ``KeyRing`` is how every client of ours reads the keys: re-read when the file changes, and on an
  authorization failure re-read and, if the key on file has expired, renew it with the API key.
- The key keeper (``python -m serving.keys``, started with the server) renews each key once less
  than ``renew_fraction`` of its lifetime is left, so keys never expire under running clients.
  A renewal invalidates the old key immediately; clients that hold it get one authorization
  failure, re-read the file and retry (``KeyRing`` does this for ours; see the runbook for others).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import requests

from hap_runtime.keyfile import KEY_FILE, load_key_file, read_key, refused
from serving.errors import AuthError

PID_FILE = "keykeeper.pid"
KINDS = ("management", "inference")

log = logging.getLogger(__name__)


def is_auth_failure(resp: requests.Response) -> bool:
    """TorchServe answers a missing, wrong or expired token with 400/401 ``InvalidKeyException``."""
    return refused(resp.status_code, resp.content)


def _expiry(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class KeyRing:
    """The tokens of one TorchServe home, cached until the key file changes."""

    def __init__(self, home: str | Path, management_url: str, inference_url: str) -> None:
        self.path = Path(home) / KEY_FILE
        self.management_url, self.inference_url = management_url, inference_url
        self._stamp: tuple[int, int] | None = None
        self._data: dict[str, Any] = {}

    def exists(self) -> bool:
        return self.path.exists()

    def data(self) -> dict[str, Any]:
        """The key file's content, re-read when the file changes (a torn read is retried)."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._data, self._stamp = load_key_file(self.path), stamp
            return self._data
        except FileNotFoundError:
            raise AuthError(f"no key file at {self.path}: is TorchServe running from this home?") from None
        except (ValueError, OSError) as exc:
            raise AuthError(f"cannot read the key file {self.path}: {exc}") from None

    def key(self, kind: str) -> str:
        return self.data()[kind]["key"]

    def expires_at(self, kind: str) -> float:
        return _expiry(self.data()[kind]["expiration time"])

    def works(self, kind: str, key: str) -> bool:
        """Whether TorchServe accepts ``key`` as its ``kind`` key right now."""
        url = f"{self.management_url}/models" if kind == "management" else f"{self.inference_url}/ping"
        try:
            r = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        except requests.RequestException:
            return True  # cannot tell; the caller's next call will
        return not is_auth_failure(r)

    def renew(self, kind: str) -> str:
        """Replace the ``kind`` key through TorchServe's token API and return the new key, checked
        to work: a concurrent renewal can leave the file holding a key already replaced again."""
        for _ in range(3):
            api_key = self.data()["API"]["key"]
            r = requests.get(f"{self.management_url}/token", params={"type": kind},
                             headers={"Authorization": f"Bearer {api_key}"}, timeout=10)  # fmt: skip
            if r.status_code != 200:
                raise AuthError(f"renewing the {kind} key failed: {r.status_code} {r.text[:200]}")
            self._stamp = None
            key = self.key(kind)
            if self.works(kind, key):
                return key
        raise AuthError(f"the renewed {kind} key in {self.path} is not accepted by TorchServe")

    def refresh(self, kind: str, used: str) -> str:
        """After an authorization failure with key ``used``: the key that works now. TorchServe swaps
        a renewed key in before it rewrites the file, so wait for the file to change (up to 2 s);
        renew when the key on file has expired or TorchServe refuses it."""
        self._stamp = None
        expired = self.key(kind) == used and self.expires_at(kind) <= time.time() + 1
        key = read_key(self.path.parent, kind, not_this=used, wait_s=0.0 if expired else 2.0)
        self._stamp = None
        if key != used or self.works(kind, key):
            return key
        return self.renew(kind)


def keykeeper_loop(home: Path, management_url: str, inference_url: str, lifetime_s: float,
                   renew_fraction: float) -> int:  # fmt: skip
    """Renew each key when less than ``renew_fraction`` of its lifetime is left; exit when the server
    has stopped (its key file, once seen, has been gone for 30 s; or it never appeared in 10 min)."""
    ring = KeyRing(home, management_url, inference_url)
    started, seen = time.monotonic(), False
    period = max(1.0, min(30.0, lifetime_s * renew_fraction / 4))
    log.info("key keeper for %s: lifetime %.0fs, renewing with %.0f%% left, checking every %.1fs",
             home, lifetime_s, renew_fraction * 100, period)  # fmt: skip
    missing_since = None
    while True:
        if not ring.exists():
            missing_since = missing_since or time.monotonic()
            if (seen and time.monotonic() - missing_since > 30) or time.monotonic() - started > 600:
                log.info("no key file at %s: TorchServe is not running; key keeper exits", ring.path)
                return 0
        else:
            missing_since, seen = None, True
            for kind in KINDS:
                try:
                    left = ring.expires_at(kind) - time.time()
                    if left < lifetime_s * renew_fraction:
                        ring.renew(kind)
                        log.info("renewed the %s key (%.0fs were left)", kind, left)
                except (AuthError, KeyError, ValueError, requests.RequestException) as exc:
                    log.warning("could not renew the %s key: %s", kind, exc)
        time.sleep(period)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.keys", description="renew TorchServe's API keys")
    p.add_argument("--home", required=True)
    p.add_argument("--management-url", required=True)
    p.add_argument("--inference-url", required=True)
    p.add_argument("--lifetime-s", type=float, required=True)
    p.add_argument("--renew-fraction", type=float, default=0.5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    home = Path(args.home)
    (home / PID_FILE).write_text(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return keykeeper_loop(home, args.management_url, args.inference_url, args.lifetime_s, args.renew_fraction)
    finally:
        pid_file = home / PID_FILE
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
