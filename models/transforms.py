"""Fitted feature transforms: analyze the run's training rows, then encode everything with the result.

The analyze-then-transform pattern (TF Transform): per run, from the training window's training rows
only (never the run day's held-out or validation requests), each numeric (``bucket``) feature gets
quantile boundaries and each string categorical a vocabulary of its most frequent values. The result
is a ``FeatureSpec`` like the declared one with those two fields replaced; the declared ranges
(``low``/``high``) stay, so validation and the request codec check the contract, not the fit. The
fitted spec is the prepared folder's ``spec.json``, every model's ``model.json`` and so the archive:
training, evaluation, the offline scorer and the server all encode through ``hap_runtime.encode``
with it.

Memory is bounded whatever the window's size: columns are scanned in record batches, a numeric
feature keeps a deterministic thinning of its values (every 2^j-th, j growing so that at most
``max_values`` are held) and a vocabulary counts distinct values.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from hap.config import TransformConfig
from hap.contract import HASH_SPACE, partition_dir
from hap_runtime.spec import Feature, FeatureSpec
from models.stream import SCAN_ROWS, request_hash  # the same crc32 as the split; one scan size

_SIDE_TABLE = {"user": "requests", "item": "candidates"}


class _Thinned:
    """Every ``stride``-th value of a stream (by position), the stride doubling whenever more than
    ``cap`` are held: a uniform, deterministic sample in bounded memory."""

    def __init__(self, cap: int) -> None:
        self.cap, self.stride, self.seen, self.held = cap, 1, 0, 0
        self.parts: list[np.ndarray] = []

    def add(self, x: np.ndarray) -> None:
        first = (-self.seen) % self.stride  # the first position of this chunk on the stride
        self.seen += len(x)
        part = x[first :: self.stride]
        self.parts.append(part)
        self.held += len(part)
        while self.held > self.cap:  # positions 0, s, 2s, ... → 0, 2s, 4s, ...
            values = np.concatenate(self.parts)[::2]
            self.parts, self.held, self.stride = [values], len(values), self.stride * 2

    def values(self) -> np.ndarray:
        v = np.concatenate(self.parts) if self.parts else np.zeros(0)
        return v[np.isfinite(v)]


def quantile_boundaries(values: np.ndarray, buckets: int) -> tuple[float, ...]:
    """Boundaries cutting ``values`` into ``buckets`` equal-frequency buckets; ties merge (a constant
    column gets one boundary, its value). Empty input: no boundaries."""
    if len(values) == 0:
        return ()
    cuts = np.quantile(values, np.arange(1, buckets) / buckets) if buckets > 1 else np.array([np.median(values)])
    return tuple(float(b) for b in np.unique(cuts))


def top_vocabulary(counts: Counter, size: int) -> tuple[str, ...]:
    """The ``size`` most frequent values (ties by value, so a refit of the same rows is the same)."""
    return tuple(v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size])


def fitted(feature: Feature) -> bool:
    """Numeric features get boundaries, string categoricals a vocabulary; ids and ints stay declared."""
    return feature.kind == "bucket" or (feature.kind == "categorical" and bool(feature.vocab))


def _training_batches(
    root, days: Iterable[str], ds: str, exclude: float, table: str, names
) -> Iterator[pa.RecordBatch]:
    """``names`` of ``table`` for every training row of ``days``: on ``ds`` only the requests whose id
    hashes outside the held-out and validation share ``[0, exclude)`` (``hap.contract.split_mask``)."""
    cut = int(exclude * HASH_SPACE)
    for day in days:
        src = pads.dataset(partition_dir(root, table, day), format="parquet")
        for rb in src.to_batches(columns=["request_id", *names], batch_size=SCAN_ROWS, use_threads=False):
            if day == ds and cut > 0:
                rb = rb.filter(pa.array(request_hash(rb.column("request_id")) % HASH_SPACE >= cut))
            if rb.num_rows:
                yield rb


def fit_spec(root, days: list[str], ds: str, exclude: float, spec: FeatureSpec, cfg: TransformConfig) -> FeatureSpec:
    """``spec`` with boundaries and vocabularies fitted on the training rows of ``days`` (see module)."""
    if not cfg.fit or not days:
        return spec
    fits: dict[str, Feature] = {}
    for side, table in _SIDE_TABLE.items():
        feats = [f for f in spec.side(side) if fitted(f)]  # type: ignore[arg-type]
        if not feats:
            continue
        numbers = {f.name: _Thinned(cfg.max_values) for f in feats if f.kind == "bucket"}
        words: dict[str, Counter] = {f.name: Counter() for f in feats if f.vocab}
        for rb in _training_batches(root, days, ds, exclude, table, [f.name for f in feats]):
            for name, sample in numbers.items():
                sample.add(rb.column(name).cast(pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False))
            for name, counts in words.items():
                for row in pc.value_counts(rb.column(name).drop_null()).to_pylist():
                    counts[row["values"]] += row["counts"]
        for f in feats:
            if f.kind == "bucket":
                bounds = quantile_boundaries(numbers[f.name].values(), cfg.buckets)
                fits[f.name] = dataclasses.replace(f, boundaries=bounds) if bounds else f
            else:
                vocab = top_vocabulary(words[f.name], cfg.vocab_size)
                fits[f.name] = dataclasses.replace(f, vocab=vocab) if vocab else f
    return FeatureSpec(tuple(fits.get(f.name, f) for f in spec.features))
