"""The ``train`` and ``evaluate`` subcommands.

Parsing and validation messages only; the work is done by :func:`spectral_forensics.train.train`
and :func:`spectral_forensics.evaluate.evaluate_run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from spectral_forensics.data.tasks import TASKS

PLACEMENT_CHOICES = ("post_rope", "pre_rope", "none")

# Command-line option destinations mapped to TrainConfig fields.
_CONFIG_FIELDS = {
    "task": "task",
    "seq_len": "seq_len",
    "vocab": "vocab_size",
    "depth": "depth",
    "text": "text",
    "layers": "layers",
    "d_model": "d_model",
    "heads": "heads",
    "kv_heads": "kv_heads",
    "d_mlp": "d_mlp",
    "attn_only": "attn_only",
    "gamma": "gamma",
    "learn_gamma": "learn_gamma",
    "placement": "placement",
    "smear_keys": "smear_keys",
    "rope_theta": "rope_theta",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay",
    "grad_clip": "grad_clip",
    "eval_every": "eval_every",
    "eval_batches": "eval_batches",
    "log_every": "log_every",
    "checkpoint_every": "checkpoint_every",
    "seed": "seed",
    "device": "device",
    "dtype": "dtype",
}


def parse_gamma(text: str) -> float | list:
    """Parse ``--gamma``: one number, comma-separated numbers (one per layer) or a JSON list."""
    text = text.strip()
    try:
        if text.startswith("["):
            return json.loads(text)
        if "," in text:
            return [float(part) for part in text.split(",")]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid gamma {text!r}; give a number (4.0), one number per layer (0,1,4) "
            "or a JSON list of per-head lists ([[0,4],[1,1]])"
        ) from None


def parse_option(text: str) -> tuple[str, Any]:
    """Parse ``--task-option KEY=VALUE``; VALUE is read as JSON when possible, else as text."""
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"invalid task option {text!r}; use KEY=VALUE, for example copy_len=8")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``evaluate`` subcommands to a subparsers object."""
    train = subparsers.add_parser(
        "train",
        help="train a Momentum Attention model on a seeded task",
        description=(
            "Train a Momentum Attention model on a seeded task and write metrics.jsonl, "
            "train_config.json and checkpoints into --out. Under torchrun the global batch is split "
            "across processes. With --resume, settings not given are read from the run directory."
        ),
    )
    task = train.add_argument_group("task")
    task.add_argument("--task", choices=sorted(TASKS), default=None, help="task (default: induction)")
    task.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the task's)")
    task.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the task's; 256 for text)")
    task.add_argument("--depth", type=int, default=None, help="hops of the chain task (default 4)")
    task.add_argument("--text", default=None, metavar="FILE", help="UTF-8 text of the text task (default: Shakespeare)")
    task.add_argument(
        "--task-option", type=parse_option, action="append", default=None, metavar="KEY=VALUE",
        help="other task parameter, repeatable (copy_len, min_lag, max_lag, num_pairs, num_queries, "
        "num_chains, val_fraction)",
    )

    model = train.add_argument_group("model")
    model.add_argument("--layers", type=int, default=None, help="decoder layers (default 1)")
    model.add_argument("--d-model", type=int, default=None, help="residual width (default 64)")
    model.add_argument("--heads", type=int, default=None, help="attention heads (default 4)")
    model.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    model.add_argument("--d-mlp", type=int, default=None, help="MLP width (default 4 * d-model)")
    model.add_argument("--attn-only", action="store_true", default=None, help="blocks without MLP")
    model.add_argument(
        "--gamma", type=parse_gamma, default=None,
        help="momentum coupling γ >= 0: a number, one per layer (0,1,4) or JSON per layer and head (default 0)",
    )
    model.add_argument("--learn-gamma", action="store_true", default=None, help="train γ, starting from --gamma")
    model.add_argument("--placement", choices=PLACEMENT_CHOICES, default=None, help="where the shear acts (default post_rope)")
    model.add_argument(
        "--smear-keys", action="store_true", default=None,
        help="mix each key with the previous one before RoPE, learned per head (a baseline)",
    )
    model.add_argument("--rope-theta", type=float, default=None, help="RoPE base (default 10000)")

    optim = train.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000)")
    optim.add_argument("--batch-size", type=int, default=None, help="global batch size in sequences (default 32)")
    optim.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    optim.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default min(100, steps/10))")
    optim.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay on matrices (default 0.01)")
    optim.add_argument("--grad-clip", type=float, default=None, help="gradient norm limit, 0 disables (default 1.0)")
    optim.add_argument("--seed", type=int, default=None, help="seed of the data and the initialisation (default 0)")

    output = train.add_argument_group("evaluation and output")
    output.add_argument("--out", required=True, metavar="DIR", help="run directory")
    output.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    output.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default 100)")
    output.add_argument("--eval-batches", type=int, default=None, help="batches in the evaluation set (default 4)")
    output.add_argument("--log-every", type=int, default=None, help="steps between train records (default 10)")
    output.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: --eval-every)")
    output.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    output.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="fp32, or bf16 autocast (default fp32)")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate a training run",
        description=(
            "Recompute task loss and accuracy of the newest checkpoint in RUN_DIR and the per-head "
            "induction scores on repeated random tokens; write RUN_DIR/evaluation.json."
        ),
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `train`")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    evaluate.add_argument("--eval-batches", type=int, default=None, help="evaluation batches (default: the run's)")
    evaluate.add_argument("--json", action="store_true", help="print the whole result as JSON")
    evaluate.set_defaults(func=run_evaluate)


def config_from_args(args: argparse.Namespace):
    """Build the TrainConfig of a ``train`` command line (saved settings first with --resume)."""
    from spectral_forensics.train import CONFIG_FILE, TrainConfig, load_train_config

    if args.resume and not os.path.isfile(os.path.join(args.out, CONFIG_FILE)):
        raise ValueError(f"cannot resume: {args.out!r} contains no {CONFIG_FILE}; start the run without --resume")
    values = load_train_config(args.out).to_dict() if args.resume else TrainConfig().to_dict()
    for option, name in _CONFIG_FIELDS.items():
        value = getattr(args, option)
        if value is not None:
            values[name] = value
    if args.task_option:
        values["task_options"] = {**values.get("task_options", {}), **dict(args.task_option)}
    values["out_dir"] = args.out
    return TrainConfig.from_dict(values)


def _fail(command: str, error: Exception) -> int:
    print(f"spectral-forensics {command}: error: {error}", file=sys.stderr)
    return 2


def run_train(args: argparse.Namespace) -> int:
    """Run the ``train`` subcommand; return the exit status."""
    from spectral_forensics.train import train

    try:
        config = config_from_args(args)
        result = train(config, resume=args.resume, progress=not args.no_progress)
    except (ValueError, RuntimeError) as error:
        return _fail("train", error)
    if int(os.environ.get("RANK", "0")) == 0:
        evaluation = result.eval
        print(
            f"{result.config.task}: step {result.step}, eval accuracy {evaluation['accuracy']:.4f} "
            f"(chance {result.chance_accuracy:.4f}), eval loss {evaluation['loss']:.4f}, "
            f"{result.seconds:.0f} s; run in {result.run_dir}"
        )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the ``evaluate`` subcommand; return the exit status."""
    from spectral_forensics.evaluate import EVALUATION_FILE, evaluate_run

    try:
        result = evaluate_run(args.run_dir, device=args.device, eval_batches=args.eval_batches)
    except (ValueError, RuntimeError) as error:
        return _fail("evaluate", error)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    best = result["heads"]["best_induction_head"]
    print(
        f"{result['task']} step {result['step']}: eval accuracy {result['eval']['accuracy']:.4f} "
        f"(chance {result['chance_accuracy']:.4f}), eval loss {result['eval']['loss']:.4f}; "
        f"best induction head L{best['layer']}H{best['head']} score {best['score']:.3f}; "
        f"wrote {os.path.join(args.run_dir, EVALUATION_FILE)}"
    )
    return 0
