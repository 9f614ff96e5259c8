"""TorchServe handler: a thin shell that translates requests for ``serving.scorer.TwoStageScorer``.

TorchServe picks the single class defined in this module. Each request in a batch is answered on
its own: a bad one gets a 4xx naming the field, the others are scored, and the worker keeps serving.
"""

import json
import logging

from serving.scorer import RequestError, TwoStageScorer, decode_body

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
        responses = []
        for idx, row in enumerate(data):
            raw = row.get("body") if row.get("body") is not None else row.get("data")
            try:
                responses.append(json.dumps(self.scorer(decode_body(raw))))
            except RequestError as err:
                context.set_response_status(err.status, err.message, idx)
                responses.append(json.dumps(err.to_json()))
        return responses
