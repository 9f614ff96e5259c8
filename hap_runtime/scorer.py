"""The two-stage scorer: light model on all N candidates, expressive on the light top-K, top M out.

Independent of the model server: the TorchServe handler is a thin shell over this class, so the
server can change without touching parsing, routing or scoring. It loads what the archive carries
(both models, ``routing.json``, ``version.json``).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hap_runtime.codec import ParsedRequest, RequestCodec
from hap_runtime.config import ROUTING_FILE, VERSION_FILE, RoutingConfig
from hap_runtime.nets import load_model
from hap_runtime.snapshot import SNAPSHOT_FILE, ItemSnapshot


@dataclass(frozen=True)
class StageTimes:
    """Wall time of one batch's light pass (all candidates) and expressive pass (routed top-K)."""

    light_ms: float
    expressive_ms: float


class TwoStageScorer:
    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self.light = load_model(model_dir / "light")
        self.expressive = load_model(model_dir / "expressive")
        self.spec = self.light.spec  # the fitted transforms training used (models.transforms)
        if self.expressive.spec != self.spec:  # one encoding of a request feeds both stages
            raise ValueError(f"{model_dir}: the light and expressive models carry different feature specs")
        self.routing = RoutingConfig(**json.loads((model_dir / ROUTING_FILE).read_text()))
        version_file = model_dir / VERSION_FILE
        self.version = json.loads(version_file.read_text())["version"] if version_file.exists() else "unversioned"
        items = model_dir / "light" / SNAPSHOT_FILE  # candidates by id (and a decoupled model's item vectors)
        self.snapshot = ItemSnapshot.load(items) if items.exists() else None
        if self.snapshot is not None:
            self.snapshot.check(self.light)
        vectors = self.snapshot.vectors if self.snapshot is not None else None
        self.stored = self.light.stored_items(vectors) if vectors is not None else None  # (S, …)
        self.codec = RequestCodec(self.spec, self.routing, self.snapshot)

    def parse(self, body: Any) -> ParsedRequest:
        """Validate and encode one decoded request body (``RequestError`` names the field at fault)."""
        return self.codec.parse(body)

    @torch.inference_mode()
    def score_batch(self, reqs: list[ParsedRequest]) -> tuple[list[dict[str, Any]], StageTimes]:
        """Score several requests in one light pass and one expressive pass (cross-request batching).

        Candidates of all requests are concatenated; ``index`` maps each to its request, so the user
        side is still computed once per request. Routing (top-K) stays per request.
        """
        sizes = [r.item_x.shape[0] for r in reqs]
        index = torch.repeat_interleave(torch.arange(len(reqs)), torch.tensor(sizes))  # (ΣN,)
        user_x = torch.cat([r.user_x for r in reqs])  # (R, Fu)
        seq = torch.cat([r.seq for r in reqs])  # (R, L)
        item_x = torch.cat([r.item_x for r in reqs])  # (ΣN, Fi)

        t0 = time.perf_counter()
        light_all = self._light(reqs, user_x, seq, item_x, index)  # (ΣN,)
        t1 = time.perf_counter()
        offsets = [0, *itertools.accumulate(sizes)]
        light = [light_all[a:b] for a, b in itertools.pairwise(offsets)]  # R × (N_r,)
        orders = [torch.argsort(s, descending=True, stable=True) for s in light]  # R × (N_r,)
        routed = [o[: min(r.k, n)] for o, r, n in zip(orders, reqs, sizes, strict=True)]  # R × (K_r,)
        global_routed = torch.cat([rt + off for rt, off in zip(routed, offsets, strict=False)])  # (ΣK,)
        expr_all = self.expressive.score(
            self.expressive.user_side(user_x, seq), item_x[global_routed], index[global_routed]
        )  # (ΣK,)
        t2 = time.perf_counter()
        k_offsets = [0, *itertools.accumulate(len(rt) for rt in routed)]
        answers = [
            self._answer(req, light[i], orders[i], routed[i], expr_all[k_offsets[i] : k_offsets[i + 1]])
            for i, req in enumerate(reqs)
        ]
        return answers, StageTimes(light_ms=(t1 - t0) * 1e3, expressive_ms=(t2 - t1) * 1e3)

    def _light(
        self, reqs: list[ParsedRequest], user_x: torch.Tensor, seq: torch.Tensor, item_x: torch.Tensor,
        index: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """The light pass. A decoupled model reads the snapshot's stored item vectors for candidates
        sent by id (the pass is then the user side and one product per candidate); otherwise, and
        for candidates sent with features, the item side is computed from the features."""
        user = self.light.user_side(user_x, seq)
        if self.stored is None or not any(r.snapshot_rows is not None for r in reqs):
            return self.light.score(user, item_x, index)
        users = self.light.user_vectors(user)  # (R, …)
        parts = []
        for i, r in enumerate(reqs):
            if r.snapshot_rows is not None:
                parts.append(self.light.meet_one(users[i], self.stored[r.snapshot_rows]))  # (N_r,)
            else:
                item_vecs = self.light.item_side(r.item_x)
                parts.append(self.light.meet(users[i].expand(len(item_vecs), *users[i].shape), item_vecs))
        return torch.cat(parts)

    def _answer(self, req: ParsedRequest, light, order, routed, expr) -> dict[str, Any]:
        """Top-M of one request: the routed top-K re-ranked by the expressive model, then the rest."""
        k = len(routed)
        final = torch.cat([routed[torch.argsort(expr, descending=True, stable=True)], order[k:]])[: req.m]
        expr_by_pos = dict(zip(routed.tolist(), expr.tolist(), strict=True))
        items = []
        for rank, pos in enumerate(final.tolist(), start=1):
            stage = "expressive" if pos in expr_by_pos else "light"
            score = expr_by_pos[pos] if stage == "expressive" else float(light[pos])
            items.append({"item_id": req.item_ids[pos], "score": score, "rank": rank, "stage": stage})
        n = len(req.item_ids)
        return {
            "model_version": self.version, "n_candidates": n, "duplicates": req.duplicates, "k": k, "m": req.m,
            "items": items,
        }  # fmt: skip

    def __call__(self, body: Any) -> dict[str, Any]:
        return self.score_batch([self.parse(body)])[0][0]
