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


def repeated_tokens(
    batch_size: int,
    max_repeat: int,
    vocab_size: int,
    *,
    min_repeat: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build sequences ``[BOS, r_1 … r_n, r_1 … r_n, filler]`` with a repeat length n per row.

    Parameters
    ----------
    batch_size : int
        Number of sequences.
    max_repeat : int
        Largest repeat length; every row has ``1 + 2 * max_repeat`` tokens.
    vocab_size : int
        Token ids are drawn from ``1 … vocab_size - 1`` (0 is BOS).
    min_repeat : int, optional
        Smallest repeat length (default ``max(2, max_repeat // 2)``). Each row draws n
        uniformly from ``[min_repeat, max_repeat]``.
    seed : int
        Seed of the random tokens and lengths.

    Returns
    -------
    tokens : torch.Tensor
        int64, shape (batch, pos) with pos = 1 + 2 * max_repeat. Positions after the second
        copy hold random filler.
    repeat_lengths : torch.Tensor
        int64, shape (batch,): n of each row.

    Notes
    -----
    The tokens of one copy are distinct when ``vocab_size - 1 >= max_repeat``, so each token
    of the second copy has exactly one previous occurrence.
    """
    min_repeat = max(2, max_repeat // 2) if min_repeat is None else min_repeat
    if not 1 <= min_repeat <= max_repeat:
        raise ValueError(
            f"min_repeat={min_repeat}, max_repeat={max_repeat} are not valid; they need 1 <= min_repeat <= max_repeat"
        )
    if vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size} is not valid; it needs BOS and at least one other token")
    generator = torch.Generator().manual_seed(seed)
    content = vocab_size - 1
    length = 1 + 2 * max_repeat
    if content >= max_repeat:
        segment = torch.rand(batch_size, content, generator=generator).argsort(dim=1)[:, :max_repeat] + 1
    else:
        segment = torch.randint(1, vocab_size, (batch_size, max_repeat), generator=generator)
    tokens = torch.randint(1, vocab_size, (batch_size, length), generator=generator)
    tokens[:, 0] = BOS_TOKEN
    lengths = torch.randint(min_repeat, max_repeat + 1, (batch_size,), generator=generator)
    for row, n in enumerate(lengths.tolist()):
        tokens[row, 1 : 1 + n] = segment[row, :n]
        tokens[row, 1 + n : 1 + 2 * n] = segment[row, :n]
    return tokens, lengths


def attention_scores(pattern: torch.Tensor, repeat_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """Score each head's attention on rows built by :func:`repeated_tokens`.

    Parameters
    ----------
    pattern : torch.Tensor
        Attention probabilities of one layer, shape (batch, head, query_pos, key_pos).
    repeat_lengths : torch.Tensor
        Repeat length n of each row, shape (batch,).

    Returns
    -------
    dict of torch.Tensor
        Each of shape (head,), averaged over the second-copy positions t = n + 1 … 2n of
        every row:

        - ``induction``: attention to t - n + 1, the token after the previous occurrence;
        - ``duplicate``: attention to t - n, the previous occurrence itself;
        - ``previous_token``: attention to t - 1.

    Notes
    -----
    Rows have different n, so a head that attends to a fixed offset, which RoPE makes easy,
    matches the induction offset n - 1 in only some rows and cannot score 1.
    """
    if pattern.ndim != 4:
        raise ValueError(f"pattern has shape {tuple(pattern.shape)}; expected (batch, head, query_pos, key_pos)")
    pattern = pattern.float()
    totals = {name: torch.zeros(pattern.shape[1]) for name in ("induction", "duplicate", "previous_token")}
    count = 0
    for row, n in enumerate(repeat_lengths.tolist()):
        queries = torch.arange(n + 1, 2 * n + 1)
        for name, lag in (("induction", n - 1), ("duplicate", n), ("previous_token", 1)):
            totals[name] += pattern[row, :, queries, queries - lag].sum(dim=-1).cpu()
        count += n
    return {name: total / count for name, total in totals.items()}


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


def head_attention_scores(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    repeat_lengths: torch.Tensor,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Compute induction, duplicate-token and previous-token scores of every head.

    Parameters
    ----------
    model : MomentumForCausalLM
        The model.
    tokens, repeat_lengths : torch.Tensor
        Rows and repeat lengths from :func:`repeated_tokens`.
    device : str or torch.device
        Device of the forward pass.

    Returns
    -------
    dict of numpy.ndarray
        ``induction``, ``duplicate``, ``previous_token``, each of shape (layer, head); see
        :func:`attention_scores`.
    """
    per_layer = [attention_scores(pattern, repeat_lengths) for pattern in attention_patterns(model, tokens, device)]
    return {key: torch.stack([scores[key] for scores in per_layer]).numpy() for key in per_layer[0]}


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
        Rows of repeated random tokens for the per-head scores. Their repeat lengths are drawn
        from ``[max(2, m // 2), m]`` with m = (seq_len - 1) // 2.
    write : bool
        Write ``evaluation.json`` into the run directory (atomically).

    Returns
    -------
    dict
        ``step``, ``checkpoint``, ``task``, ``chance_accuracy``, ``eval`` (``loss`` in nats
        per scored token, ``accuracy``, ``tokens``), ``gamma`` (layer × head), and
        ``heads`` with ``induction``, ``duplicate`` and ``previous_token`` scores (layer ×
        head lists), ``repeat_lengths`` and the best induction head.

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
    tokens, lengths = repeated_tokens(induction_batch_size, max_repeat, task.vocab_size, seed=config.seed)
    scores = head_attention_scores(model, tokens, lengths, device)
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
            "repeat_lengths": [int(lengths.min()), int(lengths.max())],
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
