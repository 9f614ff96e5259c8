"""The light and expressive pre-ranking models, composed of small named parts.

No training code here (the losses live in ``models``): the serving worker imports this module from
the archive and loads weights with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from hap_runtime.config import DECOUPLED, ModelConfig
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
        # linear: a numeric feature's row i also gets position(i) * its direction; position runs from
        # -1 (first bucket) to +1 (last), 0 for row 0 (missing)
        linear = [f for f in spec.features if f.kind == "bucket" and numeric == "linear"]
        self.directions = nn.ParameterDict({f.name: nn.Parameter(torch.zeros(dim)) for f in linear})
        for f in linear:
            self.register_buffer(f"position_{f.name}", _positions(f.table_size), persistent=False)
        self._fused: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def weight(self, name: str) -> torch.Tensor:
        """Feature ``name``'s (rows, D) vectors: its table, or for a cumulative feature row 0
        (missing) as it is and row i ≥ 1 the sum of rows 1..i."""
        w = self.tables[name].weight
        if name in self.directions:
            return w + getattr(self, f"position_{name}").unsqueeze(1) * self.directions[name]  # (rows, D)
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


def _positions(rows: int) -> torch.Tensor:
    """(rows,) a bucket table's row positions: 0 for row 0 (missing), then -1 … +1 evenly."""
    buckets = rows - 1
    return torch.cat([torch.zeros(1), torch.linspace(-1.0, 1.0, buckets) if buckets > 1 else torch.zeros(buckets)])


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

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(…, T) vectors as the similarity reads them: unit length for the cosine."""
        return nn.functional.normalize(x, dim=-1) if self.kind == "cosine" else x

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        # user (C, T), item (C, T)
        return self.log_scale.exp() * (self.prepare(user) * self.prepare(item)).sum(-1) + self.bias  # (C,)

    def one_user(self, user: torch.Tensor, prepared_items: torch.Tensor) -> torch.Tensor:
        """One user (T,) against N items already ``prepare``d (N, T) → (N,): one matrix-vector product."""
        return self.log_scale.exp() * (prepared_items @ self.prepare(user)) + self.bias


class MultiHeadGated(nn.Module):
    """RankTower's multi-head gated network on one tower's output: H views of it, each a linear value
    times a sigmoid gate of the same width, so each head keeps the parts of the tower it gates in."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.value, self.gate = nn.Linear(dim, heads * dim), nn.Linear(dim, heads * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (B, T) → (B, H, T)
        return (self.value(x) * torch.sigmoid(self.gate(x))).view(len(x), self.heads, self.dim)


# The slots of a side's prepared heads (``GatedCrossAttention.prepare``): (B, H, SLOTS, T)
HEAD, QUERY, KEY, VALUE, GATE = range(5)


class GatedCrossAttention(nn.Module):
    """One side's half of RankTower's gated cross-attention. Every parameter acts on that side alone:
    ``prepare`` turns its heads into heads, query, key, value and a sigmoid gate, so an item's
    prepared heads depend on no request and can be computed once per item. ``attend`` (no
    parameters) lets one side's heads read the other's: h + gate ⊙ softmax(q kᵀ/√T) v."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv, self.gate = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def prepare(self, heads: torch.Tensor) -> torch.Tensor:
        # heads (B, H, T) → (B, H, 5, T)
        q, k, v = self.qkv(heads).chunk(3, dim=-1)
        return torch.stack([heads, q, k, v, torch.sigmoid(self.gate(heads))], dim=-2)


def attend(reader: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """``reader``'s heads after reading ``read``'s, both prepared (C, H, 5, T) → (C, H, T)."""
    q, k, v = reader[:, :, QUERY], read[:, :, KEY], read[:, :, VALUE]  # (C, H, T)
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)  # (C, H, H)
    return reader[:, :, HEAD] + reader[:, :, GATE] * (weights @ v)  # (C, H, T)


class MaxSimilarity(nn.Module):
    """RankTower's maximum-similarity layer: for each user head the cosine of its best-matching item
    head, averaged over user heads; a learned scale and bias (two scalars) make it a logit."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(5.0)))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        # user (C, H, T), item (C, H, T)
        u, i = nn.functional.normalize(user, dim=-1), nn.functional.normalize(item, dim=-1)
        best = (u @ i.transpose(1, 2)).amax(dim=-1)  # (C, H): each user head's best item head
        return self.log_scale.exp() * best.mean(-1) + self.bias  # (C,)


class RankTower(nn.Module):
    """RankTower's meeting of two decoupled towers: multi-head gated views per side, prepared for the
    cross-attention side by side, then per (user, item) pair only the parameter-free part:
    bi-directional attention between the two sides' heads and the maximum similarity."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.user_heads, self.item_heads = MultiHeadGated(dim, heads), MultiHeadGated(dim, heads)
        self.user_cross, self.item_cross = GatedCrossAttention(dim), GatedCrossAttention(dim)
        self.similarity = MaxSimilarity()

    def user(self, vec: torch.Tensor) -> torch.Tensor:
        return self.user_cross.prepare(self.user_heads(vec))  # (B, T) → (B, H, 5, T)

    def item(self, vec: torch.Tensor) -> torch.Tensor:
        return self.item_cross.prepare(self.item_heads(vec))  # (C, T) → (C, H, 5, T): request-free

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        # user, item: prepared (C, H, 5, T) → (C,)
        return self.similarity(attend(user, item), attend(item, user))

    def one_user(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``forward`` for one user's prepared heads (H, 5, T) against N items' (N, H, 5, T) → (N,),
        the user never copied N times: the products with the user's side are one matrix product each."""
        n, h, _, t = items.shape
        item_q, item_k = items[:, :, QUERY].reshape(n * h, t), items[:, :, KEY].reshape(n * h, t)  # (N·H, T)
        # the user's heads read each item's heads
        w = torch.softmax((item_k @ user[:, QUERY].T).view(n, h, h).transpose(1, 2) / math.sqrt(t), dim=-1)
        read = torch.bmm(w.contiguous(), items[:, :, VALUE].contiguous())  # contiguous: half the bmm's time
        user_read = user[:, HEAD] + user[:, GATE] * read  # (N, H, T)
        # each item's heads read the user's heads
        w = torch.softmax(item_q @ user[:, KEY].T / math.sqrt(t), dim=-1)  # (N·H, H)
        item_read = items[:, :, HEAD] + items[:, :, GATE] * (w @ user[:, VALUE]).view(n, h, t)  # (N, H, T)
        return self.similarity(user_read, item_read)


class UserState:
    """The user side of a request batch, computed once and reused for all its candidates."""

    def __init__(self, vec: torch.Tensor, seq_emb: torch.Tensor, seq_mask: torch.Tensor) -> None:
        self.vec, self.seq_emb, self.seq_mask = vec, seq_emb, seq_mask


class PreRanker(nn.Module):
    """Light model (attention off, M layers) or expressive model (attention on, N > M layers)."""

    def __init__(self, cfg: ModelConfig, spec: FeatureSpec) -> None:
        super().__init__()
        if cfg.members != 1:
            raise ValueError(f"a PreRanker is one network; {cfg.members} members are an Ensemble (build_model)")
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
        elif cfg.arch == "ranktower":
            self.ranktower = RankTower(t, cfg.heads)
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
        if self.cfg.arch in DECOUPLED:
            return self.meet(self.user_vectors(user)[req], self.item_vectors(item_emb))  # (C,)
        z = self.interaction(user.vec[req], self.item_tower(item_emb))  # (C, 3T)
        if self.attention is not None:
            target = self.embeddings.tables["item_id"](item_x[:, self._item_id_col])  # (C, D)
            z = torch.cat([z, self.attention(target, user.seq_emb, user.seq_mask, req)], dim=-1)
        return self.head(self.mlp(z)).squeeze(-1)  # (C,)

    def item_side(self, item_x: torch.Tensor) -> torch.Tensor:
        """A decoupled model's item vectors from encoded item features (C, Fi), request-free."""
        return self.item_vectors(self.embeddings.side(item_x, self.item_feats))

    def item_vectors(self, item_emb: torch.Tensor) -> torch.Tensor:
        """A decoupled model's item side, independent of any request: (C, Fi*D) → two_tower (C, T),
        ranktower (C, H, 5, T)."""
        if self.cfg.arch == "ranktower":
            return self.ranktower.item(self.item_tower(item_emb))
        return self.item_proj(self.item_tower(item_emb))

    def meet(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """A decoupled model's logits from each candidate's user vectors and item vectors (C, …) → (C,):
        the only per-pair computation, so stored item vectors (``hap_runtime.snapshot``) score as is."""
        if self.cfg.arch == "ranktower":
            return self.ranktower(users, items)
        return self.similarity(users, items)

    def stored_items(self, vectors: torch.Tensor) -> torch.Tensor:
        """A decoupled model's item vectors (S, …) in the form ``meet_one`` reads, computed once per
        snapshot: unit length for a cosine two-tower model."""
        return self.similarity.prepare(vectors) if self.cfg.arch == "two_tower" else vectors

    def meet_one(self, user: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
        """One request's user vectors (…) against N ``stored_items`` rows → (N,) logits: for a
        two-tower model one matrix-vector product."""
        if self.cfg.arch == "two_tower":
            return self.similarity.one_user(user, stored)
        return self.ranktower.one_user(user, stored)

    def user_vectors(self, user: UserState) -> torch.Tensor:
        """A decoupled model's user side, from user features and history alone: two_tower (B, T),
        ranktower (B, H, 5, T)."""
        if self.cfg.arch == "ranktower":
            return self.ranktower.user(user.vec)
        return self.user_proj(user.vec)

    @property
    def _item_id_col(self) -> int:
        return [f.name for f in self.item_feats].index("item_id")

    def fuse(self) -> None:
        self.embeddings.fuse()

    def forward(self, user_x: torch.Tensor, seq: torch.Tensor, item_x: torch.Tensor, req: torch.Tensor) -> torch.Tensor:
        return self.score(self.user_side(user_x, seq), item_x, req)


class Ensemble(nn.Module):
    """``cfg.members`` copies of one model, each trained alone from its own random start
    (``models.train.train_model``), whose logits are averaged.

    On a small log averaging the members removes the part of the error that comes from a random
    start (members × the compute per candidate; docs/benchmarks.md). A decoupled ensemble stays
    decoupled: its user and item vectors are the members' stacked on dim 1, so stored item vectors
    serve as one model's.
    """

    def __init__(self, cfg: ModelConfig, spec: FeatureSpec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.members = nn.ModuleList(PreRanker(replace(cfg, members=1), spec) for _ in range(cfg.members))
        self.user_feats, self.item_feats = spec.side("user"), spec.side("item")

    @property
    def attention(self) -> TargetAttention | None:
        return self.members[0].attention

    def user_side(self, user_x: torch.Tensor, seq: torch.Tensor) -> list[UserState]:
        return [m.user_side(user_x, seq) for m in self.members]

    def score(self, user: list[UserState], item_x: torch.Tensor, req: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.score(u, item_x, req) for m, u in zip(self.members, user, strict=True)]).mean(0)

    def item_side(self, item_x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.item_side(item_x) for m in self.members], dim=1)  # (C, K, …)

    def user_vectors(self, user: list[UserState]) -> torch.Tensor:
        return torch.stack([m.user_vectors(u) for m, u in zip(self.members, user, strict=True)], dim=1)  # (B, K, …)

    def meet(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.meet(users[:, i], items[:, i]) for i, m in enumerate(self.members)]).mean(0)  # (C,)

    def stored_items(self, vectors: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.stored_items(vectors[:, i]) for i, m in enumerate(self.members)], dim=1)  # (S, K, …)

    def meet_one(self, user: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.meet_one(user[i], stored[:, i]) for i, m in enumerate(self.members)]).mean(0)  # (N,)

    def fuse(self) -> None:
        for m in self.members:
            m.fuse()

    def forward(self, user_x: torch.Tensor, seq: torch.Tensor, item_x: torch.Tensor, req: torch.Tensor) -> torch.Tensor:
        return self.score(self.user_side(user_x, seq), item_x, req)


Model = PreRanker | Ensemble


def build_model(cfg: ModelConfig, spec: FeatureSpec) -> Model:
    """The model ``cfg`` describes: one network, or an ensemble of ``cfg.members`` of them."""
    return Ensemble(cfg, spec) if cfg.members > 1 else PreRanker(cfg, spec)


def save_model(model: Model, directory: str | Path) -> None:
    """Weights as a plain state dict plus a JSON of config and feature spec."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)
    meta = {"config": asdict(model.cfg), "spec": model.spec.to_dict()}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))


def load_model(directory: str | Path) -> Model:
    """Rebuild from JSON and load weights with ``weights_only=True`` (no pickled code runs), in eval
    mode with fused embedding lookups."""
    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    cfg = meta["config"]
    cfg["mlp_dims"] = tuple(cfg["mlp_dims"])
    if "attention_dims" in cfg:
        cfg["attention_dims"] = tuple(cfg["attention_dims"])
    model = build_model(ModelConfig(**cfg), FeatureSpec.from_dict(meta["spec"]))
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True, map_location="cpu"))
    model.eval()
    model.fuse()
    return model
