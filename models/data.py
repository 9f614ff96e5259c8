"""Request-level training data: the user side once per request, candidates in CSR order.

A batch is a set of requests; each candidate carries the batch-local index of its request so the
model computes the user tower once per request and broadcasts it (request-only layout).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hap import SOURCES
from hap.contract import HASH_SPACE, LABELS, aggregate_label, holdout_mask, read_partition, source_ids  # noqa: F401  (re-exported)
from hap_runtime.encode import encode_sequences, encode_side
from hap_runtime.spec import FeatureSpec


@dataclass
class Batch:
    user_x: torch.Tensor  # (B, Fu) int64
    seq: torch.Tensor  # (B, L) int64, 0 = padding
    item_x: torch.Tensor  # (C, Fi) int64
    req: torch.Tensor  # (C,) int64, batch-local request index
    source: torch.Tensor  # (C,) int64, index into SOURCES
    label: torch.Tensor  # (C,) float32
    grade: torch.Tensor  # (C,) float32, graded relevance (EncodedData.grade)
    teacher: torch.Tensor  # (C,) float32, the logged ranking stage's position, NaN where none

    @property
    def n_requests(self) -> int:
        return self.user_x.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))


# EncodedData's arrays with one row per candidate (``req`` aside), in Batch's order
CANDIDATE_ARRAYS: tuple[str, ...] = ("item_x", "source", "label", "grade", "teacher")


def grade_of(candidates: pa.Table) -> np.ndarray:
    """Graded relevance of each candidate, the multi-level label a listwise loss reads: click, like,
    comment and a long view (``LABELS``) count one each (0..4)."""
    return sum(LABELS[k](candidates).astype(np.float32) for k in ("click", "long_view")) + sum(
        (candidates.column(c).fill_null(0).to_numpy() > 0).astype(np.float32) for c in ("like", "comment")
    )


def teacher_of(candidates: pa.Table) -> np.ndarray:
    """The logged ranking stage's position of each candidate (its order is the distillation teacher);
    NaN where the ranking stage never saw it."""
    return candidates.column("rank_pos").cast(pa.float32()).fill_null(float("nan")).to_numpy(zero_copy_only=False)


@dataclass
class EncodedData:
    """Encoded samples of a set of requests; candidates sorted by request."""

    request_ids: np.ndarray  # (R,) str
    user_x: np.ndarray  # (R, Fu)
    seq: np.ndarray  # (R, L)
    item_x: np.ndarray  # (C, Fi)
    req: np.ndarray  # (C,) sorted
    source: np.ndarray  # (C,)
    label: np.ndarray  # (C,) the binary training target (HapConfig.label)
    grade: np.ndarray | None = None  # (C,) graded relevance (``grade_of``); None: the label
    teacher: np.ndarray | None = None  # (C,) ranking-stage position (``teacher_of``); None: NaN (no teacher)

    def __post_init__(self) -> None:
        if self.grade is None:
            self.grade = np.asarray(self.label, dtype=np.float32)
        if self.teacher is None:
            self.teacher = np.full(len(self.label), np.nan, dtype=np.float32)

    @property
    def n_requests(self) -> int:
        return len(self.request_ids)

    @property
    def offsets(self) -> np.ndarray:
        """CSR offsets: candidates of request r are rows offsets[r]:offsets[r+1]."""
        return np.searchsorted(self.req, np.arange(self.n_requests + 1))

    def candidate_rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate rows of requests ``idx`` (in that order, repeats allowed) and their counts."""
        off = self.offsets
        counts = off[idx + 1] - off[idx]
        return np.repeat(off[idx] - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum()), counts

    def _candidates(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {name: getattr(self, name)[rows] for name in CANDIDATE_ARRAYS}

    def select_requests(self, idx: np.ndarray) -> EncodedData:
        """Subset of requests (in the given order), candidates re-indexed."""
        idx = np.asarray(idx, dtype=np.int64)
        rows, counts = self.candidate_rows(idx)
        return EncodedData(
            request_ids=self.request_ids[idx],
            user_x=self.user_x[idx],
            seq=self.seq[idx],
            req=np.repeat(np.arange(len(idx)), counts),
            **self._candidates(rows),
        )

    def take_candidates(self, rows: np.ndarray) -> EncodedData:
        """The same requests with only candidate ``rows`` (sorted rows keep the CSR order)."""
        return EncodedData(self.request_ids, self.user_x, self.seq, req=self.req[rows], **self._candidates(rows))

    def filter_sources(self, sources: Sequence[str]) -> EncodedData:
        """Keep only candidates of the given sources (the expressive model's hard samples)."""
        return self.take_candidates(np.flatnonzero(np.isin(self.source, [SOURCES.index(s) for s in sources])))

    def batch(self, idx: np.ndarray) -> Batch:
        return self.select_requests(idx).to_batch()

    def to_batch(self) -> Batch:
        arrays = [self.user_x, self.seq, self.item_x, self.req, self.source, self.label, self.grade, self.teacher]
        return Batch(*(torch.from_numpy(a) for a in arrays))

    def batches(self, batch_requests: int, rng: np.random.Generator | None = None) -> Iterator[Batch]:
        order = rng.permutation(self.n_requests) if rng is not None else np.arange(self.n_requests)
        for start in range(0, self.n_requests, batch_requests):
            yield self.batch(order[start : start + batch_requests])

    def epoch(self, epoch: int, batch_requests: int, rank: int = 0, world: int = 1, seed: int = 0) -> Iterator[Batch]:
        """One epoch in a (seed, epoch)-determined order: the in-memory twin of ``ShardStream.epoch``."""
        if world != 1:
            raise ValueError("in-memory data trains in one process; stream shards (models.stream) for DDP")
        return self.batches(batch_requests, np.random.default_rng([seed, epoch]))

    @classmethod
    def concat(cls, parts: Sequence[EncodedData]) -> EncodedData:
        shift = np.cumsum([0] + [p.n_requests for p in parts[:-1]])
        return cls(
            request_ids=np.concatenate([p.request_ids for p in parts]),
            user_x=np.concatenate([p.user_x for p in parts]),
            seq=np.concatenate([p.seq for p in parts]),
            req=np.concatenate([p.req + s for p, s in zip(parts, shift, strict=True)]),
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in CANDIDATE_ARRAYS},
        )


def candidates_in_order(requests: pa.Table, candidates: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """The candidates in the encoded order (by request, stable) and each one's request index.
    Orphan candidates (unknown request_id) are dropped."""
    req_index = pc.index_in(candidates["request_id"], value_set=requests["request_id"]).to_numpy(zero_copy_only=False)
    req_index = np.nan_to_num(req_index.astype(np.float64), nan=-1).astype(np.int64)
    keep = req_index >= 0
    order = np.argsort(req_index[keep], kind="stable")
    return candidates.filter(pa.array(keep)).take(pa.array(order)), req_index[keep][order]


def encode_tables(requests: pa.Table, candidates: pa.Table, spec: FeatureSpec, label: str) -> EncodedData:
    """Encode one day's contract tables. Orphan candidates (unknown request_id) are dropped."""
    cand, req = candidates_in_order(requests, candidates)
    seq_feat = spec.sequence
    return EncodedData(
        request_ids=np.asarray(requests["request_id"].to_pylist(), dtype=str),
        user_x=encode_side(_columns(requests, spec, "user"), spec, "user").numpy(),
        seq=encode_sequences(requests[seq_feat.name].to_pylist(), spec).numpy(),
        item_x=encode_side(_columns(cand, spec, "item"), spec, "item").numpy(),
        req=req,
        source=source_ids(cand["source"].to_numpy(zero_copy_only=False)),
        label=aggregate_label(cand, label),
        grade=grade_of(cand),
        teacher=teacher_of(cand),
    )


def _columns(table: pa.Table, spec: FeatureSpec, side: str) -> dict[str, np.ndarray]:
    """One writable array per feature (torch shares their memory while encoding)."""
    cols = {}
    for f in spec.side(side):  # type: ignore[arg-type]
        col = table[f.name]
        if f.vocab:
            cols[f.name] = np.asarray(col.to_pylist(), dtype=object)
        elif f.kind == "bucket":
            cols[f.name] = col.cast(pa.float64()).fill_null(float("nan")).to_numpy().copy()
        else:
            cols[f.name] = col.fill_null(-1).to_numpy().copy()
    return cols


def load_day(root: str | Path, ds: str, spec: FeatureSpec, label: str) -> EncodedData:
    return encode_tables(read_partition(root, "requests", ds), read_partition(root, "candidates", ds), spec, label)
