"""The one feature spec: read by the contract, the simulator, validation, training and serving.

Standard library only, so validation reads it without importing torch. Every feature encodes to a
small integer index into its embedding table (``hap_runtime.encode``); index 0 is reserved for
missing / out-of-vocabulary / padding so that unseen values degrade, never crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Side = Literal["user", "item"]
Kind = Literal["id", "categorical", "bucket", "sequence"]


@dataclass(frozen=True)
class Feature:
    """One column of the data contract and how it becomes an embedding index.

    - ``id``: int64 ids hashed into ``size`` buckets (unknown ids are hashed, not rejected).
    - ``categorical``: ints in ``[0, size)`` or strings in ``vocab``.
    - ``bucket``: a number bucketized by ``boundaries``.
    - ``sequence``: a list of ids sharing the table of feature ``shares``.
    """

    name: str
    side: Side
    kind: Kind
    size: int = 0
    vocab: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()
    shares: str = ""
    max_len: int = 0
    low: float | None = None  # declared value range (validation)
    high: float | None = None

    @property
    def table_size(self) -> int:
        if self.kind == "bucket":
            return len(self.boundaries) + 2
        if self.vocab:
            return len(self.vocab) + 1
        return self.size + 1

    @property
    def arrow_type(self) -> str:
        if self.kind == "sequence":
            return "list<int64>"
        if self.vocab:
            return "string"
        if self.kind == "bucket":
            return "float"
        return "int64"


@dataclass(frozen=True)
class FeatureSpec:
    features: tuple[Feature, ...]

    def side(self, side: Side) -> tuple[Feature, ...]:
        """Non-sequence features of one side, in spec order (the model's column order)."""
        return tuple(f for f in self.features if f.side == side and f.kind != "sequence")

    def columns(self, side: Side) -> tuple[Feature, ...]:
        """Every feature of one side, sequences included: the columns a request carries for it."""
        return tuple(f for f in self.features if f.side == side)

    @property
    def sequence(self) -> Feature:
        return next(f for f in self.features if f.kind == "sequence")

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"features": [asdict(f) for f in self.features]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        feats = []
        for f in data["features"]:
            f = dict(f)
            f["vocab"] = tuple(f.get("vocab", ()))
            f["boundaries"] = tuple(f.get("boundaries", ()))
            feats.append(Feature(**f))
        return cls(tuple(feats))


DEFAULT_SPEC = FeatureSpec(
    (
        # user / context side: stored once per request
        Feature("user_id", "user", "id", size=50_000, low=1),
        Feature("age_bucket", "user", "categorical", size=8, low=0, high=7),
        Feature("gender", "user", "categorical", size=3, low=0, high=2),
        Feature("city", "user", "categorical", size=100, low=0, high=99),
        Feature("device", "user", "categorical", vocab=("ios", "android", "web")),
        Feature("network", "user", "categorical", vocab=("wifi", "4g", "5g")),
        Feature("hour_of_day", "user", "categorical", size=24, low=0, high=23),
        Feature("day_of_week", "user", "categorical", size=7, low=0, high=6),
        Feature("activity_days", "user", "bucket", boundaries=(1, 3, 7, 14, 30), low=0, high=31),
        Feature("follow_count", "user", "bucket", boundaries=(1, 10, 50, 200, 1000), low=0, high=1e6),
        Feature("hist_item_ids", "user", "sequence", shares="item_id", max_len=50, low=1),
        # item side: one row per candidate
        Feature("item_id", "item", "id", size=100_000, low=1),
        Feature("author_id", "item", "id", size=20_000, low=1),
        Feature("content_type", "item", "categorical", vocab=("article", "video", "image", "short_video")),
        Feature("category", "item", "categorical", size=32, low=0, high=31),
        Feature("item_age_hours", "item", "bucket", boundaries=(1, 6, 24, 72, 168, 720), low=0, high=1e5),
        Feature("item_ctr_7d", "item", "bucket", boundaries=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32), low=0, high=1),
        Feature("duration_s", "item", "bucket", boundaries=(10, 30, 60, 180, 600), low=0, high=1e5),
        Feature("popularity", "item", "bucket", boundaries=(10, 100, 1e3, 1e4, 1e5), low=0, high=1e9),
        Feature("title_len", "item", "bucket", boundaries=(10, 20, 40, 80), low=0, high=500),
    )
)
