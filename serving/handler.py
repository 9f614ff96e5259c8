"""TorchServe handler: a thin shell that translates requests for ``serving.scorer.TwoStageScorer``.

TorchServe requires exactly one class in this module (metrics live in ``serving.telemetry``). A batch from TorchServe (requests
gathered across clients, up to the archive's ``batchSize``) is parsed request by request, and the
valid ones are scored together in one light and one expressive pass. A bad request gets its own
4xx naming the field; the others are answered and the worker keeps serving.
"""

import json
import logging

from serving.scorer import RequestError, TwoStageScorer, decode_body
from serving.telemetry import HandlerMetrics

log = logging.getLogger(__name__)


class HapTwoStageHandler:
    def __init__(self) -> None:
        self.scorer = None
        self.initialized = False

    def initialize(self, context) -> None:
        model_dir = context.system_properties.get("model_dir")
        self.scorer = TwoStageScorer(model_dir)
        self.initialized = True
        log.info("HAP scorer loaded: version %s from %s", self.scorer.version, model_dir)

    def handle(self, data, context):
        metrics = HandlerMetrics(context)
        responses: list[str | None] = [None] * len(data)
        parsed = []
        for idx, row in enumerate(data):
            raw = row.get("body") if row.get("body") is not None else row.get("data")
            try:
                parsed.append((idx, self.scorer.parse(decode_body(raw))))
            except RequestError as err:
                context.set_response_status(err.status, err.message, idx)
                responses[idx] = json.dumps(err.to_json())
                metrics.error(err.kind)
        if parsed:
            try:
                answers, times = self.scorer.score_batch([req for _, req in parsed])
            except Exception:
                metrics.error("internal")
                raise
            for (idx, req), answer in zip(parsed, answers, strict=True):
                responses[idx] = json.dumps(answer)
                metrics.request(times.light_ms, times.expressive_ms, len(req.item_ids), answer["k"])
        metrics.batch(len(parsed))
        return responses
