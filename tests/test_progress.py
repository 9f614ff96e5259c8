"""Progress of long work: a tqdm bar on a terminal, plain throttled log lines otherwise, silence on
request; the simulator, ingestion and training report through it."""

import dataclasses
import datetime as dt
import io
import logging
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hap.progress as hp
from hap.config import HapConfig, SimConfig, TrainConfig
from hap.progress import progress

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def log_mode(monkeypatch, caplog):
    """Plain-line mode, a line per update; returns a function giving the lines logged so far."""
    monkeypatch.setenv("HAP_PROGRESS", "log")
    monkeypatch.setenv("HAP_PROGRESS_INTERVAL_S", "0")
    caplog.set_level(logging.INFO, logger=hp.LOGGER)
    return lambda: [r.getMessage() for r in caplog.records if r.name == hp.LOGGER]


def test_log_mode_writes_start_a_line_per_update_and_the_end(log_mode):
    with progress(total=3, desc="simulate", unit="day") as p:
        for i in range(3):
            p.update(1, loss=0.41234, samples_per_s=98000.4, ds=f"2026-01-0{i + 1}")
    lines = log_mode()
    assert lines[0] == "simulate: started, 3 days"
    assert len(lines) == 1 + 3 + 1
    assert lines[1].startswith("simulate: 1/3 days (33%) ") and "days/s, eta " in lines[1]
    assert lines[2].startswith("simulate: 2/3 days (67%) ")
    assert lines[-1].startswith("simulate: done 3/3 days (100%) in ") and " days/s " in lines[-1]
    assert lines[-1].endswith("loss=0.4123 samples/s=98000 ds=2026-01-03")
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_a_large_interval_leaves_only_the_start_and_the_end(log_mode, monkeypatch):
    monkeypatch.setenv("HAP_PROGRESS_INTERVAL_S", "3600")
    for _ in progress(range(500), desc="ingest", unit="day"):
        pass
    lines = log_mode()
    assert len(lines) == 2
    assert lines[0] == "ingest: started, 500 days"
    assert lines[1].startswith("ingest: done 500/500 days (100%) in ")


def test_middle_lines_come_at_most_once_per_interval(log_mode, monkeypatch):
    monkeypatch.setenv("HAP_PROGRESS_INTERVAL_S", "10")
    now = [0.0]
    monkeypatch.setattr(hp, "_clock", lambda: now[0])
    with progress(total=10, desc="validate ds=2026-01-01") as p:
        for _ in range(10):
            now[0] += 4.0  # updates at 4, 8, …, 40 s: lines at 12, 24 and 36 s
            p.update()
    lines = log_mode()
    assert [line.split(": ", 1)[1].split(" elapsed")[0] for line in lines[1:-1]] == [
        "3/10 steps (30%) 12.0s",
        "6/10 steps (60%) 24.0s",
        "9/10 steps (90%) 36.0s",
    ]
    assert lines[-1] == "validate ds=2026-01-01: done 10/10 steps (100%) in 40.0s, 0.25 steps/s"
    assert "eta 28s" in lines[1] and "eta 4s" in lines[3]  # 7, then 1 step left at 0.25 steps/s


def test_unknown_totals_failures_and_early_exits_still_end_with_a_line(log_mode):
    with progress(desc="train light epoch 1/2", unit="batch") as p:
        p.update(5, loss=0.5)
    with pytest.raises(ValueError), progress(total=4, desc="backfill", unit="day") as p:
        p.update(1, last="2026-01-01 success")
        raise ValueError("boom")
    for x in progress([1, 2, 3], desc="read", unit="file"):
        if x == 2:
            break
    lines = log_mode()
    assert "train light epoch 1/2: started" in lines
    assert any(line.startswith("train light epoch 1/2: done 5 batches in ") for line in lines)
    assert any(
        line.startswith("backfill: stopped at 1/4 days (25%) after ")
        and "(ValueError)" in line
        and line.endswith("last=2026-01-01 success")
        for line in lines
    )
    assert any(line.startswith("read: stopped at 1/3 files (33%) after ") for line in lines)  # the 2nd never finished


def test_total_can_be_set_once_known(log_mode):
    with progress(desc="validate", unit="step") as p:
        p.total = 2
        p.update()
        p.update()
    assert log_mode()[-1].startswith("validate: done 2/2 steps (100%)")


def test_bar_mode_draws_a_tqdm_bar(monkeypatch, caplog):
    monkeypatch.setenv("HAP_PROGRESS", "bar")
    out = io.StringIO()
    with progress(total=3, desc="simulate", unit="day", file=out) as p:
        for i in range(3):
            p.update(1, ds=f"2026-01-0{i + 1}")
    drawn = out.getvalue()
    assert drawn.startswith("\rsimulate:") and "3/3" in drawn and "100%" in drawn and "day/s" in drawn
    assert "ds=2026-01-03" in drawn
    assert not [r for r in caplog.records if r.name == hp.LOGGER]


def test_auto_mode_follows_the_tty(monkeypatch, caplog):
    monkeypatch.delenv("HAP_PROGRESS", raising=False)
    caplog.set_level(logging.INFO, logger=hp.LOGGER)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term, pipe = Terminal(), io.StringIO()
    with progress(total=1, desc="a", file=term) as p:
        p.update()
    with progress(total=1, desc="b", file=pipe) as p:
        p.update()
    assert "a: 100%" in term.getvalue() and pipe.getvalue() == ""
    assert [r.getMessage() for r in caplog.records][-1].startswith("b: done 1/1 step (100%)")


def test_off_is_silent_and_still_iterates(monkeypatch, caplog, capsys):
    monkeypatch.setenv("HAP_PROGRESS", "off")
    caplog.set_level(logging.INFO, logger=hp.LOGGER)
    assert list(progress(range(3), desc="x")) == [0, 1, 2]
    with progress(total=2, desc="y") as p:
        p.update(2, loss=1.0)
    with progress(total=1, desc="z", enabled=False, file=sys.stderr) as p:  # a DDP rank other than 0
        p.update()
    assert not caplog.records
    assert capsys.readouterr() == ("", "")


def test_display_problems_never_raise(monkeypatch):
    monkeypatch.setenv("HAP_PROGRESS", "bar")

    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("terminal gone")

    with progress(total=3, desc="x", file=Broken()) as p:
        for _ in range(3):
            p.update(1, loss=0.1)
    assert p.n == 3


@pytest.mark.parametrize(
    "setup",
    [
        "",  # a plain script: logging never configured, INFO would be dropped
        "import logging; logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')",
    ],
    ids=["unconfigured", "root-at-warning"],
)
def test_log_lines_reach_stderr_once_whatever_the_logging_setup(setup):
    code = f"{setup}\nfrom hap.progress import progress\nwith progress(total=2, desc='simulate', unit='day') as p:\n"
    code += "    p.update(1)\n    p.update(1)\n"
    env = {"HAP_PROGRESS_INTERVAL_S": "0", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 4, run.stderr  # start, 2 updates, end: no line twice
    assert "simulate: started, 2 days" in lines[0] and "simulate: done 2/2 days (100%)" in lines[-1]
    assert run.stdout == ""


# ------------------------------------------------------------------------------ the long work


def test_the_simulator_logs_each_day(log_mode, tmp_path):
    from samples.simulator import CascadeSimulator

    CascadeSimulator(SimConfig(n_users=200, n_items=500)).write_days(tmp_path, "2026-01-01", 2, 50)
    lines = log_mode()
    assert lines[0] == "simulate: started, 2 days"
    assert any(line.startswith("simulate: 1/2 days (50%)") and "ds=2026-01-01" in line for line in lines)
    assert lines[-1].startswith("simulate: done 2/2 days (100%)") and lines[-1].endswith("ds=2026-01-02")


def test_ingest_logs_each_day(log_mode, tmp_path):
    from samples.ingest import ingest

    t0 = dt.datetime(2019, 11, 11, 8, tzinfo=dt.UTC)
    rows = [
        {"request_id": f"r{d}{k}", "user_id": f"u{k}", "ts": (t0 + dt.timedelta(days=d, hours=k)).isoformat()}
        | {"item_id": f"N{(d + k + j) % 12}", "click": int(j == 0), "category": "news"}
        for d in range(2)
        for k in range(3)
        for j in range(4)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "log.parquet")
    cfg = HapConfig.load(ROOT / "configs" / "real_logs.yaml")
    comp = dataclasses.replace(cfg.composition, rank_cutoff=0, prerank_cutoff=5, prerank=(0, 30))
    cfg = dataclasses.replace(cfg, composition=comp, ingest=dataclasses.replace(cfg.ingest, retrieval_size=30))
    days = ingest(tmp_path / "log.parquet", "generic", tmp_path / "out", cfg)
    lines = log_mode()
    assert lines[0] == "ingest: started, 2 days"  # after the read: bad input stays one error line
    assert any(line.startswith("ingest: 1/2 days (50%)") and f"ds={days[0]}" in line for line in lines)
    assert lines[-1].startswith("ingest: done 2/2 days (100%)") and lines[-1].endswith(f"ds={days[-1]}")


def test_training_logs_each_epochs_batches_with_loss_and_samples_per_s(log_mode):
    from hap_runtime.spec import DEFAULT_SPEC
    from models.data import encode_tables
    from models.train import train_light
    from samples.simulator import CascadeSimulator

    day = CascadeSimulator(SimConfig(n_users=200, n_items=500)).simulate_day("2026-01-01", 96)
    data = encode_tables(day.requests, day.candidates, DEFAULT_SPEC, "click")
    cfg = HapConfig(train=TrainConfig(epochs=2, batch_requests=32, threads=1))  # 2 threads crawl on a busy machine
    _, history = train_light(data, cfg, DEFAULT_SPEC)
    lines = log_mode()
    for e in (1, 2):
        mine = [line for line in lines if line.startswith(f"train light epoch {e}/2: ")]
        assert mine[0] == f"train light epoch {e}/2: started, 3 batches"
        assert mine[1].startswith(f"train light epoch {e}/2: 1/3 batches (33%) ")
        end = mine[-1]
        assert end.startswith(f"train light epoch {e}/2: done 3/3 batches (100%) in ") and " loss=" in end
        assert f"loss={history['epochs'][e - 1]['loss']:.4g}" in end and "samples/s=" in end
