"""KFP component ``train_light``: the light model on every source with GHCL (``components.launch``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from hap.config import TrainJobConfig


@dsl.component(base_image=TrainJobConfig.image)
def train_light_op(prepared: Input[Dataset], config_json: str, model: Output[Model]):
    """Train the light model with the configured launcher (in process, torchrun or a PyTorchJob).

    Args:
        prepared: The ``prepare`` component's folder of encoded shards.
        config_json: The run's ``HapConfig`` as JSON (``light``, ``light_loss``, ``train``, ``job``).
        model: Output folder of the trained model (weights, config, ``history.json``); its metadata
            holds ``train_seconds``.
    """
    # deferred: KFP runs a component's body on its own, so its imports live inside it
    from components.launch import launch_training
    from hap.config import HapConfig

    history = launch_training(prepared.path, "light", HapConfig.from_json(config_json), model.path)
    model.metadata["train_seconds"] = history["seconds"]
