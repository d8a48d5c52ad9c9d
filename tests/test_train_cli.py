"""The ``train`` and ``evaluate`` subcommands, driven through their own argparse parsers."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from spectral_forensics.cli.train import add_parsers, config_from_args, parse_gamma
from spectral_forensics.train import read_metrics

TINY = ["--task", "induction", "--seq-len", "16", "--vocab", "16", "--d-model", "32", "--heads", "2",
        "--attn-only", "--eval-batches", "1", "--batch-size", "8", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectral-forensics")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def test_train_then_evaluate(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status = _main(["train", *TINY, "--gamma", "2", "--steps", "6", "--eval-every", "3", "--out", str(run_dir)])
    assert status == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("induction: step 6, eval accuracy ")
    assert summary.endswith(f"run in {run_dir}")
    saved = json.loads((run_dir / "train_config.json").read_text())
    assert saved["gamma"] == 2.0
    assert saved["attn_only"] is True

    assert _main(["evaluate", str(run_dir)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("induction step 6: eval accuracy ")
    assert "best induction head L0H" in line
    assert (run_dir / "evaluation.json").is_file()

    assert _main(["evaluate", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 6


def test_resume_reads_saved_settings(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _main(["train", *TINY, "--gamma", "1.5", "--steps", "4", "--eval-every", "2", "--out", str(run_dir)]) == 0
    assert _main(["train", "--out", str(run_dir), "--resume", "--steps", "6", "--no-progress"]) == 0
    assert "step 6" in capsys.readouterr().out
    saved = json.loads((run_dir / "train_config.json").read_text())
    assert saved["gamma"] == 1.5
    assert saved["d_model"] == 32
    assert [r["step"] for r in read_metrics(run_dir, "eval")] == [0, 2, 4, 6]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--gamma", "-1"], "gamma=-1.0 is not valid"),
        (["--gamma", "nan"], "gamma=nan is not valid"),
        (["--gamma", "inf"], "gamma=inf is not valid"),
        (["--seq-len", "1"], "seq_len=1"),
        (["--task", "chain", "--depth", "0"], "depth=0"),
        (["--resume"], "cannot resume"),
        (["--task-option", "lag=3"], "lag are not valid for task 'induction'"),
    ],
)
def test_invalid_options_exit_with_status_2(tmp_path, capsys, options, message):
    run_dir = tmp_path / "run"
    argv = ["train", "--out", str(run_dir), "--steps", "2", *options]
    assert _main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("spectral-forensics train: error: ")
    assert message in error
    assert not run_dir.exists()


def test_unknown_choices_are_rejected_by_argparse(capsys):
    for argv in (["train", "--out", "x", "--placement", "middle"], ["train", "--out", "x", "--task", "copy"]):
        with pytest.raises(SystemExit) as exit_info:
            _parser().parse_args(argv)
        assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_evaluate_without_run_fails(tmp_path, capsys):
    assert _main(["evaluate", str(tmp_path)]) == 2
    assert "train_config.json" in capsys.readouterr().err


def test_gamma_forms():
    assert parse_gamma("4") == 4.0
    assert parse_gamma("0, 1,4") == [0.0, 1.0, 4.0]
    assert parse_gamma("[[0, 4], [1, 1]]") == [[0, 4], [1, 1]]
    with pytest.raises(argparse.ArgumentTypeError, match="invalid gamma 'four'"):
        parse_gamma("four")


def test_options_map_to_config(tmp_path):
    args = _parser().parse_args([
        "train", "--out", str(tmp_path / "r"), "--task", "chain", "--depth", "30", "--kv-heads", "2",
        "--learn-gamma", "--gamma", "0.5", "--placement", "pre_rope", "--task-option", "num_chains=3",
        "--dtype", "bf16", "--lr", "0.01",
    ])
    config = config_from_args(args)
    assert config.task == "chain"
    assert config.depth == 30
    assert config.kv_heads == 2
    assert config.learn_gamma is True
    assert config.gamma == 0.5
    assert config.placement == "pre_rope"
    assert config.task_options == {"num_chains": 3}
    assert config.dtype == "bf16"
    assert config.lr == 0.01
    assert config.attn_only is False
    assert config.out_dir == str(tmp_path / "r")


def test_top_level_command_runs_train(tmp_path, capsys):
    from spectral_forensics import cli

    try:
        cli.build_parser().parse_args(["train", "--out", str(tmp_path / "probe")])
    except SystemExit:
        pytest.skip("the train subcommand is not registered in spectral_forensics.cli yet")
    capsys.readouterr()
    run_dir = tmp_path / "run"
    assert cli.main(["train", *TINY, "--gamma", "1", "--steps", "2", "--eval-every", "2", "--out", str(run_dir)]) == 0
    assert f"run in {run_dir}" in capsys.readouterr().out
    assert cli.main(["evaluate", str(run_dir)]) == 0
    assert cli.main(["train", "--out", str(run_dir), "--gamma", "-2", "--steps", "2"]) == 2
    assert "gamma=-2.0 is not valid" in capsys.readouterr().err
