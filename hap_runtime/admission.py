"""Load shedding with a truthful answer.

TorchServe answers a full job queue itself, with 503 "... has no worker to serve inference request.
Please use scale workers API ..." (its frontend's text, not ours to change). So the queue is sized
well above need and the worker sheds first: a thread reads this version's queue depth from
TorchServe's management API every 100 ms (``jobQueueStatus.pendingRequests``). Above
``routing.shed_queue_depth`` waiting requests the handler answers a share of requests 503
``overloaded`` with ``Retry-After`` at once, without parsing them: the share rises linearly from 0 at
the depth to all at twice the depth (early, random drops as in RED, so a reading that is up to
100 ms old does not shed everything). The requests that are served wait about the depth divided by
the throughput at most. Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from hap_runtime.keyfile import HOME_ENV, MGMT_ENV, TorchServeAPI

log = logging.getLogger(__name__)


class QueueWatch:
    """The latest queue depth of one model version, refreshed by a daemon thread."""

    def __init__(self, home: Path, management_url: str, model: str, version: str, limit: int,
                 period_s: float = 0.1) -> None:  # fmt: skip
        self.api = TorchServeAPI(home, management_url, "management")
        self.path = f"/models/{model}/{version}"
        self.limit, self.period_s = limit, period_s
        self.pending = 0
        self.checked_at = 0.0

    @classmethod
    def from_env(cls, model: str, version: str, limit: int) -> QueueWatch | None:
        home, url = os.environ.get(HOME_ENV), os.environ.get(MGMT_ENV)
        if not (home and url and limit > 0):
            return None
        watch = cls(Path(home), url, model, version, limit)
        threading.Thread(target=watch._run, name="hap-queue-watch", daemon=True).start()
        return watch

    def shed_share(self) -> float:
        """The share of requests to shed now: 0 at or below the limit, 1 at twice the limit; 0 when
        the last reading is more than a second old."""
        if self.pending <= self.limit or time.monotonic() - self.checked_at > 1.0:
            return 0.0
        return min(1.0, (self.pending - self.limit) / self.limit)

    def _run(self) -> None:
        while True:
            try:
                resp, data, _ = self.api.call("GET", self.path)
                if resp.status == 200:
                    self.pending = int(json.loads(data)[0]["jobQueueStatus"]["pendingRequests"])
                    self.checked_at = time.monotonic()
            except Exception as exc:  # never take the worker down; a stale reading stops shedding
                log.debug("queue watch: %s", exc)
            time.sleep(self.period_s)
