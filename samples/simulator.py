"""Cascade simulator: writes logged samples in exactly the data contract.

No public dataset carries per-stage logs, so we simulate the cascade that produces them:
users and items with latent preferences, a retrieval stage, a noisy pre-ranking model, a better
ranking model, exposure and feedback. Sample difficulty is *not* painted on: `rank` negatives are
hard because a good ranker placed them, `global` ones easy because nobody chose them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from hap import SOURCES
from hap.config import Composition, SimConfig
from hap.contract import EVAL_TABLE, candidates_schema, holdout_mask, requests_schema, write_partition
from hap.progress import progress
from hap_runtime.spec import DEFAULT_SPEC, FeatureSpec

_EXPOSE, _RANK, _PRERANK, _GLOBAL = range(4)


@dataclass
class DayLog:
    """One simulated day. ``utility`` (true utility per candidate row) is not part of the contract,
    only what tests use to check the difficulty ordering. ``evaluation`` is written beside the
    contract (table ``eval_candidates``): the truth a logged dataset never has, for evaluating the
    two-stage system at serving ratios (N retrieved candidates, K routed, M answered)."""

    ds: str
    requests: pa.Table
    candidates: pa.Table
    utility: np.ndarray
    evaluation: pa.Table  # held-out requests × every retrieved candidate, with the true click probability


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class CascadeSimulator:
    """A fixed world (seeded) that produces one day of logs at a time, deterministically."""

    def __init__(
        self, cfg: SimConfig | None = None, spec: FeatureSpec = DEFAULT_SPEC, composition: Composition | None = None
    ) -> None:
        """``composition`` is the contract's (``HapConfig.composition``): the simulator writes its
        upper bounds — ``rank[1]`` and ``prerank[1]`` negatives, ``global_per_positive[1]`` per click."""
        cfg, comp = cfg or SimConfig(), composition or Composition()
        self.cfg, self.spec, self.composition = cfg, spec, comp
        if cfg.retrieval_size < comp.prerank_cutoff + comp.prerank[1]:
            raise ValueError("retrieval_size must exceed composition.prerank_cutoff + composition.prerank max")
        if comp.prerank_cutoff < comp.rank_cutoff + comp.rank[1]:
            raise ValueError("composition.prerank_cutoff must exceed rank_cutoff + the rank max")
        if cfg.expose_max > comp.rank_cutoff:
            raise ValueError("expose_max must not exceed composition.rank_cutoff")
        if not comp.expose[0] <= cfg.expose_min <= cfg.expose_max <= comp.expose[1]:
            raise ValueError(f"expose_min..expose_max must lie within composition.expose {list(comp.expose)}")
        rng = np.random.default_rng(cfg.seed)
        n_u, n_i, d, n_c = cfg.n_users, cfg.n_items, cfg.latent_dim, cfg.n_categories

        centers = rng.normal(size=(n_c, d)).astype(np.float32)
        self.item_cat = rng.integers(0, n_c, n_i)
        self.item_vec = (0.8 * centers[self.item_cat] + rng.normal(0, 0.6, (n_i, d))).astype(np.float32)
        self.item_quality = rng.normal(0, 0.5, n_i).astype(np.float32)

        self.age = rng.integers(0, 8, n_u)
        self.gender = rng.integers(0, 3, n_u)
        age_dir = rng.normal(0, 0.5, (8, d))
        gender_dir = rng.normal(0, 0.5, (3, d))
        likes = rng.integers(0, n_c, (n_u, 2))
        self.user_vec = (
            0.5 * (centers[likes[:, 0]] + centers[likes[:, 1]])
            + age_dir[self.age]
            + gender_dir[self.gender]
            + rng.normal(0, 0.5, (n_u, d))
        ).astype(np.float32)
        # Normalise so that the true utility has unit spread whatever the latent size.
        probe = self.user_vec[rng.integers(0, n_u, 256)] @ self.item_vec[rng.integers(0, n_i, 512)].T
        self.scale = np.float32(1.0 / probe.std())

        self.activity = rng.lognormal(0, 1, n_u)
        self.activity /= self.activity.sum()
        self.user_cols = {
            "user_id": np.arange(1, n_u + 1, dtype=np.int64),
            "age_bucket": self.age,
            "gender": self.gender,
            "city": rng.integers(0, 100, n_u),
            "device": rng.choice(np.array(["ios", "android", "web"], dtype=object), n_u, p=[0.45, 0.45, 0.1]),
            "activity_days": rng.integers(0, 31, n_u).astype(np.float32),
            "follow_count": np.floor(rng.lognormal(3, 1.5, n_u)).astype(np.float32),
        }
        ctypes = np.array(["article", "video", "image", "short_video"], dtype=object)
        self.item_cols = {
            "item_id": np.arange(1, n_i + 1, dtype=np.int64),
            "author_id": rng.integers(1, max(2, n_i // 5), n_i).astype(np.int64),
            "content_type": ctypes[(self.item_cat + (rng.random(n_i) < 0.1)) % 4],
            "category": self.item_cat,
            "item_age_hours": rng.exponential(72, n_i).astype(np.float32),
            "item_ctr_7d": np.clip(_sigmoid(self.item_quality - 3 + rng.normal(0, 0.3, n_i)), 0, 1).astype(np.float32),
            "duration_s": np.floor(rng.lognormal(4, 1, n_i)).astype(np.float32),
            "popularity": np.floor(np.exp(2 * self.item_quality + 6 + rng.normal(0, 1, n_i))).astype(np.float32),
            "title_len": rng.integers(5, 100, n_i).astype(np.float32),
        }
        self.user_hist = self._histories(rng)
        self.item_unit = self.item_vec / np.linalg.norm(self.item_vec, axis=1, keepdims=True)
        self.session_mu = np.float32(0.0)
        self.click_threshold = np.float32(cfg.click_threshold)
        if cfg.session_beta:
            self._calibrate(np.random.default_rng([cfg.seed, 1]))

    def utility(self, users: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """True utility of items for users: (B, I) for all items, or (B,) for paired items."""
        if items is None:
            return (self.user_vec[users] @ self.item_vec.T) * self.scale + self.item_quality
        dot = np.einsum("bd,bd->b", self.user_vec[users], self.item_vec[items])
        return dot * self.scale + self.item_quality[items]

    def session_gain(self, recent: np.ndarray) -> np.ndarray:
        """G (B, I): every item's gain from being close to one of the request's recent items (B, W).

        A max over the recent items, sharpened by κ, so a candidate near one specific item gains,
        which no average over the history expresses. Centred by μ so the pool's mean gain is ~0.
        """
        cfg = self.cfg
        closeness = np.exp(cfg.session_kappa * (self._best_cosine(recent) - 1.0))
        return (cfg.session_beta * (closeness - self.session_mu)).astype(np.float32)

    def _best_cosine(self, recent: np.ndarray) -> np.ndarray:
        """(B, I): every item's highest cosine to one of the request's recent items (B, W)."""
        best = self.item_unit[recent[:, 0]] @ self.item_unit.T
        for w in range(1, recent.shape[1]):
            np.maximum(best, self.item_unit[recent[:, w]] @ self.item_unit.T, out=best)
        return best

    def _recent(self, users: np.ndarray, hist: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Place a session interest (a uniformly drawn item) first in each request's history (B, L)."""
        hist[:, 0] = rng.integers(0, self.cfg.n_items, len(users))
        return hist[:, : self.cfg.session_window]

    def _calibrate(self, rng: np.random.Generator) -> None:
        """Fix μ (G's pool mean) and move the click threshold so the exposed click rate is the
        factorized world's: β changes what users click, not how much."""
        cfg = self.cfg
        users = rng.integers(0, cfg.n_users, 512)
        recent = self._recent(users, self.user_hist[users].copy(), rng)
        self.session_mu = np.float32(np.exp(cfg.session_kappa * (self._best_cosine(recent) - 1.0)).mean())

        def exposed_utility(gain: np.ndarray | None) -> np.ndarray:
            out = self._cascade(users, np.random.default_rng([cfg.seed, 2]), gain)[0]
            return out["utility"][out["source"] == _EXPOSE]

        def click_rate(u: np.ndarray, threshold: float) -> float:
            return float(_sigmoid(cfg.click_scale * (u - threshold)).mean())

        target = click_rate(exposed_utility(None), cfg.click_threshold)
        u = exposed_utility(self.session_gain(recent))
        lo, hi = cfg.click_threshold - 10.0, cfg.click_threshold + 10.0
        for _ in range(60):  # the click rate falls as the threshold rises
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if click_rate(u, mid) > target else (lo, mid)
        self.click_threshold = np.float32(0.5 * (lo + hi))

    def _histories(self, rng: np.random.Generator) -> np.ndarray:
        """Each user's recent behaviour: items drawn (Gumbel top-L) in proportion to utility."""
        n_u, L = self.cfg.n_users, self.cfg.seq_max_len
        out = np.empty((n_u, L), dtype=np.int64)
        for start in range(0, n_u, 512):
            users = np.arange(start, min(n_u, start + 512))
            noisy = self.utility(users) + rng.gumbel(size=(len(users), self.cfg.n_items)).astype(np.float32)
            top = np.argpartition(-noisy, L, axis=1)[:, :L]
            order = np.argsort(-noisy[np.arange(len(users))[:, None], top], axis=1)
            out[users] = np.take_along_axis(top, order, axis=1)
        return out

    def simulate_day(self, ds: str, n_requests: int) -> DayLog:
        cfg = self.cfg
        day = dt.date.fromisoformat(ds)
        rng = np.random.default_rng([cfg.seed, day.toordinal()])
        users = rng.choice(cfg.n_users, n_requests, p=self.activity)
        start_us = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1e6)
        ts_us = np.sort(rng.integers(0, 86_400_000_000, n_requests)) + start_us
        seq_len = rng.integers(cfg.seq_min_len, cfg.seq_max_len + 1, n_requests)
        hist_idx = (np.arange(cfg.seq_max_len) + day.toordinal()) % cfg.seq_max_len
        hist = self.user_hist[users][:, hist_idx]  # (R, L) item indices, most recent first
        recent = None  # its own random stream: β = 0 draws exactly the factorized world's numbers
        if cfg.session_beta:
            recent = self._recent(users, hist, np.random.default_rng([cfg.seed, day.toordinal(), 1]))
        starts = range(0, n_requests, cfg.chunk_requests)
        chunks = [
            self._cascade(
                users[s : s + cfg.chunk_requests],
                np.random.default_rng([cfg.seed, day.toordinal(), s]),
                None if recent is None else self.session_gain(recent[s : s + cfg.chunk_requests]),
            )
            for s in starts
        ]
        cand = {k: np.concatenate([c[0][k] for c in chunks]) for k in chunks[0][0]}
        offsets = np.cumsum([0] + [len(users[s : s + cfg.chunk_requests]) for s in starts])
        cand["req"] = np.concatenate([c[0]["req"] + offsets[i] for i, c in enumerate(chunks)])

        request_ids = pa.array([f"{day:%Y%m%d}-{i:07d}" for i in range(n_requests)], pa.string())
        evaluation = self._evaluation_table(
            request_ids, np.concatenate([c[1] for c in chunks]), np.concatenate([c[2] for c in chunks])
        )
        hist = hist + 1  # item ids are index + 1
        hist_lists = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(seq_len)]), pa.int32()),
            pa.array(hist[np.arange(cfg.seq_max_len)[None, :] < seq_len[:, None]], pa.int64()),
        )
        hours = (ts_us // 3_600_000_000) % 24
        req_cols = {
            "request_id": request_ids,
            "ts": pa.array(ts_us, pa.timestamp("us", tz="UTC")),
            **{k: v[users] for k, v in self.user_cols.items()},
            "network": rng.choice(np.array(["wifi", "4g", "5g"], dtype=object), n_requests, p=[0.6, 0.3, 0.1]),
            "hour_of_day": hours,
            "day_of_week": np.full(n_requests, day.weekday()),
            "hist_item_ids": hist_lists,
        }
        req_schema = requests_schema(self.spec)
        requests = pa.table({f.name: req_cols[f.name] for f in req_schema}, schema=req_schema)

        items = cand["item"]
        src = np.asarray(SOURCES, dtype=object)[cand["source"]]
        cand_cols = {
            "request_id": request_ids.take(pa.array(cand["req"])),
            "source": src,
            **{
                k: pa.array(cand[k], pa.int32(), mask=cand[k] == 0)
                for k in ("retrieval_pos", "prerank_pos", "rank_pos")
            },
            "click": cand["click"].astype(np.int8),
            "like": cand["like"].astype(np.int8),
            "comment": cand["comment"].astype(np.int8),
            "dwell_ms": cand["dwell_ms"].astype(np.int32),
            **{k: v[items] for k, v in self.item_cols.items()},
        }
        cand_schema = candidates_schema(self.spec)
        candidates = pa.table({f.name: cand_cols[f.name] for f in cand_schema}, schema=cand_schema)
        return DayLog(ds, requests, candidates, cand["utility"], evaluation)

    def _evaluation_table(self, request_ids: pa.Array, retrieved: np.ndarray, utility: np.ndarray) -> pa.Table:
        """Every retrieved candidate (R × S) of the held-out share of requests, with p(click)."""
        held = np.flatnonzero(holdout_mask(np.asarray(request_ids.to_pylist(), dtype=str), self.cfg.eval_fraction))
        S = retrieved.shape[1]
        items = retrieved[held].ravel()
        p_click = _sigmoid(self.cfg.click_scale * (utility[held].ravel() - self.click_threshold))
        cols = {
            "request_id": request_ids.take(pa.array(np.repeat(held, S))),
            "retrieval_pos": np.tile(np.arange(1, S + 1, dtype=np.int32), len(held)),
            "p_click": p_click.astype(np.float32),
            **{k: v[items] for k, v in self.item_cols.items()},
        }
        return pa.table(cols)

    def _cascade(
        self, users: np.ndarray, rng: np.random.Generator, gain: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Run retrieval → pre-rank → rank → exposure → feedback for a chunk of requests.

        ``gain`` (B, I) is the sequence-interaction term G: retrieval (which follows recent items)
        and ranking see it, the factorized pre-ranker does not. Returns the logged rows, and every
        retrieved item (B, S) with its true utility (B, S) for the evaluation table.
        """
        cfg, comp = self.cfg, self.composition
        B, S, P = len(users), cfg.retrieval_size, comp.prerank_cutoff
        rows = np.arange(B)[:, None]
        factorized = self.utility(users)  # (B, I): F
        util = factorized if gain is None else factorized + gain  # (B, I): U = F + G

        # retrieval: a weaker two-tower model, i.e. the dot product with a noisy user vector
        d = cfg.latent_dim
        noisy_user = self.user_vec[users] + cfg.retrieval_noise * rng.standard_normal((B, d), dtype=np.float32)
        retr_score = (noisy_user @ self.item_vec.T) * self.scale + self.item_quality  # (B, I)
        if gain is not None:
            retr_score += gain
        retrieved = np.argpartition(-retr_score, S, axis=1)[:, :S]  # (B, S) item indices
        kth = retr_score[rows, retrieved].min(axis=1, keepdims=True)  # (B, 1) retrieval cut-off
        retr_order = np.argsort(-retr_score[rows, retrieved], axis=1)
        retrieved = np.take_along_axis(retrieved, retr_order, axis=1)  # sorted: retrieval_pos = j + 1
        u_sel = util[rows, retrieved]  # (B, S)

        pos_retr = np.broadcast_to(np.arange(1, S + 1), (B, S))
        f_sel = factorized[rows, retrieved] if gain is not None else u_sel  # the pre-ranker sees F only
        pre_order = np.argsort(-(f_sel + cfg.prerank_noise * rng.standard_normal((B, S))), axis=1)
        pos_pre = np.empty((B, S), dtype=np.int64)
        pos_pre[rows, pre_order] = np.arange(1, S + 1)
        to_rank = pre_order[:, :P]  # (B, P) indices into S
        rank_order = np.argsort(-(u_sel[rows, to_rank] + cfg.rank_noise * rng.standard_normal((B, P))), axis=1)
        ranked = np.take_along_axis(to_rank, rank_order, axis=1)  # (B, P) in rank order
        pos_rank = np.zeros((B, S), dtype=np.int64)
        pos_rank[rows, ranked] = np.arange(1, P + 1)

        # exposure: the ranking stage's top n_exp (all of them logged)
        n_exp = rng.integers(cfg.expose_min, cfg.expose_max + 1, B)
        exp_idx = ranked[:, : cfg.expose_max]
        exp_mask = np.arange(cfg.expose_max)[None, :] < n_exp[:, None]
        p_click = _sigmoid(cfg.click_scale * (u_sel[rows, exp_idx] - self.click_threshold))
        click = (rng.random(p_click.shape) < p_click) & exp_mask
        n_pos = click.sum(axis=1)

        # unexposed negatives sampled from below the stage cut-offs
        n_rank, n_pre, per_pos = comp.rank[1], comp.prerank[1], comp.global_per_positive[1]
        rank_pick = np.argsort(rng.random((B, P - comp.rank_cutoff)), axis=1)[:, :n_rank]
        rank_idx = np.take_along_axis(ranked[:, comp.rank_cutoff :], rank_pick, axis=1)
        pre_pick = np.argsort(rng.random((B, S - P)), axis=1)[:, :n_pre]
        pre_idx = np.take_along_axis(pre_order[:, P:], pre_pick, axis=1)

        # global negatives: random pool items, not retrieved, no duplicates, `global_per_positive` per click
        g_max = int(np.ceil(per_pos * cfg.expose_max))
        draws = rng.integers(0, cfg.n_items, (B, 2 * g_max))
        clash = retr_score[rows, draws] >= kth  # would have been retrieved
        dup = np.triu(draws[:, :, None] == draws[:, None, :], k=1).any(axis=1)
        ok = ~clash & ~dup
        g_mask = ok & (np.cumsum(ok, axis=1) <= np.rint(per_pos * n_pos)[:, None])

        # assemble per request: expose | rank | prerank | global, then flatten with the mask
        sel_s = np.concatenate([exp_idx, rank_idx, pre_idx], axis=1)  # indices into S
        n_fixed = sel_s.shape[1]
        item = np.concatenate([retrieved[rows, sel_s], draws], axis=1)
        mask = np.concatenate([exp_mask, np.ones((B, n_fixed - cfg.expose_max), bool), g_mask], axis=1)
        source = np.concatenate(
            [
                np.full((B, cfg.expose_max), _EXPOSE),
                np.full((B, n_rank), _RANK),
                np.full((B, n_pre), _PRERANK),
                np.full((B, 2 * g_max), _GLOBAL),
            ],
            axis=1,
        )
        zeros_g = np.zeros((B, 2 * g_max), dtype=np.int64)
        positions = {
            "retrieval_pos": np.concatenate([pos_retr[rows, sel_s], zeros_g], axis=1),
            "prerank_pos": np.concatenate([pos_pre[rows, sel_s], zeros_g], axis=1),
            "rank_pos": np.concatenate([pos_rank[rows, sel_s], zeros_g], axis=1),
        }
        fixed_pad = np.zeros((B, n_fixed - cfg.expose_max + 2 * g_max), dtype=bool)
        click_all = np.concatenate([click, fixed_pad], axis=1)
        like = click_all & (rng.random(click_all.shape) < 0.3)
        comment = click_all & (rng.random(click_all.shape) < 0.05)
        dwell = np.where(click_all, rng.lognormal(9.5, 0.8, click_all.shape), 0)
        utility = np.concatenate([u_sel[rows, sel_s], util[rows, draws]], axis=1)

        out = {
            "req": np.broadcast_to(np.arange(B)[:, None], mask.shape),
            "item": item,
            "source": source,
            "click": click_all,
            "like": like,
            "comment": comment,
            "dwell_ms": dwell,
            "utility": utility,
            **positions,
        }
        return {k: np.asarray(v)[mask] for k, v in out.items()}, retrieved, u_sel

    def write_days(self, root: str | Path, start: str, days: int, n_requests: int) -> list[str]:
        """Simulate ``days`` consecutive days from ``start`` and write them (idempotent per day)."""
        written = []
        with progress(total=days, desc="simulate", unit="day") as bar:
            for i in range(days):
                ds = (dt.date.fromisoformat(start) + dt.timedelta(days=i)).isoformat()
                log = self.simulate_day(ds, n_requests)
                write_partition(root, "requests", ds, log.requests)
                write_partition(root, "candidates", ds, log.candidates)
                write_partition(root, EVAL_TABLE, ds, log.evaluation)
                written.append(ds)
                bar.update(1, ds=ds)
        return written
