"""``hap ingest``: real logs (generic schema and MIND) become the data contract exactly, with
negatives and item statistics from impressions strictly before each request's chunk,
deterministically."""

import dataclasses
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hap import SOURCES
from hap.config import HapConfig
from hap.contract import candidates_schema, read_partition, requests_schema
from hap_runtime.spec import DEFAULT_SPEC
from samples.ingest import IngestError, ingest, stable_id

ROOT = Path(__file__).resolve().parents[1]
START = dt.datetime(2019, 11, 11, tzinfo=dt.UTC)
CATEGORIES = ("news", "sports", "finance", "lifestyle", "weather")


def _config() -> HapConfig:
    """configs/real_logs.yaml with stage cut-offs scaled to a world of 60 items."""
    cfg = HapConfig.load(ROOT / "configs" / "real_logs.yaml")
    comp = dataclasses.replace(cfg.composition, rank_cutoff=3, prerank_cutoff=14)
    return dataclasses.replace(cfg, composition=comp, ingest=dataclasses.replace(cfg.ingest, retrieval_size=30))


def _world(days: int = 4, per_day: int = 25, n_users: int = 30, n_items: int = 60, seed: int = 0) -> list[dict]:
    """Impressions of a small news site: each day shows a sliding window of items, so some items
    first appear on later days; a user's history is what they clicked before (oldest first)."""
    rng = np.random.default_rng(seed)
    hist: dict[int, list[int]] = {u: [] for u in range(n_users)}
    out = []
    for d in range(days):
        lo = d * n_items // (days + 2)
        hi = min(n_items, lo + 3 * n_items // (days + 2))
        for k, sec in enumerate(np.sort(rng.integers(0, 86_400, per_day))):
            u = int(rng.integers(0, n_users))
            items = [int(i) for i in rng.choice(np.arange(lo, hi), size=8, replace=False)]
            clicks = [int(c) for c in rng.random(8) < 0.25]
            clicks[k % 8] = 1
            out.append(
                {
                    "impression_id": len(out) + 1,
                    "user": u,
                    "ts": START + dt.timedelta(days=d, seconds=int(sec)),
                    "history": list(hist[u]),
                    "items": items,
                    "clicks": clicks,
                }
            )
            hist[u] += [i for i, c in zip(items, clicks, strict=True) if c]
    return out


def _write_mind(root: Path, world: list[dict], n_items: int = 60) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "news.tsv", "w") as f:
        for i in range(n_items):
            title = f"Title {i} " + "x" * (i % 30)
            f.write(f"N{i}\t{CATEGORIES[i % 5]}\tsub{i % 7}\t{title}\tabstract\thttps://example.org/{i}\t[]\t[]\n")
    with open(root / "behaviors.tsv", "w") as f:
        for imp in world:
            t = imp["ts"]
            when = f"{t.month}/{t.day}/{t.year} {(t.hour % 12) or 12}:{t.minute:02d}:{t.second:02d} {'AM' if t.hour < 12 else 'PM'}"
            history = " ".join(f"N{i}" for i in imp["history"])
            shown = " ".join(f"N{i}-{c}" for i, c in zip(imp["items"], imp["clicks"], strict=True))
            f.write(f"{imp['impression_id']}\tU{imp['user']}\t{when}\t{history}\t{shown}\n")
    return root / "behaviors.tsv"


def _generic_table(world: list[dict]) -> pa.Table:
    """The generic schema: one row per shown item, ids as ints and strings, a few feature columns."""
    rows: dict[str, list] = {k: [] for k in ("request_id", "user_id", "ts", "item_id", "click", "position")}
    rows.update(history=[], device=[], category=[], dwell_ms=[])
    for imp in world:
        for p, (i, c) in enumerate(zip(imp["items"], imp["clicks"], strict=True)):
            rows["request_id"].append(f"r{imp['impression_id']}")
            rows["user_id"].append(imp["user"])
            rows["ts"].append(imp["ts"].isoformat())
            rows["item_id"].append(f"N{i}")
            rows["click"].append(c)
            rows["position"].append(p + 1)
            rows["history"].append(" ".join(f"N{h}" for h in imp["history"]))
            rows["device"].append("android" if imp["user"] % 2 else None)
            rows["category"].append(CATEGORIES[i % 5])
            rows["dwell_ms"].append(1000 * c)
    return pa.table(rows)


def _days(root: Path, days: list[str]) -> dict[str, tuple[pa.Table, pa.Table]]:
    return {ds: (read_partition(root, "requests", ds), read_partition(root, "candidates", ds)) for ds in days}


@pytest.fixture(scope="module")
def mind(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mind")
    behaviors = _write_mind(tmp / "in", _world())
    days = ingest(behaviors, "mind", tmp / "out", _config())
    return tmp, behaviors, days, _days(tmp / "out", days)


def _check_contract(tables: dict[str, tuple[pa.Table, pa.Table]], cfg: HapConfig) -> None:
    comp = cfg.composition
    for ds, (req, cand) in tables.items():
        assert req.schema == requests_schema() and cand.schema == candidates_schema()
        r, c = req.to_pandas(), cand.to_pandas()
        assert r.request_id.is_unique and set(c.request_id) == set(r.request_id)
        assert (r.ts.dt.strftime("%Y-%m-%d") == ds).all()
        assert not c.duplicated(["request_id", "item_id"]).any()
        for f in DEFAULT_SPEC.features:  # every feature filled with a valid value
            col = (r if f.side == "user" else c)[f.name]
            assert col.notna().all(), f.name
            if f.kind == "sequence":
                assert col.map(len).max() <= f.max_len and all((np.asarray(h) >= 1).all() for h in col)
            elif f.vocab:
                assert col.isin(f.vocab).all(), f.name
            else:
                assert (col >= f.low).all() and (f.high is None or (col <= f.high).all()), f.name
        # labels on exposed rows only; positions as the source says
        assert (c.loc[c.source != "expose", ["click", "like", "comment", "dwell_ms"]] == 0).all().all()
        exp = c[c.source == "expose"]
        assert exp[["retrieval_pos", "prerank_pos", "rank_pos"]].notna().all().all()
        rank, pre, glob = c[c.source == "rank"], c[c.source == "prerank"], c[c.source == "global"]
        assert rank.rank_pos.between(comp.rank_cutoff + 1, comp.prerank_cutoff).all()
        assert (pre.prerank_pos > comp.prerank_cutoff).all() and pre.rank_pos.isna().all()
        assert glob[["retrieval_pos", "prerank_pos", "rank_pos"]].isna().all().all()
        # per-request counts within the composition's bounds
        n = c.groupby(["request_id", "source"]).size().unstack(fill_value=0).reindex(columns=SOURCES, fill_value=0)
        pos = exp.groupby("request_id").click.sum().reindex(n.index, fill_value=0)
        assert n.expose.between(*comp.expose).all()
        assert n["rank"].between(*comp.rank).all() and n.prerank.between(*comp.prerank).all()
        lo, hi = comp.global_per_positive
        assert (n["global"] >= np.floor(lo * pos)).all() and (n["global"] <= np.ceil(hi * pos)).all()


def test_mind_becomes_the_contract(mind):
    _, _, days, tables = mind
    assert days == ["2019-11-11", "2019-11-12", "2019-11-13", "2019-11-14"]
    _check_contract(tables, _config())
    counts = {ds: c.column("source").to_pandas().value_counts() for ds, (_, c) in tables.items()}
    first = tables[days[0]][0].column("request_id")[0].as_py()  # the log's first request: nothing earlier
    c = tables[days[0]][1].to_pandas()
    assert (c.loc[c.request_id == first, "source"] == "expose").all()
    assert counts[days[0]]["rank"] > 0 and counts[days[0]]["prerank"] > 0  # the first day's later requests
    for ds in days[1:]:  # the retriever fills the upper bounds once earlier days exist
        assert counts[ds]["rank"] == 25 * 10 and counts[ds]["prerank"] > 0
    for ds in days:
        assert counts[ds]["expose"] == 25 * 8 and counts[ds]["global"] > 0


def test_mind_mapping(mind):
    """Ids hash stably, history is most recent first, derived features come from ts and news.tsv."""
    _, _, days, tables = mind
    world = _world()
    req, cand = tables[days[-1]]
    first = next(imp for imp in world if imp["ts"].date().isoformat() == days[-1])
    row = req.slice(0, 1).to_pylist()[0]
    assert row["request_id"] == f"mind-{first['impression_id']}"
    assert row["user_id"] == stable_id(f"U{first['user']}")
    assert row["hist_item_ids"] == [stable_id(f"N{i}") for i in reversed(first["history"])][:50]
    assert row["hour_of_day"] == first["ts"].hour and row["day_of_week"] == first["ts"].weekday()
    assert row["device"] == "web" and row["age_bucket"] == 0  # documented defaults
    c = cand.to_pandas()
    exp = c[c.request_id == row["request_id"]].query("source == 'expose'")
    assert list(exp.item_id) == [stable_id(f"N{i}") for i in first["items"]]
    assert list(exp.click) == first["clicks"] and list(exp.rank_pos) == list(range(1, 9))
    n3 = c[c.item_id == stable_id("N3")].iloc[0]
    assert n3.category == stable_id(CATEGORIES[3]) % 32 and n3.title_len == len("Title 3 xxx")
    day1 = tables[days[0]][1].to_pandas()
    first_req = day1[day1.request_id == day1.request_id.iloc[0]]
    assert (first_req.popularity == 0).all() and (first_req.item_age_hours == 0).all()  # nothing earlier to count
    assert (day1.popularity > 0).any()  # the first day's later requests count its earlier ones
    assert (c.popularity > 0).any() and c.item_ctr_7d.between(0, 1).all()


def test_stable_ids():
    assert stable_id("N1") == stable_id("N1") != stable_id("N2")
    assert 1 <= stable_id("") <= 2**53 and all(float(stable_id(str(i))) == stable_id(str(i)) for i in range(100))


def _clock(world: list[dict]) -> dict[str, dict]:
    """Per request: what it may see, from the documented clock. The test worlds have far fewer than
    ``chunk_requests`` requests an hour, so a chunk is the requests of one UTC hour and a request sees
    the impressions of requests before the first request of its hour."""
    start = {}
    for imp in world:
        start.setdefault(imp["ts"].replace(minute=0, second=0, microsecond=0), imp["ts"])
    out = {}
    for imp in world:
        t = start[imp["ts"].replace(minute=0, second=0, microsecond=0)]
        earlier = [e for e in world if e["ts"] < t]
        shown = [(e["ts"], i) for e in earlier for i in e["items"]]
        first = {}
        for when, i in sorted(shown):
            first.setdefault(i, when)
        out[f"mind-{imp['impression_id']}"] = {
            "shown": {i for _, i in shown},
            "known": {i for _, i in shown} | {h for e in earlier for h in e["history"]},
            "popularity": {i: sum(1 for _, j in shown if j == i) for i in first},
            "age": {i: (imp["ts"] - w).total_seconds() / 3600 for i, w in first.items()},
        }
    return out


def test_no_leakage_from_later_impressions(tmp_path, mind):
    """Every built negative was shown (rank/prerank) or referenced (global) before the request's
    chunk; item statistics count exactly the impressions before it, for exposed items and negatives
    alike; and day 2 is bit for bit the same whether or not day 3 is in the input."""
    _, _, days, tables = mind
    world = _world()
    clock = _clock(world)
    ids = {stable_id(f"N{i}"): i for i in range(60)}
    first_day: dict[int, str] = {}
    for imp in world:
        for i in imp["items"]:
            first_day.setdefault(i, imp["ts"].date().isoformat())
    same_day = 0  # retrieved items first shown earlier on the request's own day
    for ds in days:
        c = tables[ds][1].to_pandas()
        for rid, g in c.groupby("request_id"):
            seen = clock[rid]
            items = g.item_id.map(ids)
            retrieved = g.source.isin(["rank", "prerank"])
            assert set(items[retrieved]) <= seen["shown"], rid
            assert set(items[g.source == "global"]) <= seen["known"], rid
            expected_pop = items.map(lambda i: seen["popularity"].get(i, 0))  # noqa: B023
            expected_age = items.map(lambda i: seen["age"].get(i, 0.0))  # noqa: B023
            assert (g.popularity.to_numpy() == expected_pop.to_numpy()).all(), rid
            assert np.allclose(g.item_age_hours, expected_age, atol=1e-3), rid
            same_day += sum(1 for i in items[retrieved] if first_day[i] == ds)
    assert same_day

    cut = [imp for imp in world if imp["ts"].date().isoformat() <= days[1]]
    behaviors = _write_mind(tmp_path / "cut", cut)
    assert ingest(behaviors, "mind", tmp_path / "out", _config()) == days[:2]
    req, cand = _days(tmp_path / "out", [days[1]])[days[1]]
    assert req.equals(tables[days[1]][0]) and cand.equals(tables[days[1]][1])


def _same_day_log(tmp_path: Path) -> tuple[Path, HapConfig]:
    """One day: X is first shown at 10:00; requests at 09:00 (before), 10:00:30 (same chunk) and 12:00
    (a later chunk). Every item of the tiny pool is sampled (rank_cutoff 0, prerank up to 30)."""
    t0 = START.replace(hour=9)
    reqs = [
        ("early", "u1", t0, ["A1", "A2", "A3"], [1, 0, 0]),
        ("first", "u2", t0 + dt.timedelta(hours=1), ["X", "B1", "B2"], [1, 0, 0]),
        ("same", "u3", t0 + dt.timedelta(hours=1, seconds=30), ["C1", "C2", "C3"], [1, 0, 0]),
        ("later", "u4", t0 + dt.timedelta(hours=3), ["D1", "D2", "D3"], [1, 0, 0]),
    ]
    rows = [
        {"request_id": r, "user_id": u, "ts": t.isoformat(), "item_id": i, "click": c, "category": "news"}
        for r, u, t, items, clicks in reqs
        for i, c in zip(items, clicks, strict=True)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "log.parquet")
    cfg = _config()
    comp = dataclasses.replace(cfg.composition, rank_cutoff=0, prerank_cutoff=5, prerank=(0, 30))
    return tmp_path / "log.parquet", dataclasses.replace(cfg, composition=comp)


def test_same_day_items_only_once_shown(tmp_path):
    """An item shown earlier the same day can be a negative; one shown only after the request (or in
    its own chunk) never is, under any source."""
    log, cfg = _same_day_log(tmp_path)
    days = ingest(log, "generic", tmp_path / "out", cfg)
    c = read_partition(tmp_path / "out", "candidates", days[0]).to_pandas()
    x = stable_id("X")
    neg = c[c.source != "expose"]
    assert x not in set(neg.loc[neg.request_id.isin(["early", "same"]), "item_id"])
    later = neg[neg.request_id == "later"]
    assert x in set(later.loc[later.source.isin(["rank", "prerank"]), "item_id"])
    row = later[later.item_id == x].iloc[0]  # its statistics on the later request's clock
    assert row.popularity == 1 and row.item_age_hours == pytest.approx(2.0)
    assert set(neg.loc[neg.request_id == "same", "item_id"]) <= {stable_id(i) for i in ("A1", "A2", "A3")}
    exp_x = c[(c.request_id == "first") & (c.item_id == x)].iloc[0]
    assert exp_x.popularity == 0 and exp_x.item_age_hours == 0  # exposed on its first showing: nothing earlier


def test_retriever_scores_content_covisitation_and_recent_popularity(tmp_path):
    """Request q (history: H, sports) at 10:00 ranks the same-day pool by the documented score:
    sports items first (content), then N3 (co-visited: clicked by a user with H in their history),
    then N1 (two impressions in the recent window), then the rest (one impression)."""
    t = START.replace(hour=6)
    at = {"h": 0, "s": 1, "p": 2, "c": 2.5, "q": 4}
    reqs = [  # request, user, history, shown (item, category, click)
        ("h", "u9", [], [("H", "sports", 1)]),
        ("s", "u8", [], [(f"S{i}", "sports", 0) for i in (1, 2, 3)] + [(f"N{i}", "news", 0) for i in (1, 2, 3)]),
        ("p", "u7", [], [("N1", "news", 0)]),
        ("c", "u6", ["H"], [("N3", "news", 1), ("C1", "weather", 0)]),
        ("q", "u5", ["H"], [("Q1", "finance", 0)]),
    ]
    rows = [
        {
            "request_id": r,
            "user_id": u,
            "ts": (t + dt.timedelta(hours=at[r])).isoformat(),
            "item_id": i,
            "category": cat,
            "click": c,
            "history": " ".join(h),
        }
        for r, u, h, shown in reqs
        for i, cat, c in shown
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "log.parquet")
    cfg = _config()
    comp = dataclasses.replace(cfg.composition, rank_cutoff=0, prerank_cutoff=5, prerank=(0, 30))
    days = ingest(tmp_path / "log.parquet", "generic", tmp_path / "out", dataclasses.replace(cfg, composition=comp))
    c = read_partition(tmp_path / "out", "candidates", days[0]).to_pandas()
    q = c[(c.request_id == "q") & c.source.isin(["rank", "prerank"])]
    pos = dict(zip(q.item_id, q.retrieval_pos, strict=True))
    ids = {name: stable_id(name) for name in ("S1", "S2", "S3", "N1", "N2", "N3", "C1", "H", "Q1")}
    assert set(pos) == {ids[n] for n in ("S1", "S2", "S3", "N1", "N2", "N3", "C1")}  # H: history, Q1: shown
    assert sorted(pos[ids[n]] for n in ("S1", "S2", "S3")) == [1, 2, 3]
    assert pos[ids["N3"]] == 4 and pos[ids["N1"]] == 5 and {pos[ids["N2"]], pos[ids["C1"]]} == {6, 7}


def test_deterministic_given_a_seed(tmp_path, mind):
    tmp, behaviors, days, tables = mind
    again = _days(tmp_path / "a", ingest(behaviors, "mind", tmp_path / "a", _config()))
    other = _days(tmp_path / "b", ingest(behaviors, "mind", tmp_path / "b", _config(), seed=1))
    ds = days[-1]
    path = "candidates/ds=" + ds + "/part-0.parquet"
    assert (tmp / "out" / path).read_bytes() == (tmp_path / "a" / path).read_bytes()
    assert again[ds][1].equals(tables[ds][1])
    built = {s: set() for s in ("seed0", "seed1")}
    for key, t in (("seed0", tables), ("seed1", other)):
        c = t[ds][1].to_pandas()
        built[key] = set(zip(c.request_id[c.source != "expose"], c.item_id[c.source != "expose"], strict=True))
        assert t[ds][0].equals(tables[ds][0])  # requests do not depend on the seed
    assert built["seed0"] != built["seed1"]
    # rerunning into the same root replaces the days (idempotent)
    assert ingest(behaviors, "mind", tmp / "out", _config()) == days
    assert _days(tmp / "out", [ds])[ds][1].equals(tables[ds][1])


def test_generic_parquet_and_csv(tmp_path):
    world = _world(days=3)
    table = _generic_table(world)
    table.to_pandas().to_csv(tmp_path / "log.csv", index=False)  # ts as ISO strings
    ts = pa.array([imp["ts"] for imp in world for _ in imp["items"]], pa.timestamp("ms", tz="UTC"))
    pq.write_table(table.set_column(table.schema.get_field_index("ts"), "ts", ts), tmp_path / "log.parquet")
    cfg = _config()
    days = ingest(tmp_path / "log.parquet", "generic", tmp_path / "p", cfg)
    assert days == ingest(tmp_path / "log.csv", "generic", tmp_path / "c", cfg)
    from_parquet, from_csv = _days(tmp_path / "p", days), _days(tmp_path / "c", days)
    _check_contract(from_parquet, cfg)
    for ds in days:
        assert from_parquet[ds][0].equals(from_csv[ds][0]) and from_parquet[ds][1].equals(from_csv[ds][1])
    req, cand = from_parquet[days[-1]]
    r, c = req.to_pandas(), cand.to_pandas()
    odd = r.user_id.isin([stable_id(str(u)) for u in range(1, 30, 2)])  # ints hash as their decimal string
    assert odd.any() and (r.device[odd] == "android").all() and (r.device[~odd] == "web").all()
    exp = c[c.source == "expose"]
    assert (exp.dwell_ms == 1000 * exp.click.astype(int)).all()
    assert set(c.category) <= {stable_id(n) % 32 for n in CATEGORIES}  # strings hashed into the range
    assert c.source.eq("rank").any() and c.source.eq("prerank").any()


def test_logged_sources_are_kept_and_only_missing_ones_built(tmp_path):
    world = _world(days=2)
    table = _generic_table(world).to_pandas()
    table["source"] = "expose"
    logged = table.drop_duplicates("request_id").assign(source="rank", click=0, dwell_ms=0, item_id="LOGGED")
    logged["rank_pos"] = 77
    both = pa.Table.from_pandas(pd.concat([table, logged], ignore_index=True), preserve_index=False)
    pq.write_table(both, tmp_path / "log.parquet")
    cfg = _config()
    days = ingest(tmp_path / "log.parquet", "generic", tmp_path / "out", cfg)
    c = read_partition(tmp_path / "out", "candidates", days[-1]).to_pandas()
    rank = c[c.source == "rank"]
    assert (rank.item_id == stable_id("LOGGED")).all() and (rank.rank_pos == 77).all()
    assert rank.request_id.is_unique and c.source.eq("prerank").any()  # prerank is still built


def test_generic_day_unchanged_by_later_days(tmp_path):
    world = _world(days=3)
    pq.write_table(_generic_table(world), tmp_path / "all.parquet")
    pq.write_table(_generic_table(world[:50]), tmp_path / "two.parquet")  # 25 requests a day
    days = ingest(tmp_path / "all.parquet", "generic", tmp_path / "all", _config())
    assert ingest(tmp_path / "two.parquet", "generic", tmp_path / "two", _config()) == days[:2]
    for ds in days[:2]:
        full, cut = _days(tmp_path / "all", [ds])[ds], _days(tmp_path / "two", [ds])[ds]
        assert full[0].equals(cut[0]) and full[1].equals(cut[1])


def test_expose_bounds_truncate_and_drop(tmp_path):
    """Longer requests keep their first exposed items by position (positives counted among them);
    a request with only logged negatives has no exposed item and is dropped."""
    world = _world(days=1, per_day=5)
    table = _generic_table(world).to_pandas()
    table["position"] = table.groupby("request_id").cumcount(ascending=False) + 1  # reversed display order
    table["source"] = "expose"
    table.loc[table.request_id == "r5", ["source", "click", "dwell_ms"]] = ["rank", 0, 0]
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp_path / "log.parquet")
    cfg = _config()
    cfg = dataclasses.replace(cfg, composition=dataclasses.replace(cfg.composition, expose=(1, 5)))
    days = ingest(tmp_path / "log.parquet", "generic", tmp_path / "out", cfg)
    req, cand = _days(tmp_path / "out", days)[days[0]]
    assert req.column("request_id").to_pylist() == ["r1", "r2", "r3", "r4"]
    c = cand.to_pandas()
    exp = c[(c.request_id == "r1") & (c.source == "expose")]
    assert list(exp.rank_pos) == [1, 2, 3, 4, 5]
    assert list(exp.item_id) == [stable_id(f"N{i}") for i in reversed(world[0]["items"])][:5]
    # `global` counts the kept positives (2 each), as far as the catalogue known before r4 allows
    r4 = c[c.request_id == "r4"]
    pos = r4[r4.source == "expose"].click.astype(int).sum()
    known = {i for imp in world[:3] for i in imp["items"] + imp["history"]} - set(
        world[3]["items"] + world[3]["history"]
    )
    assert (r4.source == "global").sum() == min(2 * pos, len(known)) > 0


def test_defaults_are_configurable(tmp_path):
    cfg = _config()
    behaviors = _write_mind(tmp_path / "in", _world(days=1, per_day=3))
    ingest(
        behaviors,
        "mind",
        tmp_path / "out",
        dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, defaults={"device": "ios", "city": 7})),
    )
    req = read_partition(tmp_path / "out", "requests", "2019-11-11").to_pandas()
    assert (req.device == "ios").all() and (req.city == 7).all()
    with pytest.raises(IngestError, match="not a valid value of feature 'city'"):
        bad = dataclasses.replace(cfg.ingest, defaults={"city": 500})
        ingest(behaviors, "mind", tmp_path / "out", dataclasses.replace(cfg, ingest=bad))


def test_long_history_keeps_the_most_recent(tmp_path):
    world = _world(days=1, per_day=3)
    world[0]["history"] = list(range(100, 160))  # 60 items, oldest first
    pq.write_table(_generic_table(world), tmp_path / "log.parquet")
    days = ingest(tmp_path / "log.parquet", "generic", tmp_path / "out", _config())
    req = read_partition(tmp_path / "out", "requests", days[0]).to_pylist()
    hist = next(r["hist_item_ids"] for r in req if r["request_id"] == "r1")
    assert hist == [stable_id(f"N{i}") for i in range(159, 109, -1)]


def _corrupt(table: pa.Table, name: str, i: int, value) -> pa.Table:
    col = table.column(name).to_pylist()
    col[i] = value
    return table.set_column(table.schema.get_field_index(name), name, pa.array(col))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.drop_columns(["click"]), "missing required column(s) click"),
        (lambda t: _corrupt(t, "ts", 5, "yesterday"), "column 'ts': cannot parse time 'yesterday' (row 6"),
        (lambda t: _corrupt(t, "click", 3, 2), "column 'click': labels must be 0 or 1, found 2 (row 4"),
        (lambda t: _corrupt(t, "item_id", 2, None), "column 'item_id': missing value (row 3"),
        (lambda t: _corrupt(t, "device", 1, "nokia"), "column 'device': 'nokia' is not one of"),
    ],
)
def test_bad_generic_input_is_one_line_and_writes_nothing(tmp_path, change, expected):
    pq.write_table(change(_generic_table(_world(days=2))), tmp_path / "log.parquet")
    with pytest.raises(IngestError) as err:
        ingest(tmp_path / "log.parquet", "generic", tmp_path / "out", _config())
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_bad_mind_input(tmp_path):
    behaviors = _write_mind(tmp_path / "in", _world(days=2))
    lines = [line.split("\t") for line in behaviors.read_text().splitlines()]

    def write(i: int, field: int, value: str) -> None:
        fields = [list(f) for f in lines]
        fields[i][field] = value
        behaviors.write_text("".join("\t".join(f) + "\n" for f in fields))

    write(4, 4, "N1 N2")  # MIND's test split: no labels
    with pytest.raises(IngestError, match=r"column 'impressions': labels must be 0 or 1 as in 'N123-1', found 'N1'"):
        ingest(behaviors, "mind", tmp_path / "out", _config())
    write(4, 2, "2019-11-11 09:00")
    with pytest.raises(IngestError, match=r"column 'time': cannot parse time '2019-11-11 09:00' \(row 5"):
        ingest(behaviors, "mind", tmp_path / "out", _config())
    assert not (tmp_path / "out").exists()


def test_real_logs_config_loads():
    cfg = HapConfig.load(ROOT / "configs" / "real_logs.yaml")
    assert cfg.composition.rank == (0, 10) and cfg.composition.prerank == (0, 10)
    assert cfg.composition.expose == (1, 300) and cfg.composition.global_per_positive == (0, 2)
    assert cfg.ingest.retrieval_size > cfg.composition.prerank_cutoff


def test_cli_ingest(tmp_path):
    behaviors = _write_mind(tmp_path / "in", _world(days=2))
    config = tmp_path / "hap.yaml"
    config.write_text((ROOT / "configs" / "real_logs.yaml").read_text())
    env = {**os.environ, "HAP_CONFIG": str(config), "HAP_HOME": str(tmp_path / "ws")}
    env.pop("HAP_DATA", None)
    cmd = [sys.executable, "-m", "workflow.cli", "ingest", "--format", "mind", "--input", str(behaviors), "--seed", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2019-11-12" in done.stdout and "expose" in done.stdout, done.stdout
    assert (tmp_path / "ws" / "data" / "candidates" / "ds=2019-11-12" / "part-0.parquet").exists()

    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,user_id,ts,item_id\nr1,u1,2019-11-11T00:00:00Z,N1\n")
    cmd = [*cmd[:4], "--format", "generic", "--input", str(bad), "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "missing required column(s) click" in done.stderr, done.stderr
    assert not (tmp_path / "o").exists()
