"""KFP component ``train_expressive``: the expressive model on the hard sources, warm-started from light."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from hap.config import TrainJobConfig


@dsl.component(base_image=TrainJobConfig.image)
def train_expressive_op(prepared: Input[Dataset], light: Input[Model], config_json: str, model: Output[Model]):
    """Train the expressive model (target attention, deeper MLP) on the hard sources only.

    Args:
        prepared: The ``prepare`` component's folder of encoded shards.
        light: The same day's light model, whose embeddings and towers the expressive model copies
            when ``expressive_recipe.init`` is ``light``.
        config_json: The run's ``HapConfig`` as JSON (``expressive``, ``expressive_loss``, ``train``, ``job``).
        model: Output folder of the trained model (weights, config, ``history.json``); its metadata
            holds ``train_seconds``.
    """
    # deferred: KFP runs a component's body on its own, so its imports live inside it
    from components.launch import launch_training
    from hap.config import HapConfig

    cfg = HapConfig.from_json(config_json)
    history = launch_training(prepared.path, "expressive", cfg, model.path, init=light.path)
    model.metadata["train_seconds"] = history["seconds"]
