"""Request bodies in, validated tensors out: the serving contract's parser.

One request is one user and N candidates, in either of two JSON layouts:

- rows: ``{"user": {...}, "candidates": [{"item_id": 5, ...}, ...], "k": 200, "m": 50}``
- columns (compact): ``{"user": {...}, "items": {"item_id": [5, ...], ...}, "k": 200, "m": 50}``
- by id: ``{"user": {...}, "item_ids": [5, ...], "k": 200, "m": 50}``, each item's features (and a
  decoupled light model's item vectors) from the version's item snapshot (``hap_runtime.snapshot``)

Checks run per column (C-level passes over a list, then torch), so a 1,000-candidate request parses
in about a millisecond; finding the offending index to name it runs only when a check fails. Every
rejection is a ``RequestError`` naming the field, an error kind and an HTTP status.
"""

from __future__ import annotations

import array
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hap_runtime.config import RoutingConfig
from hap_runtime.encode import encode_sequences, encode_side
from hap_runtime.snapshot import ItemSnapshot
from hap_runtime.spec import Feature, FeatureSpec

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

ERROR_KINDS = (
    "malformed_json", "too_large", "too_deep", "wrong_type", "missing_field", "unknown_field",
    "length_mismatch", "non_finite", "out_of_range", "empty", "too_many", "too_long", "unknown_item", "internal",
    "overloaded",
)  # fmt: skip
"""Labels of the errors-by-kind metric: ``internal`` is the server's fault (500), ``overloaded`` a request
shed while the queue is too deep (503), the rest are the client's (4xx)."""


class RequestError(ValueError):
    """A rejected request: ``field`` names where (``candidates[3].item_id``), ``kind`` is one of
    ``ERROR_KINDS``, ``status`` the HTTP code."""

    def __init__(self, field: str, message: str, kind: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        assert kind in ERROR_KINDS, kind
        self.field, self.message, self.kind, self.status = field, message, kind, status

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "kind": self.kind, "status": self.status}


@dataclass
class ParsedRequest:
    user_x: torch.Tensor  # (1, Fu)
    seq: torch.Tensor  # (1, L)
    item_x: torch.Tensor  # (N, Fi), duplicates of an item_id removed
    item_ids: list[int]  # (N,)
    k: int
    m: int
    duplicates: int  # candidates dropped because their item_id came earlier in the request
    snapshot_rows: torch.Tensor | None = None  # (N,) rows in the item snapshot when sent by id


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259); send finite numbers")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # like msgspec: a literal beyond float64 is out of range
        raise ValueError(f"Number out of range: {text[:40]}")
    return value


class JsonDecoder:
    """Strict JSON (UTF-8, no NaN/Infinity literals) to Python objects. ``fast`` uses msgspec when the
    environment has it (about 5x faster on a 1,000-candidate body); otherwise, and in an environment
    holding only torch, the standard library's decoder with the same acceptance rules."""

    def __init__(self, fast: bool = True) -> None:
        msgspec = None
        if fast:
            try:
                import msgspec
            except ImportError:
                pass
        if msgspec is not None:
            self.name, self.decode = "msgspec", msgspec.json.Decoder().decode
            self.errors: tuple[type[Exception], ...] = (msgspec.DecodeError,)
        else:
            stdlib = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
            self.name, self.errors = "json", (ValueError,)
            self.decode = lambda raw: stdlib.decode(raw.decode("utf-8"))

    def __call__(self, raw: bytes | bytearray) -> Any:
        try:
            return self.decode(raw)
        except RecursionError:
            raise RequestError("body", "JSON nested too deeply", "too_deep") from None
        except UnicodeDecodeError as exc:
            raise RequestError("body", f"not UTF-8: {exc.reason} at byte {exc.start}", "malformed_json") from None
        except self.errors as exc:
            message = str(exc)
            if "out of range" in message or "Exceeds the limit" in message:
                raise RequestError("body", f"number out of range: {message}", "out_of_range") from None
            at = re.search(r"\(byte (\d+)\)|\(char (\d+)\)", message)
            near = ""
            if at:  # msgspec counts bytes, the standard library characters
                text = bytes(raw) if at.group(1) else bytes(raw).decode("utf-8", "replace")
                pos = int(at.group(1) or at.group(2))
                snippet = text[max(0, pos - 30) : pos + 10]
                if isinstance(snippet, bytes):
                    snippet = snippet.decode("utf-8", "replace")
                near = f" near {snippet!r}"
            raise RequestError("body", f"malformed JSON: {message}{near}", "malformed_json") from None


DECODER = JsonDecoder()


def decode_body(raw: Any, max_bytes: int, decoder: JsonDecoder = DECODER) -> Any:
    """The request body as Python objects. TorchServe hands bytes (``decode_input_request=false``),
    a ``str`` for ``text/*`` bodies, or JSON it already decoded; ``None`` when it found no body."""
    if raw is None:  # e.g. a form-encoded POST (curl --data without a Content-Type): TorchServe split it
        raise RequestError("body", "no request body found: send the JSON with 'Content-Type: application/json' "
                           "(TorchServe turns form-encoded bodies into parameters)", "malformed_json")  # fmt: skip
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, bytes | bytearray):
        return raw
    if len(raw) > max_bytes:
        raise RequestError("body", f"{len(raw)} bytes exceed the limit of {max_bytes}", "too_large", 413)
    return decoder(raw)


def _key_path(where: str, key: str) -> str:
    """Where an unknown key sits, quoted when it is not a plain name (empty, spaces, dots)."""
    plain = key.isidentifier()
    if not where:
        return key if plain else f"[{json.dumps(key)[:80]}]"
    return f"{where}.{key}" if plain else f"{where}[{json.dumps(key)[:80]}]"


def _check_keys(obj: Any, names: frozenset[str], where: str) -> None:
    if type(obj) is not dict:
        raise RequestError(where, f"expected a JSON object, got {_type_name(obj)}", "wrong_type")
    if obj.keys() != names:
        missing = sorted(names - obj.keys())
        if missing:
            raise RequestError(f"{where}.{missing[0]}", "missing field", "missing_field")
        raise RequestError(_key_path(where, sorted(obj.keys() - names)[0]), "unknown field", "unknown_field")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_NUMBER_TYPES = frozenset({int, float})
_INT_TYPES = frozenset({int})
_STR_TYPES = frozenset({str})
_DTYPES = {"bucket": torch.float64, "id": torch.int64, "categorical": torch.int64}


def check_column(f: Feature, values: list, where: Callable[[int], str]) -> Any:
    """Validate one feature's values against the contract (type, finiteness, declared range) and
    return them ready for ``encode_column``: a tensor for numbers, the list for strings."""
    if f.vocab:
        expected, what = _STR_TYPES, "a string"
    elif f.kind == "bucket":
        expected, what = _NUMBER_TYPES, "a number"
    else:
        expected, what = _INT_TYPES, "an integer"
    if len(values) == 1 and type(values[0]) in expected and not f.vocab:  # a user feature: checks in Python
        v = values[0]
        if (f.low is None or v >= f.low) and (f.high is None or v <= f.high) and INT64_MIN <= v <= INT64_MAX:
            return torch.tensor(values, dtype=_DTYPES[f.kind])  # NaN and out-of-range fall through
    if not set(map(type, values)) <= expected:
        i = next(i for i, v in enumerate(values) if type(v) not in expected)
        raise RequestError(where(i), f"expected {what}, got {_type_name(values[i])}", "wrong_type")
    if f.vocab:
        return values  # unknown strings encode to the out-of-vocabulary index
    if not values:
        return torch.empty(0, dtype=_DTYPES[f.kind])
    try:  # array.array converts a list ~4x faster than torch.tensor; the tensor shares its buffer
        x = torch.frombuffer(array.array("d" if f.kind == "bucket" else "q", values), dtype=_DTYPES[f.kind])
    except OverflowError:  # an integer beyond int64 / float64
        i = next((i for i, v in enumerate(values) if not INT64_MIN <= v <= INT64_MAX or abs(v) > 1.7e308), 0)
        raise RequestError(where(i), "number out of range", "out_of_range") from None
    low = -math.inf if f.low is None else f.low
    high = math.inf if f.high is None else f.high
    lo, hi = torch.aminmax(x)
    if lo.item() >= low and hi.item() <= high:  # False for NaN: the slow path below names it
        return x
    finite = torch.isfinite(x)
    if not finite.all():
        i = int((~finite).nonzero()[0])
        raise RequestError(where(i), "must be finite (NaN/inf not allowed)", "non_finite")
    i = int(((x < low) | (x > high)).nonzero()[0])
    raise RequestError(where(i), f"{values[i]} is outside the contract's range [{low:g}, {high:g}]", "out_of_range")


LAYOUTS = ("candidates", "items", "item_ids")  # rows, columns, by id: a request uses exactly one


class RequestCodec:
    """Parses request bodies for one feature spec and routing config (both from the archive); with
    the version's item snapshot, also requests that send candidates by ``item_ids`` alone."""

    def __init__(self, spec: FeatureSpec, routing: RoutingConfig, snapshot: ItemSnapshot | None = None) -> None:
        self.spec, self.routing, self.snapshot = spec, routing, snapshot
        self.user_feats, self.item_feats, self.seq_feat = spec.side("user"), spec.side("item"), spec.sequence
        self.user_names = frozenset(f.name for f in self.user_feats) | {self.seq_feat.name}
        self.item_names = frozenset(f.name for f in self.item_feats)
        seq = self.seq_feat  # its ids follow the contract's id range
        self.seq_ids = Feature(seq.name, "user", "id", low=seq.low, high=seq.high)
        self.item_ids = next(f for f in self.item_feats if f.name == "item_id")

    def parse(self, body: Any) -> ParsedRequest:
        """Validate and encode one request. Raises ``RequestError`` naming the field at fault."""
        if type(body) is not dict:
            raise RequestError("body", "expected a JSON object with 'user' and 'candidates', 'items' or 'item_ids'",
                               "wrong_type")  # fmt: skip
        extra = sorted(body.keys() - {"user", *LAYOUTS, "k", "m"})
        if extra:
            raise RequestError(_key_path("", extra[0]), "unknown field", "unknown_field")
        if "user" not in body:
            raise RequestError("user", "missing field", "missing_field")
        given = [name for name in LAYOUTS if name in body]
        if len(given) != 1:
            if not given:
                raise RequestError("candidates", "missing field ('candidates' rows, 'items' columns or 'item_ids')",
                                   "missing_field")  # fmt: skip
            raise RequestError(given[1], "give one of 'candidates' (rows), 'items' (columns) or 'item_ids', "
                               f"not both '{given[0]}' and '{given[1]}'", "unknown_field")  # fmt: skip
        user_x, seq = self._user(body["user"])
        rows = None
        if "item_ids" in body:
            item_ids, item_x, rows = self._by_id(body["item_ids"])
        else:
            columns, where = self._rows(body["candidates"]) if "candidates" in body else self._columns(body["items"])
            item_cols = {f.name: check_column(f, columns[f.name], where(f.name)) for f in self.item_feats}
            item_ids = columns["item_id"]
            item_x = encode_side(item_cols, self.spec, "item")  # (N, Fi)
        duplicates = 0
        if len(set(item_ids)) < len(item_ids):
            first: dict[int, int] = {}
            for i, v in enumerate(item_ids):
                first.setdefault(v, i)
            keep = list(first.values())
            duplicates = len(item_ids) - len(keep)
            item_x, item_ids = item_x[torch.tensor(keep)], [item_ids[i] for i in keep]
            rows = rows[torch.tensor(keep)] if rows is not None else None
        k = self._bounded(body, "k", self.routing.k, 0, self.routing.max_k)
        m = self._bounded(body, "m", self.routing.m, 1, self.routing.max_candidates)
        return ParsedRequest(user_x, seq, item_x, item_ids, k, m, duplicates, rows)

    def _by_id(self, ids: Any) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Candidates by id: their encoded features and rows from the snapshot. An id the snapshot
        does not hold is refused, named: the request may send that item's features instead."""
        if self.snapshot is None:
            raise RequestError("item_ids", "this version carries no item snapshot: send the candidates' features "
                               "in 'candidates' or 'items'", "unknown_field")  # fmt: skip
        if type(ids) is not list:
            raise RequestError("item_ids", f"expected a list of item ids, got {_type_name(ids)}", "wrong_type")
        self._check_count(len(ids), "item_ids")
        values = check_column(self.item_ids, ids, lambda i: f"item_ids[{i}]")  # (N,) int64
        rows = self.snapshot.rows(values)  # (N,)
        missing = (rows < 0).nonzero()
        if len(missing):
            i = int(missing[0])
            raise RequestError(f"item_ids[{i}]", f"item {ids[i]} is not in this version's item snapshot "
                               f"({len(self.snapshot)} items): send its features in 'candidates' or 'items'",
                               "unknown_item")  # fmt: skip
        return ids, self.snapshot.item_x[rows], rows

    def _user(self, user: Any) -> tuple[torch.Tensor, torch.Tensor]:
        _check_keys(user, self.user_names, "user")
        name, cap = self.seq_feat.name, self.seq_feat.max_len
        hist = user[name]
        if type(hist) is not list:
            raise RequestError(f"user.{name}", f"expected a list of item ids, got {_type_name(hist)}", "wrong_type")
        if len(hist) > cap:
            raise RequestError(f"user.{name}", f"{len(hist)} ids exceed the contract's cap of {cap}", "too_long")
        check_column(self.seq_ids, hist, lambda i: f"user.{name}[{i}]")
        cols = {f.name: check_column(f, [user[f.name]], lambda _, n=f.name: f"user.{n}") for f in self.user_feats}
        return encode_side(cols, self.spec, "user"), encode_sequences([hist], self.spec)  # (1, Fu), (1, L)

    def _rows(self, cands: Any) -> tuple[dict[str, list], Callable[[str], Callable[[int], str]]]:
        if type(cands) is not list:
            raise RequestError("candidates", f"expected a list of candidate objects, got {_type_name(cands)}",
                               "wrong_type")  # fmt: skip
        self._check_count(len(cands), "candidates")
        names = self.item_names
        for i, c in enumerate(cands):
            if type(c) is not dict or c.keys() != names:
                _check_keys(c, names, f"candidates[{i}]")
        return {n: [c[n] for c in cands] for n in names}, lambda n: lambda i: f"candidates[{i}].{n}"

    def _columns(self, items: Any) -> tuple[dict[str, list], Callable[[str], Callable[[int], str]]]:
        _check_keys(items, self.item_names, "items")
        n = None
        for f in self.item_feats:
            col = items[f.name]
            if type(col) is not list:
                raise RequestError(f"items.{f.name}", f"expected a list of values, got {_type_name(col)}", "wrong_type")
            if n is None:
                n = len(col)
                self._check_count(n, "items")
            elif len(col) != n:
                raise RequestError(f"items.{f.name}", f"{len(col)} values, but {n} for "
                                   f"items.{self.item_feats[0].name}", "length_mismatch")  # fmt: skip
        return items, lambda name: lambda i: f"items.{name}[{i}]"

    def _check_count(self, n: int, where: str) -> None:
        if n == 0:
            raise RequestError(where, "empty candidate list", "empty")
        if n > self.routing.max_candidates:
            raise RequestError(where, f"{n} candidates exceed the maximum of {self.routing.max_candidates}",
                               "too_many", 413)  # fmt: skip

    @staticmethod
    def _bounded(body: dict, key: str, default: int, low: int, high: int) -> int:
        value = body.get(key, default)
        if type(value) is not int:
            raise RequestError(key, f"expected an integer, got {_type_name(value)}", "wrong_type")
        if not low <= value <= high:
            raise RequestError(key, f"must be between {low} and {high}, got {value}", "out_of_range")
        return value
