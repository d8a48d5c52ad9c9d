"""Data-parallel training: two gloo processes on CPU match one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from spectral_forensics.train import TrainConfig, latest_checkpoint, load_checkpoint_model, read_metrics, train

SETTINGS = dict(
    task="mqar", seq_len=24, vocab_size=32, layers=1, d_model=32, heads=2, gamma=2.0,
    steps=6, batch_size=8, lr=3e-3, eval_every=3, eval_batches=1, log_every=1,
)

_DRIVER = """
import json, sys
from spectral_forensics.train import TrainConfig, train
train(TrainConfig(**json.loads(sys.argv[1])), progress=False)
"""


def _torchrun(tmp_path, settings: dict) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(driver), json.dumps(settings),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(out_dir=str(root / "single"), **SETTINGS), progress=False)
    finally:
        torch.set_num_threads(threads)
    process = _torchrun(root, dict(SETTINGS, out_dir=str(root / "double")))
    assert process.returncode == 0, process.stderr[-3000:]
    return root / "single", root / "double"


def test_two_processes_match_one(runs):
    single, double = runs
    expected = {r["step"]: r["loss"] for r in read_metrics(single, "train")}
    actual = {r["step"]: r["loss"] for r in read_metrics(double, "train")}
    assert sorted(actual) == sorted(expected) == list(range(1, 7))
    for step in expected:
        assert actual[step] == pytest.approx(expected[step], abs=1e-5, rel=0)
    reference = load_checkpoint_model(latest_checkpoint(single)).state_dict()
    for name, tensor in load_checkpoint_model(latest_checkpoint(double)).state_dict().items():
        torch.testing.assert_close(tensor, reference[name], atol=1e-5, rtol=0)


def test_only_rank_zero_writes(runs):
    _, double = runs
    records = read_metrics(double)
    steps = [(r["split"], r["step"]) for r in records]
    assert len(steps) == len(set(steps))
    assert sorted(p.name for p in double.iterdir()) == [
        "checkpoints", "config.json", "generation_config.json", "metrics.jsonl",
        "model.safetensors", "train_config.json",
    ]


def test_global_batch_must_split_evenly(tmp_path, monkeypatch):
    # The check runs before the process group starts, so one process with torchrun's
    # environment variables raises the same error as every rank of a real launch.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="batch_size=7 is not divisible by WORLD_SIZE=2"):
        train(TrainConfig(**dict(SETTINGS, batch_size=7, out_dir=str(tmp_path / "odd"))), progress=False)
    assert not (tmp_path / "odd").exists()


def test_torchrun_sweep_matches_one_process(tmp_path):
    """Several runs in one torchrun job share one process group and record what one process does."""
    from spectral_forensics.experiments import run_experiment

    tiny = {"steps": 4, "eval_every": 2, "eval_batches": 1, "batch_size": 4, "d_model": 16, "heads": 2,
            "seq_len": 16, "layers": 1, "log_every": 1}
    settings = [item for key, value in tiny.items() for item in ("--set", f"{key}={value}")]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "spectral_forensics", "experiment", "run", "language-model", "--seeds", "1", "--quiet",
        "--out", str(tmp_path / "double"), *settings,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_experiment("language-model", tmp_path / "single", seeds=1, overrides=tiny, progress=False)
    finally:
        torch.set_num_threads(threads)
    lines = (tmp_path / "double" / "runs.jsonl").read_text().splitlines()
    double = {r["run_id"]: r for r in map(json.loads, lines)}
    assert sorted(double) == sorted(r["run_id"] for r in single.records) == ["baseline-s0", "momentum-s0"]
    for record in single.records:
        assert double[record["run_id"]]["loss"] == pytest.approx(record["loss"], abs=1e-5)
