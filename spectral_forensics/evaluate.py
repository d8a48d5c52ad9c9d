"""Evaluate a finished training run: task metrics and per-head induction scores.

:func:`evaluate_run` loads the newest checkpoint of a run directory written by
:func:`spectral_forensics.train.train`, recomputes loss and accuracy on the task's fixed
evaluation set, measures per-head attention scores on repeated random tokens through a
TransformerLens ``TransformerBridge`` (hook ``blocks.{l}.attn.hook_pattern``), and writes
``evaluation.json`` into the run directory.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral_forensics.data.tasks import BOS_TOKEN
from spectral_forensics.metrics.induction import MIN_REPEAT_LENGTH, induction_scores
from spectral_forensics.momentum.adapter import build_momentum_bridge
from spectral_forensics.train import (
    build_task,
    evaluate_task,
    latest_checkpoint,
    load_checkpoint_model,
    load_train_config,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"


@torch.no_grad()
def attention_patterns(
    model: torch.nn.Module, tokens: torch.Tensor, device: str | torch.device = "cpu"
) -> list[torch.Tensor]:
    """Capture the attention pattern of every layer through a TransformerBridge.

    The bridge is built around a copy of ``model`` (building a bridge replaces submodules of
    the model it wraps, so the caller's model stays untouched), and the patterns are read at
    ``blocks.{l}.attn.hook_pattern``.

    Parameters
    ----------
    model : MomentumForCausalLM
        The model.
    tokens : torch.Tensor
        Token ids, shape (batch, pos).
    device : str or torch.device
        Device of the forward pass.

    Returns
    -------
    list of torch.Tensor
        One tensor per layer, shape (batch, head, query_pos, key_pos), on the CPU.

    Raises
    ------
    RuntimeError
        If a ``hook_pattern`` hook point did not fire.
    """
    bridge = build_momentum_bridge(copy.deepcopy(model).to(device).eval())
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.config.num_hidden_layers)]
    _, cache = bridge.run_with_cache(tokens.to(device), names_filter=lambda name: name in names)
    missing = [name for name in names if name not in cache]
    if missing:
        raise RuntimeError(f"hook points {missing} did not fire; the bridge does not expose attention patterns")
    return [cache[name].detach().float().cpu() for name in names]


def evaluate_run(
    run_dir: str | Path,
    *,
    device: str = "cpu",
    eval_batches: int | None = None,
    induction_batch_size: int = 32,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate the newest checkpoint of a training run.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        Directory written by :func:`spectral_forensics.train.train`.
    device : str
        Device of the evaluation ("cpu", "cuda", "cuda:N").
    eval_batches : int, optional
        Evaluation batches (default: the run's ``eval_batches``).
    induction_batch_size : int
        Rows of repeated random tokens for the per-head scores
        (:func:`spectral_forensics.metrics.induction.induction_scores`). Their repeat lengths
        are drawn from ``[max(3, m // 2), m]`` with m = (seq_len - 1) // 2.
    write : bool
        Write ``evaluation.json`` into the run directory (atomically).

    Returns
    -------
    dict
        ``step``, ``checkpoint``, ``task``, ``chance_accuracy``, ``eval`` (``loss`` in nats
        per scored token, ``accuracy``, ``tokens``), ``gamma`` (layer × head), and
        ``heads`` with ``induction``, ``duplicate``, ``previous_token`` and ``copying`` scores
        (layer × head lists), ``repeat_lengths`` and the best induction head.

    Raises
    ------
    ValueError
        If the directory contains no finished checkpoint or no ``train_config.json``.
    """
    run_dir = Path(run_dir)
    config = load_train_config(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"{str(run_dir)!r} contains no checkpoint; train the run first")
    step = int(checkpoint.name.split("-")[1])
    if step < config.steps:
        logger.warning("%s stopped at step %d of %d; evaluating that checkpoint", run_dir, step, config.steps)
    task = build_task(config)
    model = load_checkpoint_model(checkpoint, device).eval()
    metrics = evaluate_task(
        model,
        task,
        batches=eval_batches or config.eval_batches,
        batch_size=config.eval_batch_size or config.batch_size,
        device=device,
        dtype=config.dtype,
    )

    max_repeat = (task.seq_len - 1) // 2
    min_repeat = max(MIN_REPEAT_LENGTH, max_repeat // 2)
    if max_repeat < MIN_REPEAT_LENGTH:
        raise ValueError(
            f"seq_len={task.seq_len} is too short for induction scores; they need repeats of at "
            f"least {MIN_REPEAT_LENGTH} tokens, so seq_len >= {1 + 2 * MIN_REPEAT_LENGTH}"
        )
    # Building a bridge replaces submodules of the model it wraps, so score a copy.
    bridge = build_momentum_bridge(copy.deepcopy(model).eval())
    head_scores = induction_scores(
        bridge,
        batch=induction_batch_size,
        min_len=min_repeat,
        max_len=max_repeat,
        seed=config.seed,
        bos_id=BOS_TOKEN,
        exclude_ids=(BOS_TOKEN,),
    )
    scores = {
        "induction": head_scores.induction,
        "duplicate": head_scores.duplicate_token,
        "previous_token": head_scores.previous_token,
        "copying": head_scores.copying,
    }
    best = np.unravel_index(int(np.argmax(scores["induction"])), scores["induction"].shape)

    result = {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "step": step,
        "task": config.task,
        "task_params": task.params(),
        "chance_accuracy": task.chance_accuracy,
        "eval": metrics,
        "gamma": model.momentum_gammas().tolist(),
        "placement": config.placement,
        "heads": {
            **{key: value.tolist() for key, value in scores.items()},
            "repeat_lengths": [min_repeat, max_repeat],
            "rows": induction_batch_size,
            "best_induction_head": {
                "layer": int(best[0]),
                "head": int(best[1]),
                "score": float(scores["induction"][best]),
            },
        },
    }
    if write:
        write_json_atomic(run_dir / EVALUATION_FILE, result)
    return result
