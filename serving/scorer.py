"""The two-stage scorer: parse a request, light model on all N, expressive on the light top-K.

Independent of the model server: the TorchServe handler is a thin shell over this class, so the
server can change without touching parsing, routing or scoring.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hap.config import RoutingConfig
from hap.features import Feature, FeatureSpec, encode_sequences, encode_side
from models.nets import load_model

ROUTING_FILE = "routing.json"
VERSION_FILE = "version.json"


class RequestError(ValueError):
    """A client error: the message names the offending field. ``status`` is the HTTP code."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "status": self.status}


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
            raise RequestError(where, f"expected a string, got {type(value).__name__}")
    elif f.kind == "bucket":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(where, f"expected a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise RequestError(where, "must be a finite number (NaN/inf not allowed)")
    elif isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(where, f"expected an integer, got {type(value).__name__}")


def _check_fields(obj: Any, feats: tuple[Feature, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise RequestError(where, f"expected a JSON object, got {type(obj).__name__}")
    names = {f.name for f in feats}
    missing = sorted(names - obj.keys())
    if missing:
        raise RequestError(f"{where}.{missing[0]}", "missing field")
    extra = sorted(obj.keys() - names)
    if extra:
        raise RequestError(f"{where}.{extra[0]}", "unknown field")
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
            raise RequestError("body", "expected a JSON object with 'user' and 'candidates'")
        extra = sorted(body.keys() - {"user", "candidates", "k", "m"})
        if extra:
            raise RequestError(extra[0], "unknown field")
        for key in ("user", "candidates"):
            if key not in body:
                raise RequestError(key, "missing field")
        user = body["user"]
        seq_name = self.seq_feat.name
        if not isinstance(user, dict) or seq_name not in user:
            raise RequestError(f"user.{seq_name}" if isinstance(user, dict) else "user", "missing field")
        seq = user[seq_name]
        if not isinstance(seq, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in seq):
            raise RequestError(f"user.{seq_name}", "expected a list of integer item ids")
        _check_fields({k: v for k, v in user.items() if k != seq_name}, self.user_feats, "user")

        cands = body["candidates"]
        if not isinstance(cands, list):
            raise RequestError("candidates", "expected a list of candidate objects")
        if not cands:
            raise RequestError("candidates", "empty candidate list")
        limit = self.routing.max_candidates
        if len(cands) > limit:
            raise RequestError("candidates", f"{len(cands)} candidates exceed the maximum of {limit}", status=413)
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
            raise RequestError(key, "expected an integer")
        if not low <= value <= high:
            raise RequestError(key, f"must be between {low} and {high}, got {value}")
        return value

    @torch.inference_mode()
    def score(self, req: ParsedRequest) -> dict[str, Any]:
        n = req.item_x.shape[0]
        index = torch.zeros(n, dtype=torch.long)  # every candidate belongs to request 0
        light = self.light.score(self.light.user_side(req.user_x, req.seq), req.item_x, index)  # (N,)
        k = min(req.k, n)
        light_order = torch.argsort(light, descending=True, stable=True)  # (N,)
        routed = light_order[:k]  # (K,)
        expr = self.expressive.score(self.expressive.user_side(req.user_x, req.seq), req.item_x[routed], index[:k])
        final = torch.cat([routed[torch.argsort(expr, descending=True, stable=True)], light_order[k:]])[: req.m]
        expr_by_pos = dict(zip(routed.tolist(), expr.tolist(), strict=True))
        items = []
        for rank, pos in enumerate(final.tolist(), start=1):
            stage = "expressive" if pos in expr_by_pos else "light"
            score = expr_by_pos[pos] if stage == "expressive" else float(light[pos])
            items.append({"item_id": req.item_ids[pos], "score": score, "rank": rank, "stage": stage})
        return {"model_version": self.version, "n_candidates": n, "k": k, "m": req.m, "items": items}

    def __call__(self, body: Any) -> dict[str, Any]:
        return self.score(self.parse(body))


def decode_body(raw: Any) -> Any:
    """TorchServe hands the body as bytes/bytearray, or already-decoded JSON; normalise to Python."""
    if isinstance(raw, bytes | bytearray):
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError("body", f"malformed JSON: {exc}") from None
    return raw
