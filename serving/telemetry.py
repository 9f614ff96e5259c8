"""The handler's custom TorchServe metrics, exposed on the Prometheus endpoint.

Declared in ``serving/metrics.yaml`` (in prometheus mode TorchServe drops undeclared metrics):
``HapLightMs`` / ``HapExpressiveMs`` per request, ``HapCandidatesScored`` / ``HapCandidatesRouted``
counters, ``HapRequestErrors`` by ``ErrorKind`` and ``HapBatchRequests`` per batch.
"""

from __future__ import annotations


class HandlerMetrics:
    """TorchServe's metric cache with the dimensions declared in metrics.yaml. Fresh lists each call:
    TorchServe appends default dimensions to the list it is given."""

    def __init__(self, context) -> None:
        self.cache = getattr(context, "metrics", None)
        self.model = getattr(context, "model_name", None) or "hap"

    def _dims(self, **extra: str) -> list:
        from ts.metrics.dimension import Dimension

        dims = [Dimension("ModelName", self.model), Dimension("Level", "Model")]
        return dims + [Dimension(k, v) for k, v in extra.items()]

    def _add(self, name: str, value: float, unit: str, kind: str, **extra: str) -> None:
        if self.cache is None:
            return
        from ts.metrics.metric_type_enum import MetricTypes

        self.cache.add_metric(name, value, unit, dimensions=self._dims(**extra), metric_type=MetricTypes[kind])

    def request(self, light_ms: float, expressive_ms: float, scored: int, routed: int) -> None:
        self._add("HapLightMs", light_ms, "ms", "HISTOGRAM")
        self._add("HapExpressiveMs", expressive_ms, "ms", "HISTOGRAM")
        self._add("HapCandidatesScored", scored, "count", "COUNTER")
        self._add("HapCandidatesRouted", routed, "count", "COUNTER")

    def error(self, kind: str) -> None:
        self._add("HapRequestErrors", 1, "count", "COUNTER", ErrorKind=kind)

    def batch(self, size: int) -> None:
        self._add("HapBatchRequests", size, "count", "GAUGE")
