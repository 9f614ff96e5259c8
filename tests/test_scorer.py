"""The two-stage scorer and its request codec in-process: routing, layouts, offline/online agreement,
every bad input, and the handler's isolation of a failing request inside its batch."""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hap.config import HapConfig, TrainConfig
from hap_runtime.codec import JsonDecoder, RequestError, decode_body
from hap_runtime.config import RoutingConfig
from hap_runtime.nets import save_model
from hap_runtime.scorer import TwoStageScorer
from hap_runtime.spec import DEFAULT_SPEC
from models.data import encode_tables
from models.metrics import predict
from models.train import train_expressive, train_light
from serving.deploy import columnar

CFG = HapConfig(train=TrainConfig(epochs=1, batch_requests=64))
ROUTING = RoutingConfig(k=8, m=5, max_candidates=300, max_k=100, max_body_bytes=200_000)
USER_FIELDS = [f.name for f in DEFAULT_SPEC.features if f.side == "user"]
ITEM_FIELDS = [f.name for f in DEFAULT_SPEC.side("item")]


@pytest.fixture(scope="module")
def model_dir(small_day, tmp_path_factory):
    data = encode_tables(small_day.requests, small_day.candidates, DEFAULT_SPEC, "click")
    d = tmp_path_factory.mktemp("model")
    light = train_light(data, CFG, DEFAULT_SPEC)[0]
    save_model(light, d / "light")
    save_model(train_expressive(data, CFG, DEFAULT_SPEC, light=light)[0], d / "expressive")
    (d / "routing.json").write_text(json.dumps(asdict(ROUTING)))
    (d / "version.json").write_text(json.dumps({"version": "test.1"}))
    return d


@pytest.fixture(scope="module")
def scorer(model_dir):
    return TwoStageScorer(model_dir)


def logged_request(day, i=0):
    """Request i of the day exactly as logged, with its logged candidates."""
    req = day.requests.slice(i, 1).to_pylist()[0]
    cands = day.candidates.filter(np.asarray(day.candidates["request_id"]) == req["request_id"])
    return {"user": {k: req[k] for k in USER_FIELDS}, "candidates": cands.select(ITEM_FIELDS).to_pylist()}


def test_answer_is_a_ranked_top_m_with_stages(scorer, small_day):
    body = logged_request(small_day)
    out = scorer(body)
    items = out["items"]
    assert out["model_version"] == "test.1" and out["k"] == 8 and len(items) == 5
    assert [it["rank"] for it in items] == [1, 2, 3, 4, 5]
    assert all(it["stage"] == "expressive" for it in items)  # M <= K: all re-scored
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)
    ids = {c["item_id"] for c in body["candidates"]}
    assert {it["item_id"] for it in items} <= ids


def test_m_beyond_k_is_filled_by_the_light_model(scorer, small_day):
    out = scorer({**logged_request(small_day), "k": 2, "m": 6})
    assert [it["stage"] for it in out["items"]] == ["expressive"] * 2 + ["light"] * 4


def test_online_scores_match_offline_evaluation(scorer, small_day):
    """Serving and offline evaluation share encoding and model: light scores are identical."""
    body = logged_request(small_day, 3)
    n = len(body["candidates"])
    out = scorer({**body, "k": 0, "m": n})
    online = {it["item_id"]: it["score"] for it in out["items"]}
    one = small_day.requests.slice(3, 1)
    rows = np.asarray(small_day.candidates["request_id"]) == one["request_id"][0].as_py()
    data = encode_tables(one, small_day.candidates.filter(rows), DEFAULT_SPEC, "click")
    offline = predict(scorer.light, data)
    for item_id, score in zip(small_day.candidates.filter(rows)["item_id"].to_pylist(), offline, strict=True):
        assert math.isclose(online[item_id], float(score), rel_tol=1e-5, abs_tol=1e-5)


def test_unknown_ids_are_hashed_not_rejected(scorer, small_day):
    body = logged_request(small_day)
    body["candidates"][0]["item_id"] = 10**15
    body["user"]["user_id"] = 987654321
    assert len(scorer(body)["items"]) == 5


@pytest.mark.parametrize("fast", [True, False], ids=["msgspec", "stdlib"])
def test_every_bad_input_names_its_field_and_kind(scorer, small_day, bad_requests, fast):
    """The same verdict whichever JSON decoder the environment has (msgspec, or only the stdlib)."""
    decoder = JsonDecoder(fast)
    assert decoder.name == ("msgspec" if fast else "json")
    cases = bad_requests(logged_request(small_day), ROUTING)
    cases.append(("float beyond float64", b'{"user": {}, "k": 1e999}', "body", "out_of_range"))
    for name, bad, field, kind in cases:
        with pytest.raises(RequestError) as err:
            raw = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
            scorer(decode_body(raw, ROUTING.max_body_bytes, decoder))
        assert (err.value.field, err.value.kind) == (field, kind), name
        assert 400 <= err.value.status < 500


def test_a_batch_scores_like_its_requests_one_by_one(scorer, small_day):
    """Cross-request batching changes nothing in the answers: same ranking, same scores."""
    bodies = [{**logged_request(small_day, i), "k": k, "m": 7} for i, k in enumerate((0, 3, 8, 100, 1))]
    parsed = [scorer.parse(b) for b in bodies]
    batched, times = scorer.score_batch(parsed)
    assert times.light_ms > 0 and times.expressive_ms >= 0
    for body, got in zip(bodies, batched, strict=True):
        want = scorer(body)
        assert [it["item_id"] for it in got["items"]] == [it["item_id"] for it in want["items"]]
        assert [it["stage"] for it in got["items"]] == [it["stage"] for it in want["items"]]
        for g, w in zip(got["items"], want["items"], strict=True):
            assert math.isclose(g["score"], w["score"], rel_tol=1e-5, abs_tol=1e-6)


# ---- property-based fuzzing of the request parser ----

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_or_reject(scorer, body):
    """The parser's contract: a parsed request or a ``RequestError`` naming a field, nothing else."""
    try:
        return scorer.parse(decode_body(body, ROUTING.max_body_bytes))
    except RequestError as err:
        assert err.field and err.message and 400 <= err.status < 500
        return None


@FUZZ
@given(raw=st.binary(max_size=64) | JSON.map(lambda v: json.dumps(v).encode()))
def test_fuzz_arbitrary_bodies_are_rejected_cleanly(scorer, raw):
    assert _parse_or_reject(scorer, raw) is None


@FUZZ
@given(data=st.data(), value=JSON)
def test_fuzz_one_field_replaced_by_any_json(scorer, small_day, data, value):
    body = logged_request(small_day, data.draw(st.integers(0, 20)))
    where = data.draw(st.sampled_from(["user", "candidates", "k", "m"]))
    if where == "user":
        body["user"][data.draw(st.sampled_from(sorted(body["user"])))] = value
    elif where == "candidates":
        i = data.draw(st.integers(0, len(body["candidates"]) - 1))
        body["candidates"][i][data.draw(st.sampled_from(ITEM_FIELDS))] = value
    else:
        body[where] = value
    parsed = _parse_or_reject(scorer, body)
    if parsed is not None:  # e.g. an int where any int is fine: it must then score
        answer = scorer.score_batch([parsed])[0][0]
        assert len(answer["items"]) == min(parsed.m, len(body["candidates"]))


def _feature_value(f):
    """Any value the contract allows: declared ranges, any id >= 1, any string (unknown → index 0)."""
    if f.vocab:
        return st.sampled_from(f.vocab) | st.text(max_size=6)
    low = -(2**63) if f.low is None else int(f.low)
    high = 2**63 - 1 if f.high is None else int(f.high)
    if f.kind == "bucket":
        return st.floats(f.low, f.high, allow_nan=False) | st.integers(low, high)
    return st.integers(low, high)


@FUZZ
@given(data=st.data())
def test_fuzz_any_well_typed_request_is_answered(scorer, data):
    user = {f.name: data.draw(_feature_value(f)) for f in DEFAULT_SPEC.side("user")}
    cap = DEFAULT_SPEC.sequence.max_len
    user["hist_item_ids"] = data.draw(st.lists(st.integers(1, 2**63 - 1), max_size=cap))
    item = st.fixed_dictionaries({f.name: _feature_value(f) for f in DEFAULT_SPEC.side("item")})
    cands = data.draw(st.lists(item, min_size=1, max_size=40))
    k, m = data.draw(st.integers(0, ROUTING.max_k)), data.draw(st.integers(1, ROUTING.max_candidates))
    answer = scorer({"user": user, "candidates": cands, "k": k, "m": m})
    n = len({c["item_id"] for c in cands})  # a repeated item_id is answered once
    items = answer["items"]
    assert answer["n_candidates"] == n and answer["duplicates"] == len(cands) - n
    assert len(items) == min(m, n) and [it["rank"] for it in items] == list(range(1, len(items) + 1))
    assert len({it["item_id"] for it in items}) == len(items)
    assert all(math.isfinite(it["score"]) for it in items)
    assert sum(it["stage"] == "expressive" for it in items) == min(k, n, m)


# ---- layouts, duplicates and body decoding ----


def test_columns_layout_answers_exactly_like_rows(scorer, small_day):
    body = {**logged_request(small_day, 2), "k": 3, "m": 10}
    assert scorer(columnar(body)) == scorer(body)


def test_a_repeated_item_is_answered_once_with_its_first_occurrence(scorer, small_day):
    body = {**logged_request(small_day, 1), "k": 4, "m": 300}
    cands = body["candidates"]
    other = {**cands[0], "category": (cands[0]["category"] + 1) % 32}  # same item, other features: ignored
    out = scorer({**body, "candidates": [*cands, other, cands[1]]})
    want = scorer(body)
    assert out["duplicates"] == 2 and want["duplicates"] == 0
    assert out["n_candidates"] == want["n_candidates"] == len(cands)
    assert out["items"] == want["items"]


def test_text_bytes_and_decoded_bodies_parse_alike(scorer, small_day):
    body = logged_request(small_day, 4)
    text = json.dumps(body)
    parsed = [scorer.parse(decode_body(raw, ROUTING.max_body_bytes)) for raw in (text, text.encode(), body)]
    assert all(p.item_ids == parsed[0].item_ids and (p.item_x == parsed[0].item_x).all() for p in parsed)


# ---- the handler: one failing request never fails its batch ----


class _Context:
    """The parts of TorchServe's per-batch context the handler uses (metrics off)."""

    metrics = None
    model_name = "hap"

    def __init__(self) -> None:
        self.status: dict[int, int] = {}
        self.headers: dict[int, dict[str, str]] = {}

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        assert phrase.isprintable() and "\n" not in phrase
        self.status[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        assert value == "application/json"

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.headers.setdefault(idx, {})[key] = value


class _PoisonedScorer(TwoStageScorer):
    """Fails whenever a request asking for k=7 is in the batch: a scoring error of one request."""

    def score_batch(self, reqs):
        if any(r.k == 7 for r in reqs):
            raise RuntimeError("poisoned request")
        return super().score_batch(reqs)


def _handler(scorer):
    from hap_runtime.handler import HapTwoStageHandler

    handler = HapTwoStageHandler()
    handler.scorer, handler.initialized = scorer, True
    return handler


def test_handler_isolates_bad_bodies_and_a_failing_score_inside_a_batch(model_dir, small_day, bad_requests):
    handler = _handler(_PoisonedScorer(model_dir))
    good = [{**logged_request(small_day, i), "k": 3, "m": 4} for i in range(4)]
    cases = bad_requests(good[0], ROUTING)
    rows = [{"body": json.dumps(b).encode()} for b in good]
    rows += [{"body": bad if isinstance(bad, bytes) else json.dumps(bad).encode()} for _, bad, _, _ in cases]
    rows.append({"body": json.dumps({**good[0], "k": 7}).encode()})  # parses, then fails to score
    rows.append({"data": json.dumps(good[1]).encode()})  # TorchServe's other key for a body
    ctx = _Context()
    out = handler.handle(rows, ctx)
    assert len(out) == len(rows)
    for i, body in enumerate([*good, None]):
        if body is None:
            continue
        answer = json.loads(out[i])
        assert i not in ctx.status and answer["items"] == handler.scorer(body)["items"], i
        assert float(ctx.headers[i]["X-Hap-Worker-Ms"]) > 0
    for j, (name, _, field, kind) in enumerate(cases, start=len(good)):
        err = json.loads(out[j])
        assert (err["field"], err["kind"]) == (field, kind) and 400 <= ctx.status[j] < 500, name
    poisoned = len(good) + len(cases)
    assert ctx.status[poisoned] == 500 and json.loads(out[poisoned])["kind"] == "internal"
    assert json.loads(out[-1])["items"] == json.loads(out[1])["items"]
