"""The handler's custom metrics, accumulated in the worker and emitted into TorchServe's metric cache
at most once a second (and after a second of idleness), which the frontend exposes on its
Prometheus endpoint. Emitting is a log line per series, so per-batch emission would cost ~0.7 ms
per batch; accumulating keeps it off the request path.

TorchServe's own histograms have fixed buckets (5 ms to 10 s), so latency is exported as a
Prometheus histogram built from counters: ``HapLatencyMs_bucket{stage, le}`` (cumulative, ``le``
from 1 ms to 2 s and ``+Inf``), ``HapLatencyMs_count`` and ``HapLatencyMs_sum``; ``histogram_quantile``
reads them as usual. Every series carries the serving ``version``. All names and dimensions are
declared in ``serving/metrics.yaml`` (in prometheus mode TorchServe drops undeclared metrics).

- ``stage``: ``light`` / ``expressive`` (one model pass over the batch), ``request`` (a request's
  time in the worker: its batch's whole handling, parse to answer).
- ``HapRequestErrors{ErrorKind}``: every rejected or failed request, by kind.
- ``HapCandidatesScored`` / ``HapCandidatesRouted`` / ``HapDuplicates``: candidate counters.
- ``HapBatchRequests``: requests in the last batch (gauge).
- ``HapBatchedRequests``: valid requests scored in one-pass batches (counter); one light pass per
  such batch, so over ``HapLatencyMs_count{stage="light"}`` it is the mean batch size.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from typing import Any

BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
STAGES = ("light", "expressive", "request")


class HandlerMetrics:
    """A worker's pending metric increments. ``cache`` is TorchServe's metric cache, or None outside
    TorchServe (then nothing is emitted)."""

    def __init__(self, cache: Any, model_name: str, version: str, interval_s: float = 1.0) -> None:
        self.cache, self.model, self.version, self.interval_s = cache, model_name, version, interval_s
        self.lock = threading.Lock()
        self.last_flush = 0.0
        self._reset()

    def _reset(self) -> None:
        self.buckets: dict[str, list[int]] = {s: [0] * (len(BUCKETS_MS) + 1) for s in STAGES}
        self.sums: dict[str, float] = defaultdict(float)
        self.counters: dict[tuple[str, str], float] = defaultdict(float)
        self.batch_size: int | None = None
        self.pending = False

    def observe(self, stage: str, ms: float, n: int = 1) -> None:
        """``n`` observations of ``ms`` milliseconds in ``stage``."""
        with self.lock:
            self.buckets[stage][bisect.bisect_left(BUCKETS_MS, ms)] += n
            self.sums[stage] += ms * n
            self.pending = True

    def count(self, name: str, value: float, kind: str = "") -> None:
        with self.lock:
            self.counters[(name, kind)] += value
            self.pending = True

    def error(self, kind: str) -> None:
        self.count("HapRequestErrors", 1, kind)

    def batch(self, size: int) -> None:
        with self.lock:
            self.batch_size, self.pending = size, True

    def maybe_flush(self) -> None:
        if self.pending and time.monotonic() - self.last_flush >= self.interval_s:
            self.flush()

    def start_idle_flusher(self) -> None:
        """A daemon thread that emits increments left pending once traffic stops."""

        def run() -> None:
            while True:
                time.sleep(self.interval_s)
                try:
                    self.maybe_flush()
                except Exception:  # never take the worker down for a metric
                    pass

        threading.Thread(target=run, name="hap-metrics", daemon=True).start()

    def flush(self, all_series: bool = False) -> None:
        """Emit the pending increments. ``all_series`` emits zeros too, so that every bucket exists
        from the worker's start (a quantile over missing buckets would be wrong)."""
        with self.lock:
            buckets, sums, counters, batch_size = self.buckets, self.sums, self.counters, self.batch_size
            self._reset()
            self.last_flush = time.monotonic()
        if self.cache is None:
            return
        for stage, counts in buckets.items():
            total = sum(counts)
            if not total and not all_series:
                continue
            cumulative = 0
            for le, n in zip((*BUCKETS_MS, "+Inf"), counts, strict=True):
                cumulative += n
                if cumulative or all_series:
                    self._add("HapLatencyMs_bucket", cumulative, "ms", "COUNTER", stage=stage, le=str(le))
            self._add("HapLatencyMs_count", total, "ms", "COUNTER", stage=stage)
            self._add("HapLatencyMs_sum", sums[stage], "ms", "COUNTER", stage=stage)
        for (name, kind), value in counters.items():
            extra = {"ErrorKind": kind} if kind else {}
            self._add(name, value, "count", "COUNTER", **extra)
        if batch_size is not None:
            self._add("HapBatchRequests", batch_size, "count", "GAUGE")

    def _add(self, name: str, value: float, unit: str, kind: str, **extra: str) -> None:
        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes

        # A fresh list each call: TorchServe appends its default dimensions to the list it is given.
        dims = [Dimension("ModelName", self.model), Dimension("Level", "Model"), Dimension("version", self.version)]
        dims += [Dimension(k, v) for k, v in extra.items()]
        self.cache.add_metric(name, value, unit, dimensions=dims, metric_type=MetricTypes[kind])
