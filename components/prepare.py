"""KFP component ``prepare``: the day's training window as encoded shards (``models.prepare``)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from hap.config import TrainJobConfig


@dsl.component(base_image=TrainJobConfig.image)
def prepare_op(workspace_root: str, ds: str, config_json: str, prepared: Output[Dataset]):
    """Encode the passed days of the training window ending at ``ds`` into request shards.

    Args:
        workspace_root: The workspace (``$HAP_HOME``) as this container sees it: the local path, or
            the mount of the workspace volume on a cluster. Only days whose validation verdict is
            ``passed`` are read.
        ds: The run's day, ``YYYY-MM-DD``; its requests are hash-split into train, valid and holdout.
        config_json: The run's ``HapConfig`` as JSON (window, label, shard size, holdout fraction).
        prepared: Output folder: ``train/``, ``valid/``, ``holdout/``, ``serving/`` shards and
            ``manifest.json``; the manifest also becomes the artifact's metadata.
    """
    # deferred: KFP runs a component's body on its own, so its imports live inside it
    from hap.config import HapConfig
    from models.prepare import prepare

    prepared.metadata.update(prepare(workspace_root, ds, HapConfig.from_json(config_json), prepared.path))
