"""The item snapshot a version carries, so a request may send its candidates by ``item_id`` alone.

Training writes it beside the light model (``light/items.pt``, tensors only, loaded with
``weights_only=True``): every item of the training window with its latest encoded features and, for
a decoupled light model (``two_tower``, ``ranktower``), its item-side vectors computed once, so the
light pass over items sent by id is the user side against stored vectors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hap_runtime.config import DECOUPLED
from hap_runtime.nets import PreRanker

SNAPSHOT_FILE = "items.pt"


class ItemSnapshot:
    """Items sorted by raw ``item_id`` (S,), their encoded features (S, Fi) and, for a decoupled
    light model, their item vectors (S, …); ``rows`` finds a request's ids in it."""

    def __init__(self, item_id: torch.Tensor, item_x: torch.Tensor, vectors: torch.Tensor | None) -> None:
        order = torch.argsort(item_id)
        self.item_id, self.item_x = item_id[order], item_x[order]
        self.vectors = vectors[order] if vectors is not None else None
        if len(self.item_id) > 1 and bool((self.item_id[1:] == self.item_id[:-1]).any()):
            raise ValueError("an item snapshot holds each item_id once")

    def __len__(self) -> int:
        return len(self.item_id)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) raw ids → (N,) rows of the snapshot, -1 where an id is not in it."""
        if len(self.item_id) == 0:
            return torch.full_like(ids, -1)
        at = torch.searchsorted(self.item_id, ids).clamp(max=len(self.item_id) - 1)
        return torch.where(self.item_id[at] == ids, at, -1)

    def check(self, light: PreRanker) -> None:
        """Refuse a snapshot that does not belong to ``light``: feature width, index ranges, and item
        vectors exactly where the model is decoupled, of the shape it computes."""
        feats = light.item_feats
        if self.item_x.dim() != 2 or self.item_x.shape[1] != len(feats):
            raise ValueError(
                f"item snapshot: features of shape {tuple(self.item_x.shape)}, the model reads {len(feats)}"
            )
        sizes = torch.tensor([f.table_size for f in feats])
        if len(self.item_x) and bool(((self.item_x < 0) | (self.item_x >= sizes)).any()):
            raise ValueError("item snapshot: encoded features outside the model's tables")
        if (self.vectors is not None) != (light.cfg.arch in DECOUPLED):
            raise ValueError(f"item snapshot: item vectors {'present' if self.vectors is not None else 'absent'} "
                             f"for a {light.cfg.arch} light model")  # fmt: skip
        if self.vectors is not None and len(self.item_x):
            with torch.no_grad():
                want = light.item_side(self.item_x[:1]).shape[1:]
            if self.vectors.shape[1:] != want or len(self.vectors) != len(self.item_x):
                raise ValueError(f"item snapshot: item vectors of shape {tuple(self.vectors.shape)}, the model "
                                 f"computes {(len(self.item_x), *want)}")  # fmt: skip

    def save(self, path: str | Path) -> None:
        tensors = {"item_id": self.item_id, "item_x": self.item_x}
        if self.vectors is not None:
            tensors["vectors"] = self.vectors
        torch.save(tensors, path)

    @classmethod
    def load(cls, path: str | Path) -> ItemSnapshot:
        tensors = torch.load(path, weights_only=True, map_location="cpu")
        return cls(tensors["item_id"], tensors["item_x"], tensors.get("vectors"))
