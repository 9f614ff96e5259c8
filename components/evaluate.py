"""KFP component ``evaluate``: candidate vs production and the anchor on the same held-out requests; K chosen
(``models.evaluation``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from hap.config import TrainJobConfig


@dsl.component(base_image=TrainJobConfig.image)
def evaluate_op(
    prepared: Input[Dataset],
    light: Input[Model],
    expressive: Input[Model],
    production_dir: str,
    config_json: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    anchor_dir: str = "",
):
    """Score the candidate pair, production and the anchor on the same held-out requests and choose K.

    Args:
        prepared: The ``prepare`` component's folder (``holdout/`` and ``serving/`` views).
        light: The candidate light model.
        expressive: The candidate expressive model.
        production_dir: The serving version's registry folder as this container sees it, or ``""``
            when nothing serves yet (the gate then judges on floors alone).
        config_json: The run's ``HapConfig`` as JSON (``eval``, ``routing``).
        anchor_dir: The first accepted version's registry folder as this container sees it, or ``""``
            before any was accepted: replayed on the same requests for the gate's relative floors.
        evaluation: Output ``evaluation.json``: slice AUCs, the system metric over K, the chosen K,
            production's figures and paired-bootstrap intervals of the differences.
        metrics: The candidate's scalar metrics, for the KFP UI.
    """
    # deferred: KFP runs a component's body on its own, so its imports live inside it
    import math

    from hap.config import HapConfig
    from models.evaluation import evaluate

    cfg = HapConfig.from_json(config_json)
    result = evaluate(prepared.path, light.path, expressive.path, production_dir, cfg, evaluation.path, anchor_dir)
    for name, value in result["candidate"].items():
        if isinstance(value, float) and not math.isnan(value):
            metrics.log_metric(name, value)
