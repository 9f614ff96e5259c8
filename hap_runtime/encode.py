"""Feature values → embedding indices, in torch: the one encoding that training and serving share.

Training passes numpy columns (``torch.as_tensor`` shares their memory) and serving passes the
request's validated columns; both get the same int64 indices. Index 0 means missing, unknown or
padding.
"""

from __future__ import annotations

import array
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch

from hap_runtime.spec import Feature, FeatureSpec, Side

# Fibonacci hashing multiplier 0x9E3779B97F4A7C15 as a signed int64: int64 multiplication wraps
# modulo 2**64 exactly like the unsigned product, so the top bits are the same as in uint64.
_HASH_MULT = 0x9E3779B97F4A7C15 - 2**64
_LOW31 = (1 << 31) - 1


def hash_ids(values: Any, size: int | torch.Tensor) -> torch.Tensor:
    """Multiplicative hash of int64 ids into [1, size]; stable across processes and machines.

    ``(v * MULT mod 2**64) >> 33`` computed on int64: the arithmetic shift's sign bits are masked off.
    ``size`` may be a tensor broadcasting over ``values`` (one table size per feature row).
    """
    v = torch.as_tensor(values, dtype=torch.int64)
    return (((v * _HASH_MULT) >> 33) & _LOW31) % size + 1


def _categorical(x: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    return torch.where((x >= 0) & (x < size), x + 1, 0)


def _bucket(x: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Index of the bucket (boundaries ``bounds``, +inf-padded rows) each value falls in; 0 if not finite."""
    idx = torch.searchsorted(bounds, x.contiguous(), right=True) + 1
    return torch.where(torch.isfinite(x), idx, 0)


def _vocab(feature: Feature, values: Any) -> torch.Tensor:
    lookup = {v: i + 1 for i, v in enumerate(feature.vocab)}
    codes = array.array("q", [lookup.get(v, 0) for v in values])
    return torch.frombuffer(codes, dtype=torch.int64) if codes else torch.zeros(0, dtype=torch.int64)


def encode_column(feature: Feature, values: Any) -> torch.Tensor:
    """Encode one non-sequence column (a tensor, numpy array or list) to int64 indices."""
    if feature.vocab:
        return _vocab(feature, values)
    if feature.kind == "bucket":
        bounds = torch.tensor(feature.boundaries, dtype=torch.float64)
        return _bucket(torch.as_tensor(values, dtype=torch.float64), bounds)
    x = torch.as_tensor(values, dtype=torch.int64)
    return hash_ids(x, feature.size) if feature.kind == "id" else _categorical(x, feature.size)


@dataclass(frozen=True)
class _SidePlan:
    """One side's features grouped by transform, so each group is encoded in one pass."""

    names: tuple[str, ...]
    ids: list[int]
    id_sizes: torch.Tensor  # (F_id, 1)
    cats: list[int]
    cat_sizes: torch.Tensor  # (F_cat, 1)
    buckets: list[int]
    bounds: torch.Tensor  # (F_bucket, B) boundaries, padded with +inf
    vocab: list[int]


@functools.lru_cache(maxsize=32)
def _plan(spec: FeatureSpec, side: Side) -> _SidePlan:
    feats = spec.side(side)
    ids = [j for j, f in enumerate(feats) if f.kind == "id"]
    cats = [j for j, f in enumerate(feats) if f.kind == "categorical" and not f.vocab]
    buckets = [j for j, f in enumerate(feats) if f.kind == "bucket"]
    width = max((len(feats[j].boundaries) for j in buckets), default=0)
    bounds = torch.full((len(buckets), width), math.inf, dtype=torch.float64)
    for row, j in enumerate(buckets):
        bounds[row, : len(feats[j].boundaries)] = torch.tensor(feats[j].boundaries, dtype=torch.float64)
    return _SidePlan(
        names=tuple(f.name for f in feats),
        ids=ids,
        id_sizes=torch.tensor([[feats[j].size] for j in ids], dtype=torch.int64),
        cats=cats,
        cat_sizes=torch.tensor([[feats[j].size] for j in cats], dtype=torch.int64),
        buckets=buckets,
        bounds=bounds,
        vocab=[j for j, f in enumerate(feats) if f.vocab],
    )


def encode_sequences(seqs: Sequence[Sequence[int]], spec: FeatureSpec) -> torch.Tensor:
    """Ragged id lists → a (B, L) index matrix, left-aligned, 0-padded, truncated to ``max_len``."""
    feat = spec.sequence
    table = spec[feat.shares]
    out = torch.zeros((len(seqs), feat.max_len), dtype=torch.int64)
    lengths = torch.tensor([min(len(s), feat.max_len) for s in seqs], dtype=torch.int64)
    total = int(lengths.sum())
    if total == 0:
        return out
    flat = torch.tensor(list(chain.from_iterable(s[: feat.max_len] for s in seqs)), dtype=torch.int64)
    rows = torch.repeat_interleave(torch.arange(len(seqs)), lengths)
    cols = torch.arange(total) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    out[rows, cols] = hash_ids(flat, table.size)
    return out


def encode_side(columns: Mapping[str, Any], spec: FeatureSpec, side: Side) -> torch.Tensor:
    """Every non-sequence feature of one side → a (rows, F) int64 matrix, in spec order.

    The same transforms as ``encode_column``, applied to all features of a kind at once.
    """
    plan = _plan(spec, side)
    feats = spec.side(side)

    def stack(idx: list[int], dtype: torch.dtype) -> torch.Tensor:  # (F_group, rows)
        return torch.stack([torch.as_tensor(columns[plan.names[j]], dtype=dtype) for j in idx])

    rows = len(columns[plan.names[0]])
    out = torch.empty((rows, len(plan.names)), dtype=torch.int64)
    if plan.ids:
        out[:, plan.ids] = hash_ids(stack(plan.ids, torch.int64), plan.id_sizes).T
    if plan.cats:
        out[:, plan.cats] = _categorical(stack(plan.cats, torch.int64), plan.cat_sizes).T
    if plan.buckets:
        out[:, plan.buckets] = _bucket(stack(plan.buckets, torch.float64), plan.bounds).T
    for j in plan.vocab:
        out[:, j] = _vocab(feats[j], columns[plan.names[j]])
    return out
