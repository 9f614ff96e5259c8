"""KServe's REST protocols around the plain request: v1 and v2 (the Open Inference Protocol).

TorchServe speaks KServe's protocols through request envelopes, chosen by ``service_envelope`` or
``$TS_SERVICE_ENVELOPE`` (``kserve`` for v1, ``kservev2`` for v2), which KServe's TorchServe runtime
sets from the InferenceService's ``protocolVersion``. TorchServe 0.12's envelopes, as shipped:

- read only the first request of a batch: with ``batchSize`` > 1 every request of the batch fails
  with 503 "number of batch response mismatched";
- parse the body before the handler runs: a body that is not JSON, or lacks ``instances``, is a
  503 "Prediction failed" instead of a client error;
- wrap whatever the handler returns, so an error could only travel inside ``predictions``.

So the handler module adopts the envelopes (``adopt_envelopes``): the envelope still selects the
protocol, and hands each TorchServe request to the handler untouched with the protocol named. This
module unpacks and packs the bodies; every TorchServe request keeps its own answer, the requests
inside one call are scored in the batch's single pass, and a bad call gets its 4xx in KServe's
error shape, the plain endpoint's ``{"error": ..., "field": ..., "kind": ..., "status": ...}``, with
``field`` naming the place in the call (``instances[1].candidates[3].item_id``).

Layouts (one call may carry up to ``RoutingConfig.max_requests_per_call`` requests, holding together
at most ``max_candidates`` candidates, so a call costs no more than the largest plain request):

- v1: ``{"instances": [<request>, ...]}`` → ``{"predictions": [<answer>, ...]}``.
- v2: ``{"id": "...", "inputs": [{"name": "request", "datatype": "BYTES", "shape": [n],
  "data": ["<request JSON>", ...]}]}`` → ``{"id", "model_name", "model_version", "outputs":
  [{"name": "answer", "datatype": "BYTES", "shape": [n], "data": ["<answer JSON>", ...]}]}``.
  A request is one BYTES element holding the plain request's JSON (either layout, rows or
  columns); there are no columnar tensor inputs, because one request is a user plus N candidates of
  mixed types, and the compact JSON layout already carries the candidates as columns.

A call fails as a whole (KServe has no per-instance status); other calls of the batch are unaffected.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from hap_runtime.codec import RequestError

PLAIN, V1, V2 = "plain", "v1", "v2"
ENVELOPES = {"kserve": V1, "kservev2": V2}
"""TorchServe's envelope module names and the protocol each carries."""
V2_INPUT, V2_OUTPUT = "request", "answer"


def adopt_envelopes() -> list[str]:
    """Make TorchServe's KServe envelopes pass each request to the handler untouched, naming the
    protocol (``handler.handle(data, context, protocol)``). Runs when the worker imports the
    archive's handler, before TorchServe wraps the handler in the configured envelope; outside
    TorchServe (offline scoring, an environment holding only torch) there is nothing to adopt."""
    adopted = []
    for module_name, protocol in ENVELOPES.items():
        try:
            module = importlib.import_module(f"ts.torch_handler.request_envelope.{module_name}")
        except ImportError:
            continue
        for cls in list(vars(module).values()):
            if isinstance(cls, type) and cls.__module__ == module.__name__ and hasattr(cls, "parse_input"):
                cls.handle = _hand_over(protocol)
                adopted.append(f"{module_name}:{cls.__name__}")
    return adopted


def _hand_over(protocol: str):
    def handle(self, data: list[dict], context) -> list[str]:
        self.context = context
        return self._handle_fn(data, context, protocol)

    handle.__doc__ = f"KServe {protocol}: the handler unpacks and packs the bodies (hap_runtime.kserve)."
    return handle


def _check_keys(obj: dict, allowed: set[str], where: str) -> None:
    extra = sorted(obj.keys() - allowed)
    if extra:
        raise RequestError(f"{where}{extra[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})",
                           "unknown_field")  # fmt: skip


def _list_of_requests(value: Any, where: str, limit: int) -> list:
    if not isinstance(value, list):
        raise RequestError(where, "expected a list of requests", "wrong_type")
    if not value:
        raise RequestError(where, "no requests in the call", "empty")
    if len(value) > limit:
        raise RequestError(where, f"{len(value)} requests exceed the limit of {limit} per call", "too_many")
    return value


def unpack(protocol: str, body: Any, limit: int) -> list[Any]:
    """The plain requests inside a decoded call body: objects (v1) or JSON texts (v2)."""
    if protocol == PLAIN:
        return [body]
    if type(body) is not dict:
        what = "'instances'" if protocol == V1 else "'inputs'"
        raise RequestError("body", f"expected a JSON object with {what} (KServe {protocol})", "wrong_type")
    if protocol == V1:
        _check_keys(body, {"instances"}, "")
        if "instances" not in body:
            raise RequestError("instances", "missing field", "missing_field")
        return _list_of_requests(body["instances"], "instances", limit)
    _check_keys(body, {"id", "inputs", "outputs", "parameters"}, "")
    if "id" in body and not isinstance(body["id"], str):
        raise RequestError("id", "expected a string", "wrong_type")
    if "parameters" in body and type(body["parameters"]) is not dict:
        raise RequestError("parameters", "expected an object", "wrong_type")
    for i, out in enumerate(_outputs(body.get("outputs", []))):
        if type(out) is not dict or out.get("name") != V2_OUTPUT:
            raise RequestError(f"outputs[{i}].name", f"the only output is {V2_OUTPUT!r}", "unknown_field")
    inputs = body.get("inputs")
    if inputs is None:
        raise RequestError("inputs", "missing field", "missing_field")
    if not isinstance(inputs, list) or len(inputs) != 1 or type(inputs[0]) is not dict:
        raise RequestError("inputs", f"expected exactly one input, {V2_INPUT!r} (BYTES)", "wrong_type")
    tensor = inputs[0]
    _check_keys(tensor, {"name", "datatype", "shape", "data", "parameters"}, "inputs[0].")
    for key in ("name", "datatype", "shape", "data"):
        if key not in tensor:
            raise RequestError(f"inputs[0].{key}", "missing field", "missing_field")
    if tensor["name"] != V2_INPUT:
        raise RequestError("inputs[0].name", f"the only input is {V2_INPUT!r}", "unknown_field")
    if tensor["datatype"] != "BYTES":
        raise RequestError("inputs[0].datatype", "expected 'BYTES' (one JSON request per element)", "wrong_type")
    data = _list_of_requests(tensor["data"], "inputs[0].data", limit)
    if tensor["shape"] != [len(data)]:
        raise RequestError("inputs[0].shape", f"expected [{len(data)}], the number of elements in data",
                           "length_mismatch")  # fmt: skip
    for i, element in enumerate(data):
        if not isinstance(element, str):
            raise RequestError(f"inputs[0].data[{i}]", "expected a string holding the request's JSON", "wrong_type")
    return data


def _outputs(value: Any) -> list:
    if not isinstance(value, list):
        raise RequestError("outputs", "expected a list", "wrong_type")
    return value


def locate(protocol: str, i: int, err: RequestError) -> RequestError:
    """``err`` about the i-th request of a call, with ``field`` naming its place in the call."""
    if protocol == PLAIN:
        return err
    where = f"instances[{i}]" if protocol == V1 else f"inputs[0].data[{i}]"
    inner = "" if err.field == "body" else err.field
    field = f"{where}.{inner}" if inner and not inner.startswith("[") else f"{where}{inner}"
    return RequestError(field, err.message, err.kind, err.status)


def call_too_big(protocol: str, total: int, limit: int) -> RequestError:
    """A call whose requests hold more candidates together than one request may: refused (413), so
    that one call never costs more than the largest plain request."""
    where = "instances" if protocol == V1 else "inputs[0].data"
    return RequestError(where, f"{total}+ candidates in the call's requests exceed the limit of {limit} per call",
                        "too_many", 413)  # fmt: skip


def pack(protocol: str, answers: list[dict[str, Any]], call_id: str, model_name: str, version: str) -> str:
    """The call's response body."""
    if protocol == PLAIN:
        return json.dumps(answers[0])
    if protocol == V1:
        return json.dumps({"predictions": answers})
    texts = [json.dumps(a) for a in answers]
    output = {"name": V2_OUTPUT, "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return json.dumps({"id": call_id, "model_name": model_name, "model_version": version, "outputs": [output]})


def answers_of(protocol: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The plain answers inside a response body (for clients and smoke checks)."""
    if protocol == PLAIN:
        return [body]
    if protocol == V1:
        return body["predictions"]
    return [json.loads(text) for text in body["outputs"][0]["data"]]


def call_body(protocol: str, requests: list[Any], call_id: str | None = None) -> dict[str, Any]:
    """A call carrying ``requests`` (plain request objects) in ``protocol``."""
    if protocol == PLAIN:
        (request,) = requests
        return request
    if protocol == V1:
        return {"instances": requests}
    tensor = {
        "name": V2_INPUT,
        "datatype": "BYTES",
        "shape": [len(requests)],
        "data": [json.dumps(r) for r in requests],
    }
    return {**({"id": call_id} if call_id else {}), "inputs": [tensor]}
