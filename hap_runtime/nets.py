"""The light and expressive pre-ranking models, composed of small named parts.

No training code here (the losses live in ``models``): the serving worker imports this module from
the archive and loads weights with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from hap_runtime.config import ModelConfig
from hap_runtime.spec import Feature, FeatureSpec

WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"


class Embeddings(nn.Module):
    """One table per feature; the behaviour sequence reuses its shared table (item ids).

    For inference, ``fuse()`` concatenates each side's tables into one so a side is a single lookup
    (the same rows, so the same numbers); training mode drops the fused copy.
    """

    def __init__(self, spec: FeatureSpec, dim: int, numeric: str = "bucket") -> None:
        super().__init__()
        self.spec = spec
        self.tables = nn.ModuleDict(
            {f.name: nn.Embedding(f.table_size, dim) for f in spec.features if f.kind != "sequence"}
        )
        # cumulative: the rows of a numeric feature's table are steps; bucket i's vector sums steps 1..i
        self.cumulative = frozenset(f.name for f in spec.features if f.kind == "bucket" and numeric == "cumulative")
        with torch.no_grad():
            for name in self.cumulative:  # steps small enough that the last bucket's sum is of unit scale
                self.tables[name].weight[2:] /= math.sqrt(max(1, self.tables[name].num_embeddings - 2))
        self._fused: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def weight(self, name: str) -> torch.Tensor:
        """Feature ``name``'s (rows, D) vectors: its table, or for a cumulative feature row 0
        (missing) as it is and row i ≥ 1 the sum of rows 1..i."""
        w = self.tables[name].weight
        if name not in self.cumulative:
            return w
        return torch.cat([w[:1], torch.cumsum(w[1:], dim=0)])

    def fuse(self) -> None:
        for side in ("user", "item"):
            names = tuple(f.name for f in self.spec.side(side))
            weights = [self.weight(n).detach() for n in names]
            offsets = torch.tensor([0, *torch.cumsum(torch.tensor([w.shape[0] for w in weights]), 0)[:-1].tolist()])
            self._fused[names] = (torch.cat(weights), offsets)

    def train(self, mode: bool = True) -> Embeddings:
        if mode:
            self._fused = {}
        return super().train(mode)

    def side(self, x: torch.Tensor, feats: tuple[Feature, ...]) -> torch.Tensor:
        """(N, F) indices → (N, F * D) concatenated embeddings."""
        fused = self._fused.get(tuple(f.name for f in feats)) if self._fused else None
        if fused is not None:
            weight, offsets = fused
            return nn.functional.embedding(x + offsets, weight).flatten(1)  # (N, F, D) → (N, F * D)
        return torch.cat([nn.functional.embedding(x[:, j], self.weight(f.name)) for j, f in enumerate(feats)], dim=-1)

    def sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) → (B, L, D); padding rows (index 0) are zeroed by the caller's mask."""
        return self.tables[self.spec.sequence.shares](seq)


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class UserTower(nn.Module):
    """User/context features + mean-pooled behaviour sequence → user vector."""

    def __init__(self, n_feats: int, emb_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = mlp([(n_feats + 1) * emb_dim, 2 * out_dim, out_dim])

    def forward(self, user_emb: torch.Tensor, seq_emb: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
        # user_emb (B, Fu*D), seq_emb (B, L, D), seq_mask (B, L)
        m = seq_mask.unsqueeze(-1).float()
        pooled = (seq_emb * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
        return self.net(torch.cat([user_emb, pooled], dim=-1))  # (B, T)


class ItemTower(nn.Module):
    def __init__(self, n_feats: int, emb_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = mlp([n_feats * emb_dim, 2 * out_dim, out_dim])

    def forward(self, item_emb: torch.Tensor) -> torch.Tensor:
        return self.net(item_emb)  # (C, T)


class TargetAttention(nn.Module):
    """DIN-style target attention: an MLP unit scores every (candidate, history item) pair from
    ``[q, k, q*k, q-k]`` (padding positions are skipped, not scored and masked). Returns the softmax-pooled history, its product with the candidate, and
    the best pair's score: a candidate's affinity to one specific recent item, which no average
    over the history (the light model's user tower) can express."""

    def __init__(self, emb_dim: int, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.unit = mlp([4 * emb_dim, *dims])
        self.score = nn.Linear(dims[-1], 1)

    def forward(
        self, target: torch.Tensor, seq_emb: torch.Tensor, seq_mask: torch.Tensor, req: torch.Tensor
    ) -> torch.Tensor:
        # target (C, D); seq_emb (B, L, D); seq_mask (B, L); req (C,)
        mask = seq_mask[req]  # (C, L)
        cand, pos = mask.nonzero(as_tuple=True)  # (P,) the real (candidate, history item) pairs only
        q = target[cand]  # (P, D)
        k = seq_emb[req[cand], pos]  # (P, D)
        pair = self.score(self.unit(torch.cat([q, k, q * k, q - k], dim=-1))).squeeze(-1)  # (P,)
        logits = torch.full(mask.shape, float("-inf"), dtype=pair.dtype, device=pair.device)
        logits = logits.masked_scatter(mask, pair)  # (C, L); padding stays -inf
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # empty sequence → zeros
        pooled = torch.einsum("cl,cld->cd", weights, seq_emb[req])  # (C, D)
        best = logits.amax(dim=-1, keepdim=True)  # (C, 1)
        best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
        return torch.cat([pooled, target * pooled, best], dim=-1)  # (C, 2D + 1)


class Interaction(nn.Module):
    """Element-wise product and concatenation of the user and item vectors."""

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return torch.cat([user, item, user * item], dim=-1)  # (C, 3T)


class Similarity(nn.Module):
    """A two-tower model's only meeting point of user and item: the cosine (or dot product) of the
    two vectors times a learned inverse temperature, plus a bias (a calibrated logit for BCE)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0 if kind == "cosine" else 1.0)))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        # user (C, T), item (C, T)
        if self.kind == "cosine":
            user, item = nn.functional.normalize(user, dim=-1), nn.functional.normalize(item, dim=-1)
        return self.log_scale.exp() * (user * item).sum(-1) + self.bias  # (C,)


class UserState:
    """The user side of a request batch, computed once and reused for all its candidates."""

    def __init__(self, vec: torch.Tensor, seq_emb: torch.Tensor, seq_mask: torch.Tensor) -> None:
        self.vec, self.seq_emb, self.seq_mask = vec, seq_emb, seq_mask


class PreRanker(nn.Module):
    """Light model (attention off, M layers) or expressive model (attention on, N > M layers)."""

    def __init__(self, cfg: ModelConfig, spec: FeatureSpec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.user_feats, self.item_feats = spec.side("user"), spec.side("item")
        d, t = cfg.emb_dim, cfg.tower_dim
        self.embeddings = Embeddings(spec, d, cfg.numeric)
        self.user_tower = UserTower(len(self.user_feats), d, t)
        self.item_tower = ItemTower(len(self.item_feats), d, t)
        self.attention = TargetAttention(d, cfg.attention_dims) if cfg.attention else None
        if cfg.arch == "two_tower":  # linear ends: the towers' ReLU outputs alone could never disagree
            self.user_proj, self.item_proj = nn.Linear(t, t), nn.Linear(t, t)
            self.similarity = Similarity(cfg.similarity)
        else:
            self.interaction = Interaction()
            in_dim = 3 * t + (2 * d + 1 if cfg.attention else 0)
            self.mlp = mlp([in_dim, *cfg.mlp_dims])
            self.head = nn.Linear(cfg.mlp_dims[-1], 1)

    def user_side(self, user_x: torch.Tensor, seq: torch.Tensor) -> UserState:
        seq_emb = self.embeddings.sequence(seq)  # (B, L, D)
        seq_mask = seq > 0  # (B, L)
        user_emb = self.embeddings.side(user_x, self.user_feats)  # (B, Fu*D)
        return UserState(self.user_tower(user_emb, seq_emb, seq_mask), seq_emb, seq_mask)

    def score(self, user: UserState, item_x: torch.Tensor, req: torch.Tensor) -> torch.Tensor:
        """Logits of candidates ``item_x`` (C, Fi) for their requests ``req`` (C,) → (C,)."""
        item_emb = self.embeddings.side(item_x, self.item_feats)  # (C, Fi*D)
        if self.cfg.arch == "two_tower":
            return self.similarity(self.user_proj(user.vec)[req], self.item_vectors(item_emb))  # (C,)
        z = self.interaction(user.vec[req], self.item_tower(item_emb))  # (C, 3T)
        if self.attention is not None:
            target = self.embeddings.tables["item_id"](item_x[:, self._item_id_col])  # (C, D)
            z = torch.cat([z, self.attention(target, user.seq_emb, user.seq_mask, req)], dim=-1)
        return self.head(self.mlp(z)).squeeze(-1)  # (C,)

    def item_vectors(self, item_emb: torch.Tensor) -> torch.Tensor:
        """A two-tower model's item side: (C, Fi*D) → (C, T), independent of any request."""
        return self.item_proj(self.item_tower(item_emb))

    @property
    def _item_id_col(self) -> int:
        return [f.name for f in self.item_feats].index("item_id")

    def forward(self, user_x: torch.Tensor, seq: torch.Tensor, item_x: torch.Tensor, req: torch.Tensor) -> torch.Tensor:
        return self.score(self.user_side(user_x, seq), item_x, req)


def save_model(model: PreRanker, directory: str | Path) -> None:
    """Weights as a plain state dict plus a JSON of config and feature spec."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)
    meta = {"config": asdict(model.cfg), "spec": model.spec.to_dict()}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))


def load_model(directory: str | Path) -> PreRanker:
    """Rebuild from JSON and load weights with ``weights_only=True`` (no pickled code runs), in eval
    mode with fused embedding lookups."""
    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    cfg = meta["config"]
    cfg["mlp_dims"] = tuple(cfg["mlp_dims"])
    if "attention_dims" in cfg:
        cfg["attention_dims"] = tuple(cfg["attention_dims"])
    model = PreRanker(ModelConfig(**cfg), FeatureSpec.from_dict(meta["spec"]))
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True, map_location="cpu"))
    model.eval()
    model.embeddings.fuse()
    return model
