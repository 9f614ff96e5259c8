"""Read TorchServe's key file from inside a worker (the shadow mirror and the queue watch call its APIs).

TorchServe rewrites ``key_file.json`` in place when a key is renewed, and swaps the key in before
the file is written: a torn read is retried, and after a refused key the reader waits (up to 2 s)
for the file to hold another one. Standard library only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

KEY_FILE = "key_file.json"


def read_key(home: Path, kind: str, not_this: str = "", wait_s: float = 2.0) -> str:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            key = json.loads((home / KEY_FILE).read_text())[kind]["key"]
            if key != not_this or time.monotonic() > deadline:
                return key
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def refused(status: int, body: bytes) -> bool:
    """TorchServe's answer to a missing, wrong or expired token."""
    return status in (400, 401) and b"InvalidKeyException" in body[:300]
