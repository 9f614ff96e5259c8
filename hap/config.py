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
from typing import Any

from hap_runtime.config import ModelConfig, RoutingConfig


@dataclass(frozen=True)
class Composition:
    """Per-request sample composition of the logged candidates (ToutiaoRec-shaped)."""

    rank_negatives: int = 10
    prerank_negatives: int = 10
    global_per_positive: int = 2
    rank_cutoff: int = 50  # `rank` negatives: rank position > this
    prerank_cutoff: int = 200  # `prerank` negatives: pre-rank position > this; top ones reach ranking


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
    composition: Composition = field(default_factory=Composition)


@dataclass(frozen=True)
class LossConfig:
    """GHCL: one contrastive term per negative source plus pointwise BCE.

    ``mode`` = "ghcl" (per-source softmax groups), "softmax" (one group of all negatives)
    or "bce" (pointwise only). Weights are per source; constants are not public, so configurable.
    ``harmonize`` adds the paper's gradient harmonization across the source groups (GHCL mode only).
    """

    mode: str = "ghcl"
    # "norm": before each step, rescale every source's InfoNCE term so its gradient on the shared
    # (non-embedding) layers has the sources' mean norm — gradient harmonization; "none": the weights alone.
    harmonize: str = "none"
    temperature: float = 1.0
    bce_weight: float = 1.0
    source_weights: dict[str, float] = field(
        default_factory=lambda: {"expose": 1.0, "rank": 1.0, "prerank": 1.0, "global": 1.0}
    )


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
    device: str = "auto"  # auto: this worker's GPU when there is one, else cpu
    shard_requests: int = 2048  # requests per streamed shard: bounds training memory whatever the day's size


@dataclass(frozen=True)
class ExpressiveRecipe:
    """How the expressive model trains. ``init="light"`` warm-starts its embeddings and towers from
    the same day's light model (they share shapes), so it spends its capacity on the sequence
    interaction instead of relearning ids; ``"cold"`` starts from random weights. ``sources``: the
    samples it sees — the hard ones (DAMR), or all four with ``expressive_loss`` weights that
    emphasize the hard ones."""

    init: str = "light"
    sources: tuple[str, ...] = ("expose", "rank")


@dataclass(frozen=True)
class TrainJobConfig:
    """Where each model trains. ``local``: in the KFP component's process (``processes == 1``) or
    as ``processes`` DDP ranks under torchrun on the same machine. ``pytorchjob``: a Kubeflow
    PyTorchJob (Training Operator) of ``workers`` pods × ``nproc_per_node`` ranks running the same
    entry point, reading and writing the workspace volume ``workspace_pvc``."""

    launcher: str = "local"  # local | pytorchjob
    processes: int = 1
    max_restarts: int = 2  # torchrun restarts the group this often after a worker dies
    workers: int = 2
    nproc_per_node: int = 1
    namespace: str = "kubeflow"
    image: str = "hap-training:0.1.0"
    workspace_pvc: str = "hap-workspace"
    workspace_mount: str = "/workspace"
    cpu: str = "2"
    memory: str = "8Gi"
    gpus_per_worker: int = 0
    timeout_s: int = 6 * 3600


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

    mode: str = "local"
    host: str = ""
    pipeline_root: str = ""
    experiment: str = "hap-daily"
    timeout_s: int = 6 * 3600


@dataclass(frozen=True)
class HapConfig:
    window_days: int = 3
    label: str = "click"
    sim: SimConfig = field(default_factory=SimConfig)
    light: ModelConfig = field(default_factory=ModelConfig)
    expressive: ModelConfig = field(
        default_factory=lambda: ModelConfig(mlp_dims=(256, 128, 64, 32), attention=True, attention_dims=(32,))
    )
    light_loss: LossConfig = field(default_factory=LossConfig)
    expressive_loss: LossConfig = field(default_factory=lambda: LossConfig(source_weights={"expose": 1.0, "rank": 1.0}))
    expressive_recipe: ExpressiveRecipe = field(default_factory=ExpressiveRecipe)
    train: TrainConfig = field(default_factory=TrainConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    kfp: KfpConfig = field(default_factory=KfpConfig)
    job: TrainJobConfig = field(default_factory=TrainJobConfig)

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
    def load(cls, path: str | Path | None) -> HapConfig:
        """Load a YAML/JSON config file; missing keys keep their defaults."""
        if path is None:
            return cls()
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})


def _build(cls: type, data: dict[str, Any]) -> Any:
    """Recursively build a dataclass from a dict, failing loudly on unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[name] = _build(hint, value)
        elif typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
