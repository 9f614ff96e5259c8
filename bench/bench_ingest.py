"""``hap ingest``'s built negatives against a cascade's, on a synthetic MIND-like week.

The world: users with latent category (and subcategory) interests, fresh news every day whose
appeal decays with age, and a cascade that retrieves the top 400 live items by a noisy estimate of
the true utility and shows the top 10-50; clicks follow the true utility. Because the truth is
known, the cascade's own stage samples can be logged too, giving a reference for what ingestion's
retriever should look like.

Per variant and source it reports the rows, the mean ``item_age_hours`` and ``popularity``, the
"shortcut" AUC (a logistic model on ``[item_age_hours, popularity, item_ctr_7d]`` only, as bucket
one-hots plus log values, fit on 70% of requests and scored on the rest; positives = clicked
exposed items vs that source's negatives; lower on ``rank``/``prerank`` = the freshness/popularity
shortcut is smaller), the negatives' mean true utility and the "oracle" AUC (the world's true
utility as the score: how hard the negatives truly are, which should rise expose < rank <
prerank < global). The first day is left out (no earlier data for anyone's statistics). Variants:

- ``truth``: the cascade's own ``rank``/``prerank`` samples logged (generic schema), ingestion
  building ``global`` only: what a real cascade's negatives look like on ingestion's clock.
- ``built``: the MIND files (exposures only), every negative built by ``--impl`` (default: the
  working tree's ``samples/ingest.py``; pass an older copy of the file to compare).

Run: .venv/bin/python bench/bench_ingest.py [--requests 30000] [--impl PATH] [--variants truth built]
Timing only (the 150k-impression week): .venv/bin/python bench/bench_ingest.py --requests 150000 --variants built --no-auc
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hap.config import HapConfig
from hap.contract import read_partition
from hap_runtime.spec import DEFAULT_SPEC
from samples.ingest import stable_id

ROOT = Path(__file__).resolve().parents[1]

START = dt.datetime(2019, 11, 11, tzinfo=dt.UTC)  # a Monday, as MIND's week
H = 3600.0


@dataclasses.dataclass
class World:
    n_cats: int
    item_cat: np.ndarray  # (I,)
    item_sub: np.ndarray  # (I,) global subcategory index
    item_q: np.ndarray  # (I,) quality
    item_pub: np.ndarray  # (I,) publish time, seconds since START (negative: before the week)
    cat_aff: np.ndarray  # (U, C)
    sub_aff: np.ndarray  # (U, S)
    age_scale_h: float
    requests: list[dict]  # time order: user, t, history (oldest first), shown, clicks, rank, prerank

    def utility(self, u: np.ndarray, i: np.ndarray, t: np.ndarray) -> np.ndarray:
        age_h = np.maximum(t - self.item_pub[i], 0) / H
        return (
            self.cat_aff[u, self.item_cat[i]]
            + self.sub_aff[u, self.item_sub[i]]
            + self.item_q[i]
            - age_h / self.age_scale_h
        )


def make_world(n_requests: int, days: int = 7, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    n_users = max(500, n_requests // 3)
    per_day = max(150, n_requests // days // 8)
    n_cats, subs_per_cat = 15, 8
    cat_p = 1.0 / np.arange(1, n_cats + 1)
    cat_p /= cat_p.sum()
    n_pre = 5 * per_day  # news from before the week: what the first histories hold
    n_items = n_pre + days * per_day
    item_cat = rng.choice(n_cats, size=n_items, p=cat_p)
    item_sub = item_cat * subs_per_cat + rng.integers(0, subs_per_cat, n_items)
    item_q = rng.normal(0, 0.5, n_items)
    pub = np.concatenate([rng.uniform(-5 * 86400, 0, n_pre), np.repeat(np.arange(days), per_day) * 86400.0])
    pub[n_pre:] += rng.uniform(0, 86400, days * per_day)
    order = np.argsort(pub, kind="stable")
    item_cat, item_sub, item_q, pub = item_cat[order], item_sub[order], item_q[order], pub[order]

    theta = rng.dirichlet(np.full(n_cats, 0.3), n_users) * 0.8 + 0.2 * cat_p
    cat_aff = np.log(theta * n_cats)
    sub_aff = rng.normal(0, 0.6, (n_users, n_cats * subs_per_cat))
    activity = rng.lognormal(0, 1.0, n_users)
    activity /= activity.sum()

    pre = np.flatnonzero(pub < 0)
    hist: list[list[int]] = []
    for u in range(n_users):  # 5-40 pre-week items of the user's categories, oldest first
        k = int(rng.integers(5, 41))
        cats = rng.choice(n_cats, size=k, p=theta[u] / theta[u].sum())
        picks = []
        for c in cats:
            pool = pre[item_cat[pre] == c]
            if len(pool):
                picks.append(int(pool[rng.integers(0, len(pool))]))
        hist.append(sorted(set(picks), key=lambda i: pub[i]))

    diurnal = 0.4 + np.sin(np.linspace(0, np.pi, 24)) ** 2  # more traffic by day
    hour_p = np.tile(diurnal, days)
    hour_p /= hour_p.sum()
    req_hour = np.sort(rng.choice(days * 24, size=n_requests, p=hour_p))
    req_t = req_hour * H + rng.uniform(0, H, n_requests)
    req_t.sort()
    req_u = rng.choice(n_users, size=n_requests, p=activity)
    world = World(n_cats, item_cat, item_sub, item_q, pub, cat_aff, sub_aff, 18.0, [])
    retrieval, rank_cut, pre_cut = 400, 50, 200
    for h in range(days * 24):
        r0, r1 = np.searchsorted(req_hour, [h, h + 1])
        if r0 == r1:
            continue
        t_end = (h + 1) * H
        live = np.flatnonzero((pub < t_end) & (pub > t_end - 72 * H))  # the corpus: news of the last 3 days
        u, t = req_u[r0:r1], req_t[r0:r1]
        true = world.utility(u[:, None], live[None, :], t[:, None])
        est = true + rng.normal(0, 1.0, true.shape)  # the cascade's estimate
        est[pub[live][None, :] > t[:, None]] = -np.inf  # not yet published
        for b in range(r1 - r0):
            seen = set(hist[u[b]])
            e = est[b]
            top = np.argpartition(-e, retrieval)[:retrieval] if len(e) > retrieval else np.arange(len(e))
            top = top[np.argsort(-e[top], kind="stable")]
            top = top[np.isfinite(e[top])]
            if seen:
                top = top[~np.isin(live[top], list(seen))]
            items = live[top]
            shown = items[: int(rng.integers(10, 51))]
            p = 1 / (1 + np.exp(-1.6 * (true[b, top[: len(shown)]] - 3.2)))
            clicks = (rng.random(len(shown)) < p).astype(int)
            rank_pool, pre_pool = items[rank_cut:pre_cut], items[pre_cut:retrieval]
            rank_pos = np.sort(rng.choice(len(rank_pool), size=min(10, len(rank_pool)), replace=False))
            pre_pos = np.sort(rng.choice(len(pre_pool), size=min(10, len(pre_pool)), replace=False))
            world.requests.append(
                {
                    "user": int(u[b]),
                    "t": float(t[b]),
                    "history": list(hist[u[b]]),
                    "shown": [int(i) for i in shown],
                    "clicks": [int(c) for c in clicks],
                    "rank": [(int(rank_pool[k]), rank_cut + 1 + int(k)) for k in rank_pos],
                    "prerank": [(int(pre_pool[k]), pre_cut + 1 + int(k)) for k in pre_pos],
                }
            )
        for req in world.requests[r0:r1]:  # clicks join the history after the hour
            hist[req["user"]] += [i for i, c in zip(req["shown"], req["clicks"], strict=True) if c]
    return world


def _when(t: float) -> dt.datetime:
    return START + dt.timedelta(seconds=int(t))


def write_mind(world: World, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "news.tsv", "w") as f:
        for i in range(len(world.item_cat)):
            c, s = int(world.item_cat[i]), int(world.item_sub[i])
            f.write(f"N{i}\tcat{c}\tsub{s}\t{'t' * (20 + i % 60)}\tabstract\thttps://example.org/{i}\t[]\t[]\n")
    with open(root / "behaviors.tsv", "w") as f:
        for k, r in enumerate(world.requests):
            w = _when(r["t"])
            when = f"{w.month}/{w.day}/{w.year} {(w.hour % 12) or 12}:{w.minute:02d}:{w.second:02d} {'AM' if w.hour < 12 else 'PM'}"
            hist = " ".join(f"N{i}" for i in r["history"])
            shown = " ".join(f"N{i}-{c}" for i, c in zip(r["shown"], r["clicks"], strict=True))
            f.write(f"{k + 1}\tU{r['user']}\t{when}\t{hist}\t{shown}\n")
    return root / "behaviors.tsv"


def write_generic_truth(world: World, path: Path) -> Path:
    """The generic schema with the cascade's own rank/prerank samples logged."""
    cols: dict[str, list] = {
        k: [] for k in ("request_id", "user_id", "ts", "item_id", "click", "source", "position", "history", "category")
    }
    cols.update(retrieval_pos=[], prerank_pos=[], rank_pos=[])
    for k, r in enumerate(world.requests):
        rid, ts, hist = f"mind-{k + 1}", _when(r["t"]), [f"N{i}" for i in r["history"]]
        rows = [
            (i, c, "expose", p + 1, p + 1, p + 1, p + 1)
            for p, (i, c) in enumerate(zip(r["shown"], r["clicks"], strict=True))
        ]
        rows += [(i, 0, "rank", None, p, p, p) for i, p in r["rank"]]
        rows += [(i, 0, "prerank", None, p, p, None) for i, p in r["prerank"]]
        for i, c, src, pos, rp, pp, kp in rows:
            for key, v in (
                ("request_id", rid),
                ("user_id", f"U{r['user']}"),
                ("ts", ts),
                ("item_id", f"N{i}"),
                ("click", c),
                ("source", src),
                ("position", pos),
                ("history", hist),
                ("category", f"cat{int(world.item_cat[i])}"),
                ("retrieval_pos", rp),
                ("prerank_pos", pp),
                ("rank_pos", kp),
            ):
                cols[key].append(v)
    cols["ts"] = pa.array(cols["ts"], pa.timestamp("s", tz="UTC"))
    pq.write_table(pa.table(cols), path)
    return path


# ------------------------------------------------------------------------------------------ measuring


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    o = np.argsort(s, kind="stable")
    ss = s[o]
    ranks = np.empty(len(s))
    start = np.concatenate([[True], ss[1:] != ss[:-1]])
    grp = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    last = np.append(first[1:], len(s)) - 1
    ranks[o] = ((first + last) / 2 + 1)[grp]
    n1 = y.sum()
    n0 = len(y) - n1
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else float("nan")


def _design(df) -> np.ndarray:
    parts = [np.ones((len(df), 1))]
    for name in ("item_age_hours", "popularity", "item_ctr_7d"):
        x = df[name].to_numpy(np.float64)
        b = np.searchsorted(np.asarray(DEFAULT_SPEC[name].boundaries, np.float64), x, side="right")
        parts.append(np.eye(len(DEFAULT_SPEC[name].boundaries) + 1)[b][:, 1:])
        parts.append((np.log1p(x) if name != "item_ctr_7d" else x * 10)[:, None])
    return np.hstack(parts)


def _logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 25):
    """Newton's method on standardized columns; returns a scorer."""
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1
    sd[0], mu[0] = 1, 0
    z = (x - mu) / sd
    w = np.zeros(z.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(z @ w, -30, 30)))
        g = z.T @ (p - y) + l2 * len(y) * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + l2 * len(y) * np.eye(len(w))
        step = np.linalg.solve(hess, g)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return lambda x_new: ((x_new - mu) / sd) @ w


def measure(world: World, out: Path, days: list[str], label: str, max_rows: int = 200_000) -> list[str]:
    import pandas as pd

    item_of = {stable_id(f"N{i}"): i for i in range(len(world.item_cat))}
    req_u = {f"mind-{k + 1}": r["user"] for k, r in enumerate(world.requests)}
    req_t = {f"mind-{k + 1}": r["t"] for k, r in enumerate(world.requests)}
    frames = []
    for ds in days[1:]:  # the first day has no earlier data for anyone's statistics
        c = read_partition(out, "candidates", ds).to_pandas()
        frames.append(c[["request_id", "source", "item_id", "click", "item_age_hours", "popularity", "item_ctr_7d"]])
    c = pd.concat(frames, ignore_index=True)
    c["u"] = c.request_id.map(req_u).to_numpy()
    c["t"] = c.request_id.map(req_t).to_numpy()
    c["i"] = c.item_id.map(item_of).to_numpy()
    c["true"] = world.utility(c.u.to_numpy(), c.i.to_numpy(), c.t.to_numpy())
    c["test"] = (c.request_id.str[5:].astype(int) % 10 < 3).to_numpy()  # 30% of requests held out
    pos = c[(c.source == "expose") & (c.click == 1)]
    lines = []
    rng = np.random.default_rng(0)
    for src in ("expose", "rank", "prerank", "global"):
        neg = c[(c.source == src) & (c.click == 0)]
        if len(neg) == 0:
            continue
        d = pd.concat([pos.assign(y=1), neg.assign(y=0)], ignore_index=True)
        if len(d) > max_rows:
            d = d.iloc[np.sort(rng.choice(len(d), max_rows, replace=False))]
        x, y = _design(d), d.y.to_numpy(np.float64)
        tr, te = ~d.test.to_numpy(), d.test.to_numpy()
        shortcut = _auc(y[te], _logistic(x[tr], y[tr])(x[te]))
        oracle = _auc(y, d.true.to_numpy())
        lines.append(
            f"| {label} | {src} | {len(neg):,} | {neg.item_age_hours.mean():.1f} | {neg.popularity.mean():.0f} "
            f"| {neg.item_ctr_7d.mean():.3f} | {shortcut:.3f} | {neg.true.mean():.2f} | {oracle:.3f} |"
        )
    lines.insert(
        0,
        f"| {label} | clicked | {len(pos):,} | {pos.item_age_hours.mean():.1f} | {pos.popularity.mean():.0f} "
        f"| {pos.item_ctr_7d.mean():.3f} | | {pos.true.mean():.2f} | |",
    )
    return lines


def _load_ingest(impl: str | None):
    if not impl:
        from samples import ingest as mod

        return mod
    spec = importlib.util.spec_from_file_location("ingest_impl", impl)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ingest_impl"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=30000)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--impl", default=None, help="an ingest.py to measure instead of samples/ingest.py")
    p.add_argument("--variants", nargs="+", default=["truth", "built"], choices=["truth", "built"])
    p.add_argument("--no-auc", action="store_true", help="time ingestion only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    mod = _load_ingest(args.impl)
    cfg = HapConfig.load(ROOT / "configs" / "real_logs.yaml")
    t0 = time.perf_counter()
    world = make_world(args.requests, args.days, args.seed)
    n_rows = sum(len(r["shown"]) for r in world.requests)
    print(
        f"world: {len(world.requests):,} requests, {n_rows:,} impressions, {len(world.item_cat):,} items, "
        f"CTR {sum(sum(r['clicks']) for r in world.requests) / n_rows:.3f} ({time.perf_counter() - t0:.0f}s to build)"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; ingest: {mod.__file__}")
    table = [
        "| variant | source | rows | mean item_age_hours | mean popularity | mean item_ctr_7d | shortcut AUC | mean true utility | oracle AUC |"
    ]
    table.append("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for variant in args.variants:
            if variant == "truth":
                src, fmt = write_generic_truth(world, tmp / "truth.parquet"), "generic"
            else:
                src, fmt = write_mind(world, tmp / "mind"), "mind"
            t = time.perf_counter()
            days = mod.ingest(src, fmt, tmp / variant, cfg)
            print(f"{variant}: ingest {len(days)} days in {time.perf_counter() - t:.1f}s")
            if not args.no_auc:
                table += measure(world, tmp / variant, days, variant)
    if not args.no_auc:
        print("\n".join(table))


if __name__ == "__main__":
    main()
