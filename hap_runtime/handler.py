"""TorchServe entry point: a thin shell that translates requests for ``TwoStageScorer``.

The archive carries this file at its root (TorchServe imports it as the module ``handler``, which
must define exactly one class) and the ``hap_runtime`` package beside it; the worker imports nothing
of the installed project, and ``initialize`` refuses to serve if it would.

A batch (requests gathered across clients, up to the archive's ``batchSize``) is decoded and parsed
request by request; the valid ones are scored together in one light and one expressive pass. Every
failure is the failing request's alone: a bad body gets its own 4xx naming ``field`` and ``kind``,
and if scoring the batch fails, each request is scored on its own so only the culprit gets a 500.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hap_runtime.admission import QueueWatch
from hap_runtime.codec import DECODER, RequestError, decode_body
from hap_runtime.keyfile import MGMT_ENV
from hap_runtime.kserve import PLAIN, V2, adopt_envelopes, call_too_big, locate, pack, unpack
from hap_runtime.scorer import TwoStageScorer
from hap_runtime.shadow import WORKER_MS_HEADER, ShadowMirror
from hap_runtime.telemetry import HandlerMetrics

log = logging.getLogger(__name__)

ADOPTED_ENVELOPES = adopt_envelopes()
"""TorchServe's KServe envelopes now hand requests over untouched (see ``hap_runtime.kserve``); this
runs on import, before TorchServe wraps the handler in the configured envelope."""

PROJECT_PACKAGES = ("hap", "models", "serving", "components", "expectations")
"""The installed project's packages: a worker that imported one would not be determined by its archive."""


def runtime_origin(model_dir: str | Path) -> dict[str, Any]:
    """Check that every ``hap_runtime`` module in this process was loaded from ``model_dir`` and that
    no project package was; returns the archive's runtime record (code fingerprint, torch version)."""
    root = Path(model_dir).resolve()
    for name, module in list(sys.modules.items()):
        if name == "hap_runtime" or name.startswith("hap_runtime."):
            origin = Path(getattr(module, "__file__", "") or "").resolve()
            if not origin.is_relative_to(root):
                raise RuntimeError(f"{name} was imported from {origin}, not from the archive at {root}")
    loaded = [p for p in PROJECT_PACKAGES if p in sys.modules]
    if loaded:
        raise RuntimeError(f"the worker imported the installed project's packages {loaded}")
    record = root / "runtime.json"
    return json.loads(record.read_text()) if record.exists() else {}


class HapTwoStageHandler:
    def __init__(self) -> None:
        self.scorer: TwoStageScorer | None = None
        self.shadow: ShadowMirror | None = None
        self.admission: QueueWatch | None = None
        self.metrics = HandlerMetrics(None, "hap", "")
        self.model_name = "hap"
        self.initialized = False

    def initialize(self, context) -> None:
        model_dir = context.system_properties.get("model_dir")
        runtime = runtime_origin(model_dir)
        # TorchServe's worker logs an INFO line per batch to stdout, which the frontend parses: keep only
        # warnings, and the metric lines (``ts.metrics``) and our own.
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("ts.metrics", __name__, "hap_runtime"):
            logging.getLogger(name).setLevel(logging.INFO)
        threads = int(os.environ.get("HAP_TORCH_THREADS", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        self.scorer = TwoStageScorer(model_dir)
        self.model_name = getattr(context, "model_name", None) or "hap"
        self.shadow = ShadowMirror.from_env(self.model_name, self.scorer.version)
        self.admission = QueueWatch.from_env(self.model_name, self.scorer.version, self.scorer.routing.shed_queue_depth)
        if self.admission is not None:
            log.info("load shedding above %d queued requests (queue read from %s)", self.admission.limit,
                     os.environ.get(MGMT_ENV))  # fmt: skip
        self.metrics = HandlerMetrics(getattr(context, "metrics", None), self.model_name, self.scorer.version)
        self.metrics.flush(all_series=True)
        self.metrics.start_idle_flusher()
        self.initialized = True
        log.info("HAP scorer %s loaded from %s (runtime %s, torch %s, %d threads, %s decoder)", self.scorer.version,
                 model_dir, runtime.get("code_sha256", "?")[:12], torch.__version__, torch.get_num_threads(),
                 DECODER.name)  # fmt: skip

    def handle(self, data: list[dict], context, protocol: str = PLAIN) -> list[str]:
        """Answer each TorchServe request of the batch; ``protocol`` is KServe's ``v1``/``v2`` when
        an adopted envelope (``hap_runtime.kserve``) hands the batch over, else ``plain``."""
        start = time.perf_counter()
        scorer, metrics = self.scorer, self.metrics
        share = self.admission.shed_share() if self.admission is not None else 0.0
        responses: list[str] = [""] * len(data)
        calls: list[tuple[int, int, int, str]] = []  # (row, first request in ``parsed``, requests, v2 call id)
        parsed, bodies = [], []
        for idx, row in enumerate(data):
            context.set_response_content_type(idx, "application/json")
            if share and random.random() < share:
                responses[idx] = self._shed(context, idx, metrics)
                continue
            try:
                raw = row.get("body") if row.get("body") is not None else row.get("data")
                body = decode_body(raw, scorer.routing.max_body_bytes)
                inner = unpack(protocol, body, scorer.routing.max_requests_per_call)
                reqs, total = [], 0
                for i, one in enumerate(inner):
                    try:
                        one = decode_body(one, scorer.routing.max_body_bytes) if protocol == V2 else one
                        reqs.append((scorer.parse(one), one))
                    except RequestError as err:
                        raise locate(protocol, i, err) from None
                    total += len(reqs[-1][0].item_ids)
                    if total > scorer.routing.max_candidates:  # a call costs at most one full-size request
                        raise call_too_big(protocol, total, scorer.routing.max_candidates)
                call_id = (body.get("id") or context.get_request_id(idx)) if protocol == V2 else ""
                calls.append((idx, len(parsed), len(reqs), call_id))
                parsed.extend(r for r, _ in reqs)
                bodies.extend(b for _, b in reqs)
            except RequestError as err:
                responses[idx] = self._reject(context, idx, err, metrics)
            except Exception:  # a parser bug must fail this request only
                log.exception("parsing request %d of the batch failed", idx)
                err = RequestError("body", "internal error while reading the request", "internal", 500)
                responses[idx] = self._reject(context, idx, err, metrics)
        answers = self._score(parsed, metrics) if parsed else []
        answered = []
        for idx, first, n, call_id in calls:
            mine = answers[first : first + n]
            failed = [(i, a) for i, a in enumerate(mine) if isinstance(a, RequestError)]
            if failed:
                responses[idx] = self._reject(context, idx, locate(protocol, *failed[0]), metrics)
                continue
            responses[idx] = pack(protocol, mine, call_id, self.model_name, scorer.version)
            for req, answer, body in zip(parsed[first : first + n], mine, bodies[first : first + n], strict=True):
                answered.append((idx, body, answer))
                metrics.count("HapCandidatesScored", len(req.item_ids))
                metrics.count("HapCandidatesRouted", answer["k"])
                if req.duplicates:
                    metrics.count("HapDuplicates", req.duplicates)
        worker_ms = (time.perf_counter() - start) * 1e3
        for idx in {idx for idx, _, _ in answered}:
            context.set_response_header(idx, WORKER_MS_HEADER, f"{worker_ms:.3f}")
        metrics.observe("request", worker_ms, n=len(data))
        metrics.batch(len(parsed))
        try:
            metrics.maybe_flush()
        except Exception:  # metrics must never fail an answered batch
            log.exception("emitting metrics failed")
        if self.shadow is not None and answered:
            texts = [responses[i] if protocol == PLAIN else json.dumps(a) for i, _, a in answered]
            self.shadow.offer([b for _, b, _ in answered], texts, worker_ms)
        return responses

    def _score(self, reqs: list, metrics: HandlerMetrics) -> list[dict[str, Any] | RequestError]:
        """Score the batch in one pass; if that fails, score each request alone to isolate the culprit."""
        try:
            answers, times = self.scorer.score_batch(reqs)
            metrics.observe("light", times.light_ms)
            metrics.observe("expressive", times.expressive_ms)
            metrics.count("HapBatchedRequests", len(reqs))
            return answers
        except Exception:
            log.exception("scoring a batch of %d failed; scoring its requests one by one", len(reqs))
        out: list[dict[str, Any] | RequestError] = []
        for req in reqs:
            try:
                out.append(self.scorer.score_batch([req])[0][0])
            except Exception:
                log.exception("scoring one request failed")
                out.append(RequestError("body", "internal error while scoring this request", "internal", 500))
        return out

    def _shed(self, context, idx: int, metrics: HandlerMetrics) -> str:
        """Answer one request 503 overloaded, unparsed, while TorchServe's queue is too deep."""
        watch = self.admission
        message = f"overloaded: {watch.pending} requests queued (limit {watch.limit}); retry after 1 s"
        context.set_response_header(idx, "Retry-After", "1")
        return self._reject(context, idx, RequestError("request", message, "overloaded", 503), metrics)

    @staticmethod
    def _reject(context, idx: int, err: RequestError, metrics: HandlerMetrics) -> str:
        phrase = "".join(ch if " " <= ch <= "~" else "?" for ch in err.message[:200])  # a safe HTTP reason phrase
        context.set_response_status(err.status, phrase, idx)
        metrics.error(err.kind)
        return json.dumps(err.to_json())
