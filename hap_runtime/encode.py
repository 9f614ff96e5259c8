"""Feature values → embedding indices, in torch: the one encoding that training and serving share.

Training passes numpy columns (``torch.as_tensor`` shares their memory) and serving passes the
request's validated columns; both get the same int64 indices. Index 0 means missing, unknown or
padding.
"""

from __future__ import annotations

import array
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import torch

from hap_runtime.spec import Feature, FeatureSpec, Side

# Fibonacci hashing multiplier 0x9E3779B97F4A7C15 as a signed int64: int64 multiplication wraps
# modulo 2**64 exactly like the unsigned product, so the top bits are the same as in uint64.
_HASH_MULT = 0x9E3779B97F4A7C15 - 2**64
_LOW31 = (1 << 31) - 1


def hash_ids(values: Any, size: int) -> torch.Tensor:
    """Multiplicative hash of int64 ids into [1, size]; stable across processes and machines.

    ``(v * MULT mod 2**64) >> 33`` computed on int64: the arithmetic shift's sign bits are masked off.
    """
    v = torch.as_tensor(values, dtype=torch.int64)
    return (((v * _HASH_MULT) >> 33) & _LOW31) % size + 1


def encode_column(feature: Feature, values: Any) -> torch.Tensor:
    """Encode one non-sequence column (a tensor, numpy array or list) to int64 indices."""
    if feature.kind == "id":
        return hash_ids(values, feature.size)
    if feature.kind == "bucket":
        x = torch.as_tensor(values, dtype=torch.float64)
        bounds = torch.tensor(feature.boundaries, dtype=torch.float64)
        idx = torch.searchsorted(bounds, x, right=True) + 1
        return torch.where(torch.isfinite(x), idx, 0)
    if feature.vocab:
        lookup = {v: i + 1 for i, v in enumerate(feature.vocab)}
        codes = array.array("q", [lookup.get(v, 0) for v in values])
        return torch.frombuffer(codes, dtype=torch.int64) if codes else torch.zeros(0, dtype=torch.int64)
    x = torch.as_tensor(values, dtype=torch.int64)
    return torch.where((x >= 0) & (x < feature.size), x + 1, 0)


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
    """Every non-sequence feature of one side → a (rows, F) int64 matrix, in spec order."""
    return torch.stack([encode_column(f, columns[f.name]) for f in spec.side(side)], dim=1)
