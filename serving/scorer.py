"""The two-stage scorer: parse a request, light model on all N, expressive on the light top-K.

Independent of the model server: the TorchServe handler is a thin shell over this class, so the
server can change without touching parsing, routing or scoring.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hap.config import RoutingConfig
from hap.features import Feature, FeatureSpec, encode_sequences, encode_side
from models.nets import load_model

ROUTING_FILE = "routing.json"
VERSION_FILE = "version.json"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


ERROR_KINDS = (
    "malformed_json", "wrong_type", "missing_field", "unknown_field", "non_finite", "empty", "too_many",
    "out_of_range",
)  # fmt: skip


class RequestError(ValueError):
    """A client error: the message names the offending field. ``status`` is the HTTP code, ``kind``
    one of ``ERROR_KINDS`` (the label of the errors-by-kind metric)."""

    def __init__(self, field: str, message: str, kind: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        assert kind in ERROR_KINDS, kind
        self.field, self.message, self.kind, self.status = field, message, kind, status

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "kind": self.kind, "status": self.status}


@dataclass(frozen=True)
class StageTimes:
    """Wall time of one batch's light pass (all candidates) and expressive pass (routed top-K)."""

    light_ms: float
    expressive_ms: float


@dataclass
class ParsedRequest:
    user_x: torch.Tensor  # (1, Fu)
    seq: torch.Tensor  # (1, L)
    item_x: torch.Tensor  # (N, Fi)
    item_ids: list[int]
    k: int
    m: int


def _check_value(f: Feature, value: Any, where: str) -> None:
    if f.vocab:
        if not isinstance(value, str):
            raise RequestError(where, f"expected a string, got {type(value).__name__}", "wrong_type")
    elif f.kind == "bucket":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(where, f"expected a number, got {type(value).__name__}", "wrong_type")
        if not math.isfinite(value):
            raise RequestError(where, "must be a finite number (NaN/inf not allowed)", "non_finite")
    elif isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(where, f"expected an integer, got {type(value).__name__}", "wrong_type")
    elif not INT64_MIN <= value <= INT64_MAX:
        raise RequestError(where, "integer out of the int64 range", "out_of_range")


def _key_path(where: str, key: str) -> str:
    """Where an unknown key sits, quoted when it is not a plain name (empty, spaces, dots)."""
    plain = key.isidentifier()
    if not where:
        return key if plain else f"[{json.dumps(key)}]"
    return f"{where}.{key}" if plain else f"{where}[{json.dumps(key)}]"


def _check_fields(obj: Any, feats: tuple[Feature, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise RequestError(where, f"expected a JSON object, got {type(obj).__name__}", "wrong_type")
    names = {f.name for f in feats}
    missing = sorted(names - obj.keys())
    if missing:
        raise RequestError(f"{where}.{missing[0]}", "missing field", "missing_field")
    extra = sorted(obj.keys() - names)
    if extra:
        raise RequestError(_key_path(where, extra[0]), "unknown field", "unknown_field")
    for f in feats:
        _check_value(f, obj[f.name], f"{where}.{f.name}")


class TwoStageScorer:
    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self.light = load_model(model_dir / "light")
        self.expressive = load_model(model_dir / "expressive")
        self.spec: FeatureSpec = self.light.spec
        self.routing = RoutingConfig(**json.loads((model_dir / ROUTING_FILE).read_text()))
        version_file = model_dir / VERSION_FILE
        self.version = json.loads(version_file.read_text())["version"] if version_file.exists() else "unversioned"
        self.user_feats = self.spec.side("user")
        self.item_feats = self.spec.side("item")
        self.seq_feat = self.spec.sequence

    def parse(self, body: Any) -> ParsedRequest:
        """Validate and encode one request. Raises ``RequestError`` naming the field at fault."""
        if not isinstance(body, dict):
            raise RequestError("body", "expected a JSON object with 'user' and 'candidates'", "wrong_type")
        extra = sorted(body.keys() - {"user", "candidates", "k", "m"})
        if extra:
            raise RequestError(_key_path("", extra[0]), "unknown field", "unknown_field")
        for key in ("user", "candidates"):
            if key not in body:
                raise RequestError(key, "missing field", "missing_field")
        user = body["user"]
        seq_name = self.seq_feat.name
        if not isinstance(user, dict) or seq_name not in user:
            if not isinstance(user, dict):
                raise RequestError("user", f"expected a JSON object, got {type(user).__name__}", "wrong_type")
            raise RequestError(f"user.{seq_name}", "missing field", "missing_field")
        seq = user[seq_name]
        if not isinstance(seq, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in seq):
            raise RequestError(f"user.{seq_name}", "expected a list of integer item ids", "wrong_type")
        if any(not INT64_MIN <= v <= INT64_MAX for v in seq):
            raise RequestError(f"user.{seq_name}", "item id out of the int64 range", "out_of_range")
        _check_fields({k: v for k, v in user.items() if k != seq_name}, self.user_feats, "user")

        cands = body["candidates"]
        if not isinstance(cands, list):
            raise RequestError("candidates", "expected a list of candidate objects", "wrong_type")
        if not cands:
            raise RequestError("candidates", "empty candidate list", "empty")
        limit = self.routing.max_candidates
        if len(cands) > limit:
            raise RequestError("candidates", f"{len(cands)} candidates exceed the maximum of {limit}", "too_many", 413)
        for i, c in enumerate(cands):
            _check_fields(c, self.item_feats, f"candidates[{i}]")

        k = self._bounded(body, "k", self.routing.k, 0, self.routing.max_k)
        m = self._bounded(body, "m", self.routing.m, 1, limit)
        user_cols = {f.name: [user[f.name]] for f in self.user_feats}
        item_cols = {f.name: [c[f.name] for c in cands] for f in self.item_feats}
        return ParsedRequest(
            user_x=torch.from_numpy(encode_side(user_cols, self.spec, "user")),
            seq=torch.from_numpy(encode_sequences([seq[-self.seq_feat.max_len :]], self.spec)),
            item_x=torch.from_numpy(encode_side(item_cols, self.spec, "item")),
            item_ids=item_cols["item_id"],
            k=k,
            m=m,
        )

    @staticmethod
    def _bounded(body: dict, key: str, default: int, low: int, high: int) -> int:
        value = body.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(key, "expected an integer", "wrong_type")
        if not low <= value <= high:
            raise RequestError(key, f"must be between {low} and {high}, got {value}", "out_of_range")
        return value

    @torch.inference_mode()
    def score_batch(self, reqs: list[ParsedRequest]) -> tuple[list[dict[str, Any]], StageTimes]:
        """Score several requests in one light pass and one expressive pass (cross-request batching).

        Candidates of all requests are concatenated; ``index`` maps each to its request, so the user
        side is still computed once per request. Routing (top-K) stays per request.
        """
        sizes = [r.item_x.shape[0] for r in reqs]
        index = torch.repeat_interleave(torch.arange(len(reqs)), torch.tensor(sizes))  # (ΣN,)
        user_x = torch.cat([r.user_x for r in reqs])  # (R, Fu)
        seq = torch.cat([r.seq for r in reqs])  # (R, L)
        item_x = torch.cat([r.item_x for r in reqs])  # (ΣN, Fi)

        t0 = time.perf_counter()
        light_all = self.light.score(self.light.user_side(user_x, seq), item_x, index)  # (ΣN,)
        t1 = time.perf_counter()
        offsets = [0, *itertools.accumulate(sizes)]
        light = [light_all[a:b] for a, b in itertools.pairwise(offsets)]  # R × (N_r,)
        orders = [torch.argsort(s, descending=True, stable=True) for s in light]  # R × (N_r,)
        routed = [o[: min(r.k, n)] for o, r, n in zip(orders, reqs, sizes, strict=True)]  # R × (K_r,)
        global_routed = torch.cat([rt + off for rt, off in zip(routed, offsets, strict=False)])  # (ΣK,)
        expr_all = self.expressive.score(
            self.expressive.user_side(user_x, seq), item_x[global_routed], index[global_routed]
        )  # (ΣK,)
        t2 = time.perf_counter()
        k_offsets = [0, *itertools.accumulate(len(rt) for rt in routed)]
        answers = [
            self._answer(req, light[i], orders[i], routed[i], expr_all[k_offsets[i] : k_offsets[i + 1]])
            for i, req in enumerate(reqs)
        ]
        return answers, StageTimes(light_ms=(t1 - t0) * 1e3, expressive_ms=(t2 - t1) * 1e3)

    def _answer(self, req: ParsedRequest, light, order, routed, expr) -> dict[str, Any]:
        """Top-M of one request: the routed top-K re-ranked by the expressive model, then the rest."""
        k = len(routed)
        final = torch.cat([routed[torch.argsort(expr, descending=True, stable=True)], order[k:]])[: req.m]
        expr_by_pos = dict(zip(routed.tolist(), expr.tolist(), strict=True))
        items = []
        for rank, pos in enumerate(final.tolist(), start=1):
            stage = "expressive" if pos in expr_by_pos else "light"
            score = expr_by_pos[pos] if stage == "expressive" else float(light[pos])
            items.append({"item_id": req.item_ids[pos], "score": score, "rank": rank, "stage": stage})
        n = len(req.item_ids)
        return {"model_version": self.version, "n_candidates": n, "k": k, "m": req.m, "items": items}

    def __call__(self, body: Any) -> dict[str, Any]:
        return self.score_batch([self.parse(body)])[0][0]


def decode_body(raw: Any) -> Any:
    """TorchServe hands the body as bytes/bytearray, or already-decoded JSON; normalise to Python."""
    if isinstance(raw, bytes | bytearray):
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError("body", f"malformed JSON: {exc}", "malformed_json") from None
    return raw
