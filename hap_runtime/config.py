"""The parts of the configuration an archive carries: model sizes and routing with request limits.

``hap.config.HapConfig`` embeds these dataclasses; the archive stores them as JSON
(``model.json``, ``routing.json``) so the worker rebuilds them without the rest of the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How the light model joins the user and item sides (``hap_runtime.nets``): "interaction" (the
# vectors, their product, then an MLP per candidate), "two_tower" (decoupled: a similarity of the
# two tower outputs, so an item's vector never depends on the request) or "ranktower" (decoupled
# towers with multi-head gated views; per pair only a parameter-free cross-attention between the
# two sides' heads and the maximum similarity).
Arch = Literal["interaction", "two_tower", "ranktower"]
DECOUPLED: frozenset[str] = frozenset({"two_tower", "ranktower"})
SimilarityKind = Literal["cosine", "dot"]
# How a numeric (``bucket``) feature's bucket index becomes a vector (``hap_runtime.nets.Embeddings``):
# "bucket" (a free row per bucket) or "cumulative" (bucket i's vector is the sum of per-bucket
# steps 1..i, so neighbouring buckets share all but one step: an ordered column with many thin
# buckets trains like a smooth function of its value instead of unrelated rows) or "linear" (a free
# row per bucket plus one learned direction per feature times the bucket's position in [-1, 1]: the
# bucket rows keep what "bucket" learns, the direction gives the model the column's order at once).
NumericEmbedding = Literal["bucket", "cumulative", "linear"]

# Files of the model folder inside an archive (written at packaging, read by the scorer).
ROUTING_FILE = "routing.json"
VERSION_FILE = "version.json"


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of one model. Light: M MLP layers, no attention. Expressive: N > M layers + target
    attention whose unit (an MLP of ``attention_dims`` per candidate × history item) is what makes it
    the expensive model."""

    emb_dim: int = 16
    tower_dim: int = 32
    mlp_dims: tuple[int, ...] = (64, 32)
    attention: bool = False
    attention_dims: tuple[int, ...] = (32,)
    arch: Arch = "interaction"
    similarity: SimilarityKind = "cosine"  # two_tower: cosine with a learned temperature, or a scaled dot product
    numeric: NumericEmbedding = "bucket"
    heads: int = 4  # ranktower: gated views per tower
    # Independently started copies whose logits are averaged (``hap_runtime.nets.Ensemble``): on a
    # small log the spread between random starts is the largest error left; costs members × compute.
    members: int = 1

    def __post_init__(self) -> None:
        if self.arch not in ("interaction", *sorted(DECOUPLED)) or self.similarity not in ("cosine", "dot"):
            raise ValueError(
                f"arch must be interaction, ranktower or two_tower and similarity cosine or dot, got {self}"
            )
        if self.heads < 1 or self.members < 1:
            raise ValueError(f"heads and members must be at least 1, got heads={self.heads}, members={self.members}")
        if self.numeric not in ("bucket", "cumulative", "linear"):
            raise ValueError(f"numeric must be bucket, cumulative or linear, got {self.numeric!r}")
        if self.arch in DECOUPLED and self.attention:
            raise ValueError(f"a {self.arch} model is decoupled: target attention reads the item, set attention: false")


@dataclass(frozen=True)
class RoutingConfig:
    """DAMR routing at serving time (light on all N, expressive on the light top-K, answer top-M)
    and the limits a request must keep. K and M may be overridden per request within the limits."""

    k: int = 200
    m: int = 50
    max_candidates: int = 10000
    max_k: int = 2000
    max_body_bytes: int = 8 * 2**20  # larger bodies are answered 413 before they are parsed
    max_requests_per_call: int = 16  # requests in one KServe v1/v2 call; together at most max_candidates
    shed_queue_depth: int = 64  # answer 503 overloaded while more requests wait in TorchServe's queue (0: never)
