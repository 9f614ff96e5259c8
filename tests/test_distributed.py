"""DDP through the real ``torchrun`` (gloo on CPU): 2 ranks match one process, rank 0 writes, and a
killed worker's job resumes from the last checkpoint to the very same weights."""

import dataclasses
import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from components.launch import launch_training, torchrun_command, worker_args
from hap.config import HapConfig, SimConfig
from hap.workspace import Workspace
from hap_runtime.nets import WEIGHTS_FILE
from hap_runtime.snapshot import SNAPSHOT_FILE
from models.evaluation import evaluate
from models.prepare import prepare
from samples.simulator import CascadeSimulator

pytestmark = pytest.mark.slow


def _cfg(processes: int) -> HapConfig:
    base = HapConfig(window_days=2)
    return dataclasses.replace(
        base,
        train=dataclasses.replace(base.train, epochs=3, shard_requests=128, monitor_every=0),
        job=dataclasses.replace(base.job, processes=processes, max_restarts=1),
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    ws = Workspace(tmp_path_factory.mktemp("ddp"))
    # DDP's arithmetic does not depend on the world: the factorized one (β = 0), where 3 epochs on two
    # small days learn enough for the quality check to mean something
    world = SimConfig(n_users=2000, n_items=8000, session_beta=0.0)
    days = CascadeSimulator(world).write_days(ws.data, "2026-11-20", 2, 1000)
    for day in days:
        ws.record_validation(day, {"success": True})
    out = ws.root / "prepared"
    prepare(str(ws.root), days[-1], _cfg(1), str(out))
    return out


@pytest.fixture(scope="module")
def runs(prepared) -> dict[str, Path]:
    """The light model trained by one process and by 2 DDP ranks."""
    out = {}
    for n in (1, 2):
        out[n] = prepared.parent / f"light-{n}"
        launch_training(str(prepared), "light", _cfg(n), str(out[n]))
    return out


def _auc(prepared: Path, light: Path) -> float:
    result = evaluate(str(prepared), str(light), str(light), "", _cfg(1), str(light.parent / "eval.json"))
    return result["candidate"]["light.auc.overall"]


def test_two_ranks_match_one_process_within_tolerance(prepared, runs):
    one, two = (json.loads((runs[n] / "history.json").read_text()) for n in (1, 2))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    manifest = json.loads((prepared / "manifest.json").read_text())
    for epoch in two["epochs"]:  # the ranks' shards cover the whole window (plus a few wrap-around requests)
        assert manifest["train_requests"] <= epoch["requests"] < manifest["train_requests"] + 128
    assert abs(one["epochs"][-1]["steps"] - two["epochs"][-1]["steps"]) <= 1  # same global batch size
    loss1, loss2 = one["epochs"][-1]["loss"], two["epochs"][-1]["loss"]
    assert abs(loss1 - loss2) / loss1 < 0.05, (loss1, loss2)
    auc1, auc2 = _auc(prepared, runs[1]), _auc(prepared, runs[2])
    assert auc1 > 0.7 and abs(auc1 - auc2) < 0.02, (auc1, auc2)
    # rank 0 alone wrote the model and its item snapshot, and removed its checkpoint once the model was safe
    assert sorted(p.name for p in runs[2].iterdir()) == ["history.json", SNAPSHOT_FILE, "model.json", WEIGHTS_FILE]
    assert not Path(str(runs[2]) + ".ckpt").exists()


def test_a_killed_worker_resumes_from_the_last_checkpoint(prepared, runs, tmp_path):
    out = tmp_path / "light"
    config = tmp_path / "config.json"
    config.write_text(_cfg(2).to_json())
    ckpt = Path(str(out) + ".ckpt")
    cmd = torchrun_command(2, 1, worker_args(str(prepared), "light", str(config), str(out)))
    log = tmp_path / "torchrun.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not ckpt.exists():  # epoch 0 is done and checkpointed by rank 0
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        assert len(rank1) == 1
        rank1[0].send_signal(signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "exitcode: -9" in text and "resuming from" in text, text[-3000:]  # torchrun restarted the group
    history = json.loads((out / "history.json").read_text())
    assert history["resumed"] and history["resumed"][0] >= 1
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2]
    # resuming is exact: the same weights as the uninterrupted 2-rank run
    resumed = torch.load(out / WEIGHTS_FILE, weights_only=True)
    reference = torch.load(runs[2] / WEIGHTS_FILE, weights_only=True)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_an_ensembles_worker_writes_one_model_and_removes_every_members_checkpoint(prepared, tmp_path):
    """Each member checkpoints apart (``checkpoint_files``); once the model is written none is left,
    so a later run into the same folder trains afresh instead of resuming finished members."""
    from hap_runtime.config import ModelConfig
    from hap_runtime.nets import Ensemble, load_model
    from models.train import checkpoint_files
    from models.worker import train_worker

    base = _cfg(1)
    cfg = dataclasses.replace(base, light=ModelConfig(members=2), train=dataclasses.replace(base.train, epochs=1))
    out = tmp_path / "light"
    history = train_worker(str(prepared), "light", cfg, str(out))
    assert isinstance(load_model(out), Ensemble) and len(history["members"]) == 2
    ckpt = Path(str(out) + ".ckpt")
    assert [p.name for p in checkpoint_files(ckpt, 2)] == ["light.ckpt.member0", "light.ckpt.member1"]
    assert not any(p.exists() for p in [ckpt, *checkpoint_files(ckpt, 2)])
    assert not any(p.name.startswith("light.ckpt") for p in tmp_path.iterdir())
