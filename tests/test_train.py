"""Trainer: exact resumption, input errors before any write, momentum induction, evaluation."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from spectral_forensics.evaluate import (
    EVALUATION_FILE,
    evaluate_run,
)
from spectral_forensics.train import (
    METRICS_FILE,
    TrainConfig,
    build_model,
    latest_checkpoint,
    lr_factor,
    read_metrics,
    train,
)

# Two layers with MLPs and a learned γ, so that resumption covers every parameter kind.
SMALL = dict(
    task="induction", seq_len=16, vocab_size=16, layers=2, d_model=32, heads=2, gamma=1.0,
    learn_gamma=True, steps=12, batch_size=8, lr=3e-3, eval_every=4, eval_batches=1, log_every=1,
)

# One attention-only layer on short sequences: γ = 4 learns induction within 150 steps, γ = 0 does
# not (measured on 2 CPU cores: about 0.66 against 0.04 accuracy for seeds 0 and 1).
INDUCTION = dict(
    task="induction", seq_len=32, vocab_size=32, layers=1, d_model=64, heads=4, attn_only=True,
    steps=150, batch_size=32, lr=3e-3, eval_every=50, eval_batches=4, seed=0,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models are tiny: one thread is faster than several and stays fast on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _losses(run_dir, split="train"):
    return {record["step"]: record["loss"] for record in read_metrics(run_dir, split)}


def _weights(run_dir):
    from spectral_forensics.train import load_checkpoint_model

    return load_checkpoint_model(latest_checkpoint(run_dir)).state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(TrainConfig(out_dir=str(run_dir), **SMALL), progress=False)
    return run_dir


def test_run_directory_layout(uninterrupted):
    assert sorted(p.name for p in uninterrupted.iterdir()) == [
        "checkpoints", "config.json", "generation_config.json", METRICS_FILE, "model.safetensors",
        "train_config.json",
    ]
    assert [p.name for p in (uninterrupted / "checkpoints").iterdir()] == ["step-00000012"]
    saved = json.loads((uninterrupted / "train_config.json").read_text())
    assert saved["gamma"] == 1.0
    assert saved["seq_len"] == 16
    evals = read_metrics(uninterrupted, "eval")
    assert [r["step"] for r in evals] == [0, 4, 8, 12]
    assert sorted(_losses(uninterrupted)) == list(range(1, 13))


def test_resume_reproduces_uninterrupted_losses(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    config = TrainConfig(out_dir=str(run_dir), **SMALL)
    first = train(config, stop_at=6, progress=False)
    assert first.step == 6
    assert latest_checkpoint(run_dir).name == "step-00000006"
    train(config, resume=True, progress=False)
    expected, resumed = _losses(uninterrupted), _losses(run_dir)
    assert sorted(resumed) == sorted(expected)
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6, rel=0)
    assert _losses(run_dir, "eval") == pytest.approx(_losses(uninterrupted, "eval"), abs=1e-6)
    reference = _weights(uninterrupted)
    for name, tensor in _weights(run_dir).items():
        torch.testing.assert_close(tensor, reference[name], atol=1e-6, rtol=0)


_KILL_DRIVER = """
import json, os, signal, sys
from spectral_forensics.data.tasks import InductionTask
from spectral_forensics.train import TrainConfig, train

original = InductionTask.batch

def batch(self, step, batch_size, split="train"):
    # SIGKILL while fetching the batch of update 11, after the step-10 checkpoint was written.
    if split == "train" and step == 10:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, step, batch_size, split)

InductionTask.batch = batch
train(TrainConfig(**json.loads(sys.argv[1])), progress=False)
"""


def test_resume_after_sigkill(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    settings = dict(SMALL, out_dir=str(run_dir), eval_every=5)
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(_KILL_DRIVER))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    process = subprocess.run([sys.executable, str(driver), json.dumps(settings)], env=env, capture_output=True)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    assert latest_checkpoint(run_dir).name == "step-00000010"
    # A half-written record and a half-written checkpoint, as a kill during a write leaves them.
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write('{"step": 11, "split": "tr')
    (run_dir / "checkpoints" / ".step-00000011.abc.tmp").mkdir()

    train(TrainConfig(**settings), resume=True, progress=False)
    expected, resumed = _losses(uninterrupted), _losses(run_dir)
    assert sorted(resumed) == list(range(1, 13))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6, rel=0)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000012"]


def test_resume_can_extend_steps(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    config = TrainConfig(out_dir=str(run_dir), **dict(SMALL, steps=4))
    train(config, progress=False)
    result = train(TrainConfig(out_dir=str(run_dir), **dict(SMALL, steps=6)), resume=True, progress=False)
    assert result.step == 6
    assert sorted(_losses(run_dir)) == list(range(1, 7))
    assert json.loads((run_dir / "train_config.json").read_text())["steps"] == 6


def _config(tmp_path, **changes):
    return TrainConfig(out_dir=str(tmp_path / "run"), **{**SMALL, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gamma": -1.0}, "gamma=-1.0"),
        ({"gamma": math.nan}, "gamma=nan"),
        ({"gamma": math.inf}, "gamma=inf"),
        ({"gamma": [1.0, -0.5]}, "gamma=-0.5"),
        ({"placement": "middle"}, "placement='middle'"),
        ({"task": "copying"}, "chain, induction, mqar, text"),
        ({"seq_len": 1}, "seq_len=1"),
        ({"gamma": [1.0, 2.0, 3.0]}, "gamma="),
        ({"kv_heads": 3}, "num_key_value_heads=3"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"dtype": "fp16"}, "dtype='fp16'"),
        ({"depth": 3}, "depth=3 only applies to the chain task"),
        ({"task": "text", "text": "/nonexistent/corpus.txt", "vocab_size": None, "seq_len": 8}, "corpus.txt"),
    ],
)
def test_invalid_settings_raise_before_writing(tmp_path, changes, message):
    config = _config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_without_checkpoint_raises(tmp_path):
    with pytest.raises(ValueError, match="contains no checkpoint"):
        train(_config(tmp_path), resume=True, progress=False)
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match="contains no checkpoint"):
        train(_config(tmp_path), resume=True, progress=False)
    assert list((tmp_path / "run").iterdir()) == []


def test_output_under_a_file_raises(tmp_path):
    (tmp_path / "file").write_text("x")
    config = TrainConfig(out_dir=str(tmp_path / "file" / "run"), **SMALL)
    with pytest.raises(ValueError, match="is a file"):
        train(config, progress=False)
    config = TrainConfig(out_dir=str(tmp_path / "file"), **SMALL)
    with pytest.raises(ValueError, match="is a file"):
        train(config, progress=False)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_raises(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="not writable"):
        train(TrainConfig(out_dir=str(locked / "run"), **SMALL), progress=False)


def test_existing_run_and_changed_resume_raise(uninterrupted):
    with pytest.raises(ValueError, match="already contains a run"):
        train(TrainConfig(out_dir=str(uninterrupted), **SMALL), progress=False)
    with pytest.raises(ValueError, match="gamma: saved 1.0, requested 2.0"):
        train(TrainConfig(out_dir=str(uninterrupted), **dict(SMALL, gamma=2.0)), resume=True, progress=False)
    with pytest.raises(ValueError, match="seq_len: saved 16, requested 24"):
        train(TrainConfig(out_dir=str(uninterrupted), **dict(SMALL, seq_len=24)), resume=True, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_request_without_cuda_raises(tmp_path):
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        train(_config(tmp_path, device="cuda"), progress=False)
    assert not (tmp_path / "run").exists()


def test_bf16_autocast_on_cpu(tmp_path):
    result = train(_config(tmp_path, dtype="bf16", steps=3, eval_every=3), progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 3
    assert all(math.isfinite(loss) for loss in losses.values())
    assert 0.0 <= result.eval["accuracy"] <= 1.0


def test_diverging_loss_raises(tmp_path):
    config = _config(tmp_path, lr=1e6, grad_clip=0.0, weight_decay=0.0, steps=30, learn_gamma=False)
    with pytest.raises(RuntimeError, match="training loss became nan"):
        train(config, progress=False)


def test_learning_rate_schedule():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 100, 0, 0.0) == pytest.approx(1.0)


def test_lr_logged_follows_schedule(uninterrupted):
    records = read_metrics(uninterrupted, "train")
    warmup = 1  # min(100, 12 // 10)
    for record in records:
        expected = 3e-3 * lr_factor(record["step"] - 1, 12, warmup, 0.1)
        assert record["lr"] == pytest.approx(expected)


# --------------------------------------------------------------------------------------------
# Induction with and without momentum, and the evaluation of the runs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def induction_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("induction")
    results = {}
    for gamma in (0.0, 4.0):
        config = TrainConfig(out_dir=str(root / f"gamma{gamma:g}"), gamma=gamma, **INDUCTION)
        results[gamma] = train(config, progress=False)
    return results


def test_momentum_learns_induction_in_one_layer(induction_runs):
    without, with_momentum = induction_runs[0.0].eval["accuracy"], induction_runs[4.0].eval["accuracy"]
    chance = induction_runs[0.0].chance_accuracy
    assert without < 0.15, f"gamma=0 reached {without:.3f}; chance is {chance:.3f}"
    assert with_momentum > 0.4, f"gamma=4 reached only {with_momentum:.3f}"
    assert with_momentum - without > 0.3


def test_evaluate_run_matches_training(induction_runs):
    run = induction_runs[4.0]
    result = evaluate_run(run.run_dir)
    assert result["step"] == 150
    assert result["eval"]["accuracy"] == pytest.approx(run.eval["accuracy"], abs=1e-9)
    assert result["eval"]["loss"] == pytest.approx(run.eval["loss"], rel=1e-6)
    assert np.array(result["heads"]["induction"]).shape == (1, 4)
    assert np.allclose(result["gamma"], 4.0)
    saved = json.loads((run.run_dir / EVALUATION_FILE).read_text())
    assert saved["heads"]["best_induction_head"] == result["heads"]["best_induction_head"]


def test_momentum_run_has_stronger_induction_heads(induction_runs):
    best = {gamma: evaluate_run(run.run_dir, write=False)["heads"]["best_induction_head"]["score"]
            for gamma, run in induction_runs.items()}
    assert best[4.0] > 2 * best[0.0]




def test_run_directory_loads_as_model(uninterrupted):
    import spectral_forensics  # noqa: F401  (registers the momentum architecture)
    from transformers import AutoModelForCausalLM

    from spectral_forensics.models import load_model

    model = AutoModelForCausalLM.from_pretrained(uninterrupted)
    checkpoint = sorted((uninterrupted / "checkpoints").glob("step-*"))[-1]
    reference = AutoModelForCausalLM.from_pretrained(checkpoint)
    for (name, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(value, expected), name
    loaded = load_model(uninterrupted)
    assert loaded.tokenizer is None
    assert "blocks.0.attn.hook_mom_k" in loaded.bridge.hook_dict
