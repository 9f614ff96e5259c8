"""Typed configuration, passed whole (nanoGPT's ``GPTConfig`` style).

``HapConfig`` round-trips through plain dicts so it can cross process boundaries
(KFP component parameters, Airflow XCom, the model archive) as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hap import HARD_SOURCES, SOURCES
from hap_runtime.config import ModelConfig, RoutingConfig

# The modes a setting can take: checked when a config is loaded (``_build``), named once here.
LossMode = Literal["ghcl", "softmax", "bce"]
Harmonize = Literal["none", "norm"]
ExpressiveInit = Literal["light", "cold"]
Launcher = Literal["local", "pytorchjob"]
KfpMode = Literal["local", "cluster"]
SensorMode = Literal["poke", "reschedule"]
ServingMode = Literal["local", "kserve"]
KServeProtocol = Literal["v1", "v2"]
ScaleMetric = Literal["concurrency", "rps"]


@dataclass(frozen=True)
class Composition:
    """Per-request composition of the logged candidates: bounds, not exact counts, since real logs
    vary. The data contract's configuration (``HapConfig.composition``, settable through
    ``$HAP_CONFIG``): the simulator writes the upper bounds, ingestion at most them, validation checks
    every request against them. Defaults are ToutiaoRec-shaped (10 ``rank``, 10 ``prerank``, 2
    ``global`` per positive)."""

    expose: tuple[int, int] = (1, 1000)  # exposed items per request
    rank: tuple[int, int] = (10, 10)  # `rank` negatives per request
    prerank: tuple[int, int] = (10, 10)  # `prerank` negatives per request
    # `global` negatives per exposed positive: a request with P positives has between
    # floor(lo·P) and ceil(hi·P) of them
    global_per_positive: tuple[float, float] = (2.0, 2.0)
    rank_cutoff: int = 50  # `rank` negatives: rank position > this
    prerank_cutoff: int = 200  # `prerank` negatives: pre-rank position > this; top ones reach ranking

    def __post_init__(self) -> None:
        for name in ("expose", "rank", "prerank", "global_per_positive"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"composition.{name} must be [min, max] with 0 <= min <= max, got {[lo, hi]}")


@dataclass(frozen=True)
class DayOverDay:
    """Day-over-day bands for a day's aggregates (``expectations.baseline``: the policy in full).

    The baseline of a figure is the median over earlier days whose rows are sound (schema, values,
    per-request and integrity checks passed) — including days quarantined only by these bands, so
    one bad day cannot make every later normal day fail, and a lasting change becomes the new
    normal once it is most of the baseline. It uses the same weekday of the last ``weeks`` weeks
    when one exists (traffic has a weekly cycle), else the trailing ``trailing_days`` with the wider
    ``warmup_widen`` factor on each band; with fewer than ``min_history`` earlier days the bands are
    open (warm-up). A band is ``[median·lo, median·hi]``."""

    weeks: int = 4
    trailing_days: int = 7
    min_history: int = 2
    warmup_widen: float = 2.0
    volume_band: tuple[float, float] = (0.6, 1.6)  # request and candidate rows
    positive_rate_band: tuple[float, float] = (0.7, 1.3)
    leakage_band: tuple[float, float] = (0.0, 1.5)  # share of exposed positives already in their own history
    leakage_slack: float = 0.02  # absolute slack added to the leakage band's top (a baseline near 0)
    concentration_band: tuple[float, float] = (0.0, 3.0)  # the top user's / top item's shares
    concentration_slack: float = 0.01
    mode_share_slack: float = 0.15  # a categorical feature's top value share: at most the median + this


@dataclass(frozen=True)
class ValidationConfig:
    """What a day must satisfy beyond the contract's row checks (absolute caps hold from day one)."""

    day_over_day: DayOverDay = field(default_factory=DayOverDay)
    max_top_user_positive_share: float = 0.05  # one user owning this share of the day's positives: a logging bug
    max_top_user_request_share: float = 0.05
    max_top_item_expose_share: float = 0.2  # one item in this share of impressions: a stuck slot
    # exposed positives already in their own request's history; the band vs the baseline does the fine work
    # (the simulated worlds re-consume 5-57% of clicks from the history, depending on size and beta)
    max_leakage_share: float = 0.8
    max_carryover_share: float = 0.01  # requests whose exposed items repeat a request of the day before
    max_request_id_reuse_share: float = 0.0  # request ids of the day before used again
    min_requests_for_shares: int = 200  # smaller days: the concentration shares are not judged


@dataclass(frozen=True)
class IngestConfig:
    """How ``hap ingest`` brings real impression logs into the contract (``samples.ingest``: the retriever
    that builds ``rank``/``prerank`` negatives, the statistics behind derived features).

    A day's requests are processed in time-ordered chunks (at most ``chunk_requests`` requests
    within one ``chunk_minutes`` slot of the UTC clock). Everything a request gets, its retrieval
    pool, the retriever's statistics and its candidates' item features, reads only impressions of
    requests strictly earlier than its chunk's first request (co-visitation: strictly earlier than
    its slot); so a day's partitions never change when later days join the input.

    The retriever's score of pool item i for a request of user u (docs/runbook.md has the same):
    ``covis_weight·log(1 + Σ_h w(h→i)) + content_weight·cat_share(u, i) + subcategory_weight·
    sub_share(u, i) + popularity_weight·log(1 + impressions of i in the trailing recent_hours)``,
    h over the user's ``covis_history`` most recent history items; cat_share / sub_share: the share
    of the user's ``content_history`` most recent history items (of known category) in i's
    category / subcategory."""

    retrieval_size: int = 400  # retriever depth: `prerank` negatives come from positions (prerank_cutoff, this]
    chunk_requests: int = 256  # requests per chunk: a request sees impressions strictly before its chunk
    chunk_minutes: int = 60  # chunks never cross a slot of this many minutes (UTC); co-visitation refreshes per slot
    covis_window_days: int = 7  # co-visitation pairs and the retriever's item pool: this many days back (24 h each)
    covis_history: int = 10  # the user's most recent history items that query (and anchor) co-visitation
    covis_neighbours: int = 100  # co-visited items kept per item (the strongest)
    shown_weight: float = 0.1  # "shown beside a click" counts this much of "clicked after / together" (1)
    covis_weight: float = 1.0  # co-visitation: this × log(1 + Σ_h w(h → item))
    content_weight: float = 2.0  # this × the share of the user's history in the item's category
    subcategory_weight: float = 2.0  # this × the share of the user's history in the item's subcategory (MIND)
    content_history: int = 50  # the user's most recent history items that define those shares
    popularity_weight: float = 1.0  # recent popularity: this × log(1 + the item's impressions in recent_hours)
    recent_hours: float = 6.0  # the trailing window of recent popularity (news fades within hours)
    stats_window_days: int = 7  # popularity and item_ctr_7d: impressions and clicks over this many days back
    user_window_days: int = 30  # activity_days and follow_count: this many earlier days
    ctr_prior_impressions: float = 10.0  # item_ctr_7d shrinks toward the window's mean CTR with this weight
    defaults: dict[str, Any] = field(default_factory=dict)  # feature -> value: overrides samples.ingest.DEFAULTS


@dataclass(frozen=True)
class SimConfig:
    """The cascade simulator's world and stage noise levels."""

    n_users: int = 5000
    n_items: int = 20000
    n_categories: int = 32
    latent_dim: int = 16
    retrieval_size: int = 400
    expose_min: int = 4
    expose_max: int = 12
    retrieval_noise: float = 1.0
    prerank_noise: float = 0.8
    rank_noise: float = 0.3
    click_threshold: float = 4.5
    click_scale: float = 1.5
    seq_max_len: int = 50
    seq_min_len: int = 5
    chunk_requests: int = 256
    seed: int = 7
    # Sequence interaction (docs/simulator.md): true utility U = F + G with F the factorized utility and
    # G = β·(exp(κ·(max_h cos(v_c, v_h) − 1)) − μ) over the request's `session_window` most recent
    # history items, a session interest first among them. β = 0 is the purely factorized world.
    session_beta: float = 4.0
    session_kappa: float = 4.0
    session_window: int = 5
    # Share of requests (by request-id hash, the pipeline's held-out share) whose every retrieved
    # candidate is written with its true click probability: evaluation at serving ratios.
    eval_fraction: float = 0.2


@dataclass(frozen=True)
class LossConfig:
    """GHCL: one contrastive term per negative source plus pointwise BCE.

    ``mode`` = "ghcl" (per-source softmax groups), "softmax" (one group of all negatives)
    or "bce" (pointwise only). Weights are per source; constants are not public, so configurable.
    ``harmonize`` adds the paper's gradient harmonization across the source groups (GHCL mode only).
    """

    mode: LossMode = "ghcl"
    # "norm": before each step, rescale every source's InfoNCE term so its gradient on the shared
    # (non-embedding) layers has the sources' mean norm — gradient harmonization; "none": the weights alone.
    harmonize: Harmonize = "none"
    temperature: float = 1.0
    bce_weight: float = 1.0
    source_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SOURCES, 1.0))
    # RankTower's hybrid loss (models.losses), each term off at 0: the listwise softmax over a
    # request's exposed items against graded labels, and distillation of the logged ranking stage's
    # order (teacher logits −log position / distill_temperature) over the items it ranked
    listwise_weight: float = 0.0
    distill_weight: float = 0.0
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        if min(self.listwise_weight, self.distill_weight) < 0 or self.distill_temperature <= 0:
            raise ValueError("light_loss weights must be at least 0 and distill_temperature above 0")


@dataclass(frozen=True)
class TransformConfig:
    """Feature transforms fitted per run on the training window's training rows (``models.transforms``):
    ``buckets`` equal-frequency buckets per numeric feature, the ``vocab_size`` most frequent values
    per string categorical (the rest out-of-vocabulary). ``fit = false`` keeps the declared spec: the
    embedded default, whose declared boundaries are the simulator's own; ``configs/real_logs.yaml``
    fits them (a real log's columns follow no declared boundary)."""

    fit: bool = False
    buckets: int = 16
    vocab_size: int = 1000
    max_values: int = 500_000  # values held per numeric feature while fitting (a uniform thinning beyond)

    def __post_init__(self) -> None:
        if self.buckets < 1 or self.vocab_size < 1 or self.max_values < 1:
            raise ValueError("transform.buckets, vocab_size and max_values must be at least 1")


@dataclass(frozen=True)
class TrainConfig:
    """``epochs`` is the most a model trains: with a validation split (``valid_fraction`` of the run's
    day, by request-id hash, never trained on) each model keeps its best epoch by validation slice
    AUC and stops after ``patience`` epochs without improvement."""

    epochs: int = 8
    patience: int = 2
    valid_fraction: float = 0.2
    batch_requests: int = 128
    lr: float = 3e-3
    seed: int = 0
    threads: int = 2
    monitor_every: int = 25  # gradient-conflict monitor period in steps; 0 turns it off
    device: str = "auto"  # auto: this worker's GPU when there is one, else cpu; or "cpu", "cuda", "cuda:N"
    shard_requests: int = 2048  # requests per streamed shard: bounds training memory whatever the day's size


@dataclass(frozen=True)
class ExpressiveRecipe:
    """How the expressive model trains. ``init="light"`` warm-starts its embeddings and towers from
    the same day's light model (they share shapes), so it spends its capacity on the sequence
    interaction instead of relearning ids; ``"cold"`` starts from random weights. ``sources``: the
    samples it sees — the hard ones (DAMR), or all four with ``expressive_loss`` weights that
    emphasize the hard ones."""

    init: ExpressiveInit = "light"
    sources: tuple[str, ...] = HARD_SOURCES


@dataclass(frozen=True)
class TrainJobConfig:
    """Where each model trains. ``local``: in the KFP component's process (``processes == 1``) or
    as ``processes`` DDP ranks under torchrun on the same machine. ``pytorchjob``: a Kubeflow
    PyTorchJob (Training Operator) of ``workers`` pods × ``nproc_per_node`` ranks running the same
    entry point, reading and writing the workspace volume ``workspace_pvc``."""

    launcher: Launcher = "local"
    processes: int = 1
    max_restarts: int = 2  # torchrun restarts the group this often after a worker dies
    workers: int = 2
    nproc_per_node: int = 1
    namespace: str = "kubeflow"
    image: str = "hap-training:0.1.0"
    service_account: str = "hap-training"  # the KFP run's pods (infra/k8s/training.yaml grants it PyTorchJobs)
    workspace_pvc: str = "hap-workspace"
    workspace_mount: str = "/workspace"
    cpu: str = "2"
    memory: str = "8Gi"
    gpus_per_worker: int = 0
    timeout_s: int = 6 * 3600


@dataclass(frozen=True)
class KServeConfig:
    """Serving on KServe (``serving.mode: kserve``; ``serving.kserve``, ``docs/runbook.md``).

    ``hap deploy`` publishes each version under ``<storage_uri>/<version>/`` (``config/`` and
    ``model-store/``, the layout KServe's TorchServe runtime reads), rolls it out as a canary taking
    ``canary_percent`` of the traffic, smokes the canary through ``protocol`` against the offline
    scorer, then promotes it or rolls the InferenceService back. Replicas scale between
    ``min_replicas`` and ``max_replicas`` on ``scale_metric`` (in-flight requests per replica, or
    requests per second) with ``scale_target`` per replica: the serving benchmark's figures
    (``docs/benchmarks.md``).
    """

    name: str = "hap-preranking"
    namespace: str = "hap"
    storage_uri: str = "s3://hap-models/kserve"  # any fsspec URL: s3://, gs://, file://
    protocol: KServeProtocol = "v1"
    runtime: str = "hap-torchserve"  # the ServingRuntime (infra/kserve/servingruntime.yaml)
    image: str = "hap-torchserve:latest"
    canary_percent: int = 10
    min_replicas: int = 2
    max_replicas: int = 8
    scale_metric: ScaleMetric = "concurrency"
    scale_target: int = 4  # in flight per replica; Knative aims at 70%: ~2.8, ~150 rps on 2 cores (docs/benchmarks.md)
    cpu: str = "2"
    memory: str = "2Gi"
    jwt_issuer: str = "https://issuer.example.com"  # the tokens Istio accepts at the predictor (infra/kserve/auth.yaml)
    jwks_uri: str = "https://issuer.example.com/.well-known/jwks.json"
    startup_timeout_s: int = 300  # a pod whose version has no READY worker by then is restarted (startup probe)
    ready_timeout_s: int = 600  # a rollout that is not Ready by then is rolled back
    poll_s: float = 5.0


@dataclass(frozen=True)
class ServingConfig:
    """How TorchServe runs: per archive (``model-config.yaml``: workers, batching, queue, timeout) and
    per server (``config.properties`` and the key keeper, applied when the server starts).

    TorchServe gathers up to ``batch_size`` requests, waiting at most ``max_batch_delay_ms`` for
    more; the handler scores a gathered batch in one light and one expressive pass. While more than
    ``routing.shed_queue_depth`` requests wait, the handler answers 503 ``overloaded`` with
    Retry-After; a full job queue (``job_queue_size``) is answered 503 by TorchServe itself.
    """

    batch_size: int = 8
    max_batch_delay_ms: int = 1  # a lone request waits this long for company; a busy queue fills at once
    workers: int = 2  # worker processes per version: the Python worker is the bottleneck, one per core
    response_timeout_s: int = 60
    job_queue_size: int = 512  # well above routing.shed_queue_depth: the handler sheds first, truthfully
    token_expiration_min: float = 60.0  # TorchServe's key lifetime
    key_renew_fraction: float = 0.5  # the key keeper renews a key when less than this share of its life is left
    max_request_mb: int = 16  # the frontend's body cap; the handler answers 413 above routing.max_body_bytes
    jvm_heap_mb: int = 512  # bounds the frontend's memory
    torch_threads: int = 1  # intra-op threads per worker (0: torch's default)
    keep_previous: bool = True  # keep the previous production version loaded for an instant rollback
    shadow_sample: float = 0.1  # share of production's requests mirrored to a shadow version
    mode: ServingMode = "local"  # local: TorchServe on 127.0.0.1; kserve: an InferenceService (serving.kserve)
    kserve: KServeConfig = field(default_factory=KServeConfig)


@dataclass(frozen=True)
class EvalConfig:
    """Offline evaluation on held-out requests of the run's day (``models.evaluation``).

    Logged view: the ~35 logged candidates per request (slice AUCs; recall@``m`` with ``k``).
    Serving view (simulation): every retrieved candidate with p(click); the system metric is swept
    over ``k_grid`` with M = ``routing.m``, and K is chosen per run (``select_k``): the smallest K
    within ``k_tolerance`` of the best, among the K that beat light alone beyond their 95% interval
    and cost at most ``max_flops_share`` of the uniform expressive model's FLOPs; none → K = 0.
    ``select_k = false`` serves ``routing.k`` as configured (the gate still judges it).
    """

    holdout_fraction: float = 0.2
    k: int = 12
    m: int = 6
    k_grid: tuple[int, ...] = (0, 75, 100, 125, 150, 200)
    k_grid_logged: tuple[int, ...] = (0, 8, 12, 16, 24)  # a real log's ~35 logged candidates per request
    k_tolerance: float = 0.01
    max_flops_share: float = 0.5
    select_k: bool = True
    bootstrap: int = 100  # paired bootstrap resamples of held-out requests for every interval
    max_holdout_requests: int = 20_000  # evaluation reads at most this many held-out requests
    max_serving_requests: int = 3000  # and at most this many with every retrieved candidate


@dataclass(frozen=True)
class KfpConfig:
    """Where the training pipeline runs. ``local``: the KFP subprocess runner on this machine.
    ``cluster``: the compiled package submitted to a Kubeflow Pipelines API at ``host``, artifacts
    under ``pipeline_root`` (an fsspec URL such as ``s3://bucket/hap`` or ``file:///shared/hap``)."""

    mode: KfpMode = "local"
    host: str = ""
    pipeline_root: str = ""
    experiment: str = "hap-daily"
    timeout_s: int = 6 * 3600


@dataclass(frozen=True)
class OrchestrationConfig:
    """How the daily DAG waits, retries and alerts (read when the DAG file is parsed), and which gate
    policy judges a run. Each field has an environment override (``ENV_OVERRIDES``) for the
    scheduler's environment and tests; ``gate_policy`` empty: the shipped ``configs/gate_policy.yaml``."""

    retries: int = 2  # per task (validate: 1, promote and the sensor: 0 — bad data and refusals are not transient)
    retry_delay_s: int = 300  # first retry delay of a failed task (exponential backoff after it)
    max_retry_delay_s: int = 3600
    sensor_poke_s: int = 300  # the partition sensor re-checks this often
    sensor_timeout_s: int = 12 * 3600  # then it fails and alerts
    sensor_mode: SensorMode = "reschedule"  # reschedule frees the worker slot between pokes
    run_deadline_h: float = 6.0  # a run still going this long after it was queued alerts; 0 turns it off
    refusal_alert_after: int = 2  # this many days in a row refused by the gate alert on-call; 0 turns it off
    gate_policy: str = ""
    # Where ``$HAP_HOME``'s pages (``reports/``, ``validation/``) are published over HTTP, for the
    # links on each Airflow task; empty: ``file://`` links into the workspace (one machine).
    pages_url: str = ""

    def __post_init__(self) -> None:
        if self.refusal_alert_after < 0:
            raise ValueError(
                f"orchestration.refusal_alert_after must be 0 (off) or more, got {self.refusal_alert_after}"
            )


@dataclass(frozen=True)
class HapConfig:
    window_days: int = 3
    label: str = "click"
    composition: Composition = field(default_factory=Composition)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    light: ModelConfig = field(default_factory=ModelConfig)
    expressive: ModelConfig = field(
        default_factory=lambda: ModelConfig(mlp_dims=(256, 128, 64, 32), attention=True, attention_dims=(32,))
    )
    light_loss: LossConfig = field(default_factory=LossConfig)
    expressive_loss: LossConfig = field(
        default_factory=lambda: LossConfig(source_weights=dict.fromkeys(HARD_SOURCES, 1.0))
    )
    expressive_recipe: ExpressiveRecipe = field(default_factory=ExpressiveRecipe)
    transform: TransformConfig = field(default_factory=TransformConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    kfp: KfpConfig = field(default_factory=KfpConfig)
    job: TrainJobConfig = field(default_factory=TrainJobConfig)
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HapConfig:
        return _build(cls, data)

    @classmethod
    def from_json(cls, text: str) -> HapConfig:
        return cls.from_dict(json.loads(text)) if text else cls()

    @classmethod
    def from_env(cls) -> HapConfig:
        """``$HAP_CONFIG`` (YAML) if set, else the embedded defaults, then the environment overrides
        of ``ENV_OVERRIDES``: every entry point's config."""
        import os

        cfg = cls.load(os.environ.get("HAP_CONFIG") or None)
        for var, (section, name) in ENV_OVERRIDES.items():
            raw = os.environ.get(var)
            if raw:
                part = getattr(cfg, section)
                kind = typing.get_type_hints(type(part))[name]
                values = dataclasses.asdict(part) | {name: kind(raw) if kind in (int, float) else raw}
                cfg = dataclasses.replace(cfg, **{section: _build(type(part), values)})
        return cfg

    @classmethod
    def load(cls, path: str | Path | None) -> HapConfig:
        """Load a YAML/JSON config file; missing keys keep their defaults."""
        if path is None:
            return cls()
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})


# Environment variables that override one field each (the scheduler's environment, tests).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "HAP_RETRY_DELAY_S": ("orchestration", "retry_delay_s"),
    "HAP_SENSOR_POKE_S": ("orchestration", "sensor_poke_s"),
    "HAP_SENSOR_TIMEOUT_S": ("orchestration", "sensor_timeout_s"),
    "HAP_SENSOR_MODE": ("orchestration", "sensor_mode"),
    "HAP_RUN_DEADLINE_H": ("orchestration", "run_deadline_h"),
    "HAP_GATE_POLICY": ("orchestration", "gate_policy"),
    "HAP_REFUSAL_ALERT_AFTER": ("orchestration", "refusal_alert_after"),
    "HAP_PAGES_URL": ("orchestration", "pages_url"),
}


def _build(cls: type, data: dict[str, Any]) -> Any:
    """Recursively build a dataclass from a dict, failing loudly on unknown keys. A section given in
    part keeps the rest of that field's own default (``expressive: {numeric: …}`` stays the
    expressive model, attention and all, not a bare ``ModelConfig()``)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            default = _field_default(fields[name])
            kwargs[name] = _build(hint, (dataclasses.asdict(default) if default is not None else {}) | value)
        elif typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        elif typing.get_origin(hint) is Literal:
            if value not in typing.get_args(hint):
                raise ValueError(f"{cls.__name__}.{name} must be one of {list(typing.get_args(hint))}, got {value!r}")
            kwargs[name] = value
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (from its factory if it has one), ``None`` if it has none."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default
