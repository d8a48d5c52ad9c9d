"""Per-head induction, duplicate-token, previous-token and copying scores of a bridge.

The attention scores come from rows of repeated random tokens, ``[BOS, r_1 … r_n, r_1 … r_n]``,
drawn from the model's vocabulary range, so no tokenizer is needed. Attention patterns are read
from the ``blocks.{l}.attn.hook_pattern`` hooks of a TransformerLens 4 ``TransformerBridge``.
The copying score comes from the weights of each head's OV circuit.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "HeadScores",
    "RepeatedTokenBatch",
    "copying_scores",
    "induction_scores",
    "model_vocab_size",
    "repeated_token_batch",
    "special_token_ids",
]

MIN_REPEAT_LENGTH = 3
"""Shortest repeat for which previous-token, induction and duplicate offsets (1, n-1, n) differ."""

# W_U W_E is summed over chunks of this many vocabulary entries, so the float64 product
# never needs a float64 copy of both whole (d_vocab, d_model) matrices.
_VOCAB_CHUNK = 8192


@dataclass(frozen=True)
class RepeatedTokenBatch:
    """Rows of random tokens repeated once, with the positions each score reads.

    Attributes
    ----------
    tokens : torch.Tensor
        Token ids, int64, shape ``(batch, pos)``. Row b is ``[BOS?, r_1 … r_n, r_1 … r_n,
        pad …]`` with n = ``repeat_lengths[b]``.
    repeat_lengths : torch.Tensor
        Repeat length n of each row, int64, shape ``(batch,)``.
    first_start : int
        Position of r_1 in the first copy: 1 with a BOS token, else 0.
    bos_id : int or None
        The BOS token id at position 0, or None.
    second_copy_mask : torch.Tensor
        Boolean ``(batch, pos)``, True at the n positions of the second copy, where the
        induction and duplicate-token scores are read.
    previous_token_mask : torch.Tensor
        Boolean ``(batch, pos)``, True at every position >= 1, where the previous-token score
        is read.
    """

    tokens: torch.Tensor
    repeat_lengths: torch.Tensor
    first_start: int
    bos_id: int | None
    second_copy_mask: torch.Tensor = field(repr=False)
    previous_token_mask: torch.Tensor = field(repr=False)

    def target_positions(self, offset_from_repeat: int) -> torch.Tensor:
        """Return, per position, the key position ``t - n_b + offset_from_repeat``.

        ``offset_from_repeat=1`` gives the induction target (the token after the previous
        occurrence) and 0 the duplicate-token target (the previous occurrence). Positions
        outside the second copy get 0, so read them only through ``second_copy_mask``.
        """
        n_pos = self.tokens.shape[1]
        positions = torch.arange(n_pos).expand(self.tokens.shape[0], n_pos)
        targets = positions - self.repeat_lengths[:, None] + offset_from_repeat
        return torch.where(self.second_copy_mask, targets, torch.zeros_like(targets))


def _check_int(value: Any, name: str, minimum: int) -> int:
    try:
        number = operator.index(value)
    except TypeError as error:
        raise ValueError(f"{name}={value!r} is not an integer.") from error
    if number < minimum:
        raise ValueError(f"{name}={number} is out of range. Use an integer >= {minimum}.")
    return number


def repeated_token_batch(
    vocab_size: int,
    batch: int,
    min_len: int,
    max_len: int,
    seed: int = 0,
    bos_id: int | None = None,
    exclude_ids: Iterable[int] = (),
) -> RepeatedTokenBatch:
    """Draw rows of distinct random tokens that repeat once, with varying repeat lengths.

    Parameters
    ----------
    vocab_size : int
        Token ids are drawn from ``0 … vocab_size - 1``.
    batch : int
        Number of rows, >= 1.
    min_len, max_len : int
        Range of the repeat length n, drawn uniformly per row from
        ``min_len … max_len`` (both included), with 3 <= min_len <= max_len.
    seed : int, optional
        Seed of the torch generator that draws lengths and tokens. Default 0.
    bos_id : int, optional
        Token put at position 0 of every row and never drawn as a random token. Default: no
        BOS token.
    exclude_ids : iterable of int, optional
        Further ids that are never drawn, for example EOS and padding ids.

    Returns
    -------
    RepeatedTokenBatch
        Tokens of shape ``(batch, first_start + 2 · max(n))`` with the scored positions.

    Raises
    ------
    ValueError
        If an argument is out of range, or the vocabulary has fewer than ``max_len`` ids
        left after the exclusions.

    Notes
    -----
    Row b is ``[BOS?, r_1 … r_n, r_1 … r_n, pad_1 … pad_k]`` with n = n_b, the r_i distinct
    and k = 2 (max_b n_b - n_b). The padding tokens are fresh random draws and may equal some
    r_i. They come after every scored position, so causal attention at a scored position
    never reaches them. At a position t of the second copy, the previous occurrence of its token
    is t - n (duplicate-token target) and the token after it is t - n + 1 (induction target).

    The repeat length varies within the batch because with a single length n, a head that
    attends n - 1 tokens back by position alone (a RoPE or learned-position head) would get
    a perfect induction score without matching any token. Varying n leaves only heads that
    find the previous occurrence by content. With n >= 3 the three targets t - 1
    (previous token), t - n + 1 and t - n are distinct.

    Examples
    --------
    >>> rows = repeated_token_batch(50, batch=2, min_len=3, max_len=5, seed=1, bos_id=0)
    >>> row, n = rows.tokens[0], int(rows.repeat_lengths[0])
    >>> bool((row[1:1 + n] == row[1 + n:1 + 2 * n]).all())
    True
    """
    vocab_size = _check_int(vocab_size, "vocab_size", 1)
    batch = _check_int(batch, "batch", 1)
    min_len = _check_int(min_len, "min_len", MIN_REPEAT_LENGTH)
    max_len = _check_int(max_len, "max_len", MIN_REPEAT_LENGTH)
    if max_len < min_len:
        raise ValueError(
            f"max_len={max_len} is smaller than min_len={min_len}. Use min_len <= max_len."
        )
    excluded = {_check_int(i, "exclude_ids entry", 0) for i in exclude_ids}
    if bos_id is not None:
        bos_id = _check_int(bos_id, "bos_id", 0)
        if bos_id >= vocab_size:
            raise ValueError(
                f"bos_id={bos_id} is out of range for vocab_size={vocab_size}. Use an id in "
                f"[0, {vocab_size - 1}] or None."
            )
        excluded.add(bos_id)

    allowed_mask = torch.ones(vocab_size, dtype=torch.bool)
    in_range = [i for i in excluded if i < vocab_size]
    allowed_mask[in_range] = False
    allowed = torch.nonzero(allowed_mask).flatten()
    if allowed.numel() < max_len:
        raise ValueError(
            f"vocab_size={vocab_size} leaves {allowed.numel()} token ids after excluding "
            f"{len(in_range)} special id(s), but a repeat of max_len={max_len} needs "
            f"{max_len} distinct tokens. Lower max_len to at most {allowed.numel()}, or score "
            "a model with a larger vocabulary."
        )

    generator = torch.Generator().manual_seed(int(seed))
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=generator)
    longest = int(lengths.max())
    first_start = 0 if bos_id is None else 1
    n_pos = first_start + 2 * longest
    tokens = torch.empty((batch, n_pos), dtype=torch.int64)
    for row, n in enumerate(lengths.tolist()):
        repeat = allowed[torch.randperm(allowed.numel(), generator=generator)[:n]]
        n_pad = 2 * (longest - n)
        pad = allowed[torch.randint(allowed.numel(), (n_pad,), generator=generator)]
        pieces = [repeat, repeat, pad]
        if bos_id is not None:
            pieces.insert(0, torch.tensor([bos_id]))
        tokens[row] = torch.cat(pieces)

    positions = torch.arange(n_pos).expand(batch, n_pos)
    second_start = first_start + lengths[:, None]
    second_copy = (positions >= second_start) & (positions < second_start + lengths[:, None])
    return RepeatedTokenBatch(
        tokens=tokens,
        repeat_lengths=lengths,
        first_start=first_start,
        bos_id=bos_id,
        second_copy_mask=second_copy,
        previous_token_mask=positions >= 1,
    )


@dataclass(frozen=True)
class HeadScores:
    """Attention and OV-circuit scores of every head of the scored layers.

    Attributes
    ----------
    layers : tuple of int
        Scored layers. Row i of every array belongs to layer ``layers[i]``.
    induction, duplicate_token, previous_token : numpy.ndarray
        Mean attention to the induction target (n - 1 back), to the previous occurrence
        (n back) and to the previous token, shape ``(len(layers), n_heads)``, in [0, 1].
    copying : numpy.ndarray
        Σ Re λ / Σ |λ| over the eigenvalues λ of each head's OV circuit, shape
        ``(len(layers), n_heads)``, in [-1, 1], and NaN for a head whose OV circuit is zero.
    settings : dict
        How the scores were computed: token batch, seed, BOS id, norms.
    """

    layers: tuple[int, ...]
    induction: np.ndarray
    duplicate_token: np.ndarray
    previous_token: np.ndarray
    copying: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_heads(self) -> int:
        """Query heads per layer."""
        return int(self.induction.shape[1])

    def records(self) -> list[dict[str, Any]]:
        """Return one dict per (layer, head) with the four scores, as Python floats."""
        out = []
        for row, layer in enumerate(self.layers):
            for head in range(self.n_heads):
                out.append(
                    {
                        "layer": int(layer),
                        "head": head,
                        "induction": float(self.induction[row, head]),
                        "duplicate_token": float(self.duplicate_token[row, head]),
                        "previous_token": float(self.previous_token[row, head]),
                        "copying": float(self.copying[row, head]),
                    }
                )
        return out


def _hf_config(bridge: Any) -> Any:
    model = getattr(bridge, "original_model", None)
    return getattr(model, "config", None)


def model_vocab_size(bridge: Any) -> int:
    """Return the number of token ids the bridge's embedding accepts.

    ``bridge.cfg.d_vocab`` when it is set, else ``vocab_size`` of the Hugging Face config.
    """
    d_vocab = getattr(getattr(bridge, "cfg", None), "d_vocab", None)
    if isinstance(d_vocab, int) and d_vocab > 0:
        return d_vocab
    vocab = getattr(_hf_config(bridge), "vocab_size", None)
    if isinstance(vocab, int) and vocab > 0:
        return vocab
    raise ValueError(
        "The bridge has neither cfg.d_vocab nor a Hugging Face config with vocab_size, so the "
        "range of token ids is unknown. Pass a TransformerBridge over a causal LM."
    )


def special_token_ids(bridge: Any) -> list[int]:
    """Return the BOS, EOS and padding ids of the Hugging Face config that are in range."""
    config = _hf_config(bridge)
    vocab_size = model_vocab_size(bridge)
    found: set[int] = set()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        found.update(v for v in values if isinstance(v, int) and 0 <= v < vocab_size)
    return sorted(found)


def _resolve_bos(bridge: Any, bos_id: int | str | None) -> int | None:
    if bos_id != "model":
        return bos_id  # type: ignore[return-value]
    config_bos = getattr(_hf_config(bridge), "bos_token_id", None)
    if isinstance(config_bos, (list, tuple)):
        config_bos = config_bos[0] if config_bos else None
    if config_bos is None:
        return None
    vocab_size = model_vocab_size(bridge)
    if not 0 <= config_bos < vocab_size:
        raise ValueError(
            f"The model config has bos_token_id={config_bos}, outside its vocabulary of "
            f"{vocab_size} ids. Pass bos_id=None (no BOS) or an id in [0, {vocab_size - 1}]."
        )
    return int(config_bos)


def _resolve_layers(bridge: Any, layers: Sequence[int] | None) -> tuple[int, ...]:
    n_layers = int(bridge.cfg.n_layers)
    if layers is None:
        return tuple(range(n_layers))
    resolved = []
    for layer in layers:
        index = _check_int(layer, "layers entry", -n_layers)
        if index >= n_layers:
            raise ValueError(
                f"layers contains {index}, but the model has {n_layers} layers. Use indices in "
                f"[0, {n_layers - 1}]."
            )
        resolved.append(index % n_layers)
    if len(set(resolved)) != len(resolved) or not resolved:
        raise ValueError(f"layers={list(layers)!r} is empty or repeats a layer.")
    return tuple(resolved)


class _PatternScorer:
    """Forward hooks on ``hook_pattern`` that sum attention at the target positions."""

    def __init__(self, layers: tuple[int, ...], n_heads: int) -> None:
        self.layers = layers
        self.n_heads = n_heads
        kinds = ("induction", "duplicate", "previous")
        self.sums = {kind: np.zeros((len(layers), n_heads)) for kind in kinds}
        self.fire_counts = dict.fromkeys(layers, 0)
        self.rows: RepeatedTokenBatch | None = None

    def hooks(self) -> list[tuple[str, Any]]:
        return [
            (f"blocks.{layer}.attn.hook_pattern", self._hook(row))
            for row, layer in enumerate(self.layers)
        ]

    def _hook(self, row: int) -> Any:
        layer = self.layers[row]

        def score(pattern: torch.Tensor, hook: Any) -> None:
            rows = self.rows
            assert rows is not None
            n_rows, n_pos = rows.tokens.shape
            expected = (n_rows, self.n_heads, n_pos, n_pos)
            if tuple(pattern.shape) != expected:
                raise RuntimeError(
                    f"{hook.name} returned a pattern of shape {tuple(pattern.shape)}, expected "
                    f"(batch, head, query_pos, key_pos) = {expected}. This attention bridge does "
                    "not expose per-head attention probabilities at hook_pattern."
                )
            self.fire_counts[layer] += 1
            probabilities = pattern.detach().to(torch.float64).cpu()
            previous = torch.arange(n_pos).clamp(min=1) - 1
            targets = {
                "induction": (rows.target_positions(1), rows.second_copy_mask),
                "duplicate": (rows.target_positions(0), rows.second_copy_mask),
                "previous": (previous.expand_as(rows.tokens), rows.previous_token_mask),
            }
            for kind, (key_pos, mask) in targets.items():
                index = key_pos[:, None, :, None].expand(-1, self.n_heads, -1, 1)
                attention = probabilities.gather(-1, index).squeeze(-1)  # (batch, head, pos)
                total = (attention * mask[:, None, :]).sum(dim=(0, 2))
                self.sums[kind][row] += total.numpy()

        return score


def induction_scores(
    bridge: Any,
    layers: Sequence[int] | None = None,
    *,
    batch: int = 32,
    min_len: int = 8,
    max_len: int = 24,
    seed: int = 0,
    bos_id: int | str | None = "model",
    exclude_ids: Iterable[int] | None = None,
    token_batch: RepeatedTokenBatch | None = None,
    chunk_size: int = 16,
    include_norms: bool = True,
    progress: bool = False,
) -> HeadScores:
    """Score every head of a bridge on repeated random tokens and on its OV circuit.

    Parameters
    ----------
    bridge : transformer_lens.model_bridge.TransformerBridge
        The model. No tokenizer is needed.
    layers : sequence of int, optional
        Layers to score. Default: all.
    batch : int, optional
        Number of token rows. Default 32.
    min_len, max_len : int, optional
        Range of the repeat length n (tokens), 3 <= min_len <= max_len. Default 8 and 24. Rows
        are ``first_start + 2 · max(n)`` tokens long, which must fit ``bridge.cfg.n_ctx``.
    seed : int, optional
        Seed of the token draw. Default 0.
    bos_id : int, "model" or None, optional
        Token at position 0. ``"model"`` (default) takes ``bos_token_id`` of the Hugging Face
        config, or no BOS token when the config has none. None puts no BOS token.
    exclude_ids : iterable of int, optional
        Ids never drawn as random tokens. Default: the config's BOS, EOS and padding ids.
    token_batch : RepeatedTokenBatch, optional
        Score these rows instead of drawing new ones. Then ``batch``, ``min_len``, ``max_len``,
        ``seed``, ``bos_id`` and ``exclude_ids`` are then ignored.
    chunk_size : int, optional
        Rows per forward pass. Default 16.
    include_norms : bool, optional
        Include the gains (and LayerNorm centring) of ``ln1`` and ``ln_final`` in the
        copying score, as described in :func:`copying_scores`. Default True.
    progress : bool, optional
        Show a tqdm bar over the forward passes. Default False.

    Returns
    -------
    HeadScores
        Induction, duplicate-token, previous-token and copying score per head.

    Raises
    ------
    ValueError
        If an argument is out of range, the vocabulary is too small for ``max_len`` or the rows
        do not fit the context.
    RuntimeError
        If ``blocks.{l}.attn.hook_pattern`` does not fire for a scored layer or has an
        unexpected shape.

    Notes
    -----
    With A^{(l,h)}_b[t, s] the attention probability from query t to key s in row b, S_2 the
    positions of the second copies and n_b the repeat length of row b,

        induction       = mean_{(b, t) in S_2} A_b[t, t - n_b + 1]
        duplicate_token = mean_{(b, t) in S_2} A_b[t, t - n_b]
        previous_token  = mean_{(b, t), t >= 1} A_b[t, t - 1]

    Each mean pools all scored (row, position) pairs, so a row of repeat length n weighs n.
    The previous-token mean runs over every position >= 1, padding included. The repeat
    length varies across rows (see :func:`repeated_token_batch`), so a head that looks a
    fixed number of tokens back scores low unless it matches tokens.

    ``transformer_lens.head_detector.detect_head`` (TransformerLens 4.3) with
    ``error_measure="mul"`` divides the same sums by the number of query rows of the whole
    sequence, because its attention pattern sums to 1 per row, instead of by the number of
    scored positions. For rows of one length L and one repeat length n without padding,

        detect_head = induction · n / L            (the same for duplicate_token)
        detect_head = previous_token · (L - 1) / L

    Other differences: it needs a tokenizer (``to_tokens`` on strings), runs one sequence per
    forward pass and averages over a list, and marks every repeated token pair, so repeated
    padding tokens would add targets. With ``exclude_bos`` or ``exclude_current_token`` its
    denominator changes per head, and no fixed factor relates the two scores.
    """
    chunk_size = _check_int(chunk_size, "chunk_size", 1)
    scored_layers = _resolve_layers(bridge, layers)
    vocab_size = model_vocab_size(bridge)
    n_ctx = getattr(bridge.cfg, "n_ctx", None)
    drawn = token_batch is None
    if token_batch is None:
        bos = _resolve_bos(bridge, bos_id)
        first_start = 0 if bos is None else 1
        longest_row = first_start + 2 * max_len
        if isinstance(n_ctx, int) and longest_row > n_ctx:
            raise ValueError(
                f"max_len={max_len} allows rows of {longest_row} tokens, longer than the "
                f"model's context n_ctx={n_ctx}. Lower max_len to at most "
                f"{(n_ctx - first_start) // 2}."
            )
        excluded = special_token_ids(bridge) if exclude_ids is None else list(exclude_ids)
        token_batch = repeated_token_batch(
            vocab_size, batch, min_len, max_len, seed=seed, bos_id=bos, exclude_ids=excluded
        )
    tokens = token_batch.tokens
    if int(tokens.max()) >= vocab_size:
        raise ValueError(
            f"token_batch contains id {int(tokens.max())}, outside the model's vocabulary of "
            f"{vocab_size} ids. Draw the rows with vocab_size={vocab_size}."
        )
    if isinstance(n_ctx, int) and tokens.shape[1] > n_ctx:
        raise ValueError(
            f"token_batch has rows of {tokens.shape[1]} tokens, longer than the model's "
            f"context n_ctx={n_ctx}. Draw it with max_len at most "
            f"{(n_ctx - token_batch.first_start) // 2}."
        )

    n_heads = int(bridge.cfg.n_heads)
    scorer = _PatternScorer(scored_layers, n_heads)
    device = next(bridge.parameters()).device
    starts = range(0, tokens.shape[0], chunk_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="induction scores", disable=not progress):
            chunk = _slice_rows(token_batch, start, start + chunk_size)
            scorer.rows = chunk
            before = dict(scorer.fire_counts)
            # The scores read attention patterns only, so the pass stops after the last scored
            # block and skips the unembedding.
            bridge.run_with_hooks(
                chunk.tokens.to(device), fwd_hooks=scorer.hooks(), return_type=None,
                stop_at_layer=max(scored_layers) + 1,
            )
            fired = {layer: scorer.fire_counts[layer] - before[layer] for layer in scored_layers}
            silent = [layer for layer, count in fired.items() if count == 0]
            repeated = {layer: count for layer, count in fired.items() if count > 1}
            if repeated:
                raise RuntimeError(
                    f"hook_pattern fired more than once in one forward pass (layer: count "
                    f"{repeated}), so each pattern would be counted several times. This "
                    "attention bridge is not supported."
                )
            if silent:
                names = ", ".join(f"blocks.{layer}.attn.hook_pattern" for layer in silent)
                raise RuntimeError(
                    f"{names} did not fire during the forward pass, so no attention pattern "
                    "was recorded. This attention bridge does not run the pattern hook (the "
                    "GPT-J bridge of TransformerLens 4.3.0 is one), so its heads cannot be "
                    "scored."
                )

    second_count = int(token_batch.second_copy_mask.sum())
    previous_count = int(token_batch.previous_token_mask.sum())
    copying = copying_scores(bridge, scored_layers, include_norms=include_norms)
    lengths = token_batch.repeat_lengths
    settings = {
        "batch": int(tokens.shape[0]),
        "min_len": int(lengths.min()),
        "max_len": int(lengths.max()),
        "distinct_repeat_lengths": sorted(set(lengths.tolist())),
        "seed": seed if drawn else None,
        "bos_id": token_batch.bos_id,
        "vocab_size": vocab_size,
        "include_norms": include_norms,
        "copying_weights": "bridge W_E, W_U and blocks[l].attn.W_V / W_O",
    }
    logger.info(
        "Scored %d layers x %d heads on %d rows (repeat lengths %d-%d)",
        len(scored_layers),
        n_heads,
        tokens.shape[0],
        settings["min_len"],
        settings["max_len"],
    )
    return HeadScores(
        layers=scored_layers,
        induction=scorer.sums["induction"] / second_count,
        duplicate_token=scorer.sums["duplicate"] / second_count,
        previous_token=scorer.sums["previous"] / previous_count,
        copying=copying,
        settings=settings,
    )


def _slice_rows(rows: RepeatedTokenBatch, start: int, stop: int) -> RepeatedTokenBatch:
    return RepeatedTokenBatch(
        tokens=rows.tokens[start:stop],
        repeat_lengths=rows.repeat_lengths[start:stop],
        first_start=rows.first_start,
        bos_id=rows.bos_id,
        second_copy_mask=rows.second_copy_mask[start:stop],
        previous_token_mask=rows.previous_token_mask[start:stop],
    )


def _norm_map(norm: Any, d_model: int) -> torch.Tensor | None:
    """Return the linear part of a normalisation layer as a (d_model, d_model) float64 matrix.

    For row vectors x the map is x ↦ x C diag(g): C = I - 11ᵀ/d_model centres a LayerNorm
    input (identity for RMSNorm) and g is the gain (1 + weight for offset-style weights).
    None when there is no normalisation layer.
    """
    if norm is None:
        return None
    weight = getattr(norm, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.numel() == d_model:
        gain = weight.detach().to(torch.float64).cpu().reshape(-1)
        if getattr(norm, "uses_weight_offset", False):
            gain = gain + 1.0
    else:
        gain = torch.ones(d_model, dtype=torch.float64)
    linear = torch.diag(gain)
    if not getattr(norm, "uses_rms_norm", True):
        centring = torch.eye(d_model, dtype=torch.float64) - 1.0 / d_model
        linear = centring @ linear
    return linear


def _unembed_embed_product(w_u: torch.Tensor, w_e: torch.Tensor) -> torch.Tensor:
    """Return W_U W_E as a float64 (d_model, d_model) matrix, summed over vocabulary chunks."""
    product = torch.zeros((w_u.shape[0], w_e.shape[1]), dtype=torch.float64)
    for start in range(0, w_e.shape[0], _VOCAB_CHUNK):
        u_chunk = w_u[:, start : start + _VOCAB_CHUNK].detach().to(torch.float64).cpu()
        e_chunk = w_e[start : start + _VOCAB_CHUNK].detach().to(torch.float64).cpu()
        product += u_chunk @ e_chunk
    return product


def copying_scores(
    bridge: Any, layers: Sequence[int] | None = None, *, include_norms: bool = True
) -> np.ndarray:
    """Compute the copying score of every head from the eigenvalues of its OV circuit.

    Parameters
    ----------
    bridge : transformer_lens.model_bridge.TransformerBridge
        The model. Weights are read through the bridge accessors ``bridge.W_E``,
        ``bridge.W_U``, ``bridge.blocks[l].attn.W_V`` and ``.W_O``, and the norms
        ``bridge.blocks[l].ln1`` and ``bridge.ln_final``.
    layers : sequence of int, optional
        Layers to score. Default: all.
    include_norms : bool, optional
        Insert the linear part of ``ln1`` (before W_V) and ``ln_final`` (before W_U): their
        gains, and the centring of a LayerNorm. Default True.

    Returns
    -------
    numpy.ndarray
        Copying score in [-1, 1], shape ``(len(layers), n_heads)``, NaN where all eigenvalues
        are 0 (a head whose OV circuit is zero).

    Notes
    -----
    The full OV circuit of head h maps a token to logits, a (d_vocab, d_vocab) matrix in the
    row-vector convention of TransformerLens:

        M_h = W_E N_1 W_V^{(g)} W_O^{(h)} N_f W_U,    copying = Σ_i Re λ_i / Σ_i |λ_i|

    over the eigenvalues λ_i of M_h, after Olsson et al. (2022), "In-context Learning and
    Induction Heads". g = h // (n_heads / n_kv_heads) is the key/value head that query head h
    reads under grouped-query attention. N_1 and N_f are the linear parts of the norms,
    x ↦ x C diag(gain) with C = I - 11ᵀ/d_model for LayerNorm and C = I for RMSNorm, or the
    identity with ``include_norms=False``. The division by the RMS (or standard deviation)
    is a positive factor per token. It is left out, like the biases, so M_h is the circuit
    that ``fold_ln`` would leave in the weights.

    The nonzero eigenvalues of AB equal those of BA, so the eigenvalues come from the
    (d_head, d_head) matrix

        K_h = W_O^{(h)} (N_f W_U W_E N_1) W_V^{(g)}

    and W_U W_E is formed once, in float64 and in vocabulary chunks, so the cost does not grow
    with d_vocab beyond that one product. A positive embedding scale (as in Gemma) scales
    every λ alike and does not change the score.
    """
    scored_layers = _resolve_layers(bridge, layers)
    w_e = bridge.W_E
    w_u = bridge.W_U
    d_model = int(w_e.shape[1])
    circuit = _unembed_embed_product(w_u, w_e)
    if include_norms:
        final_norm = _norm_map(getattr(bridge, "ln_final", None), d_model)
        if final_norm is not None:
            circuit = final_norm @ circuit

    n_heads = int(bridge.cfg.n_heads)
    scores = np.full((len(scored_layers), n_heads), np.nan)
    for row, layer in enumerate(scored_layers):
        block = bridge.blocks[layer]
        w_v = block.attn.W_V.detach().to(torch.float64).cpu()
        w_o = block.attn.W_O.detach().to(torch.float64).cpu()
        if w_o.shape[0] != n_heads or n_heads % w_v.shape[0]:
            raise RuntimeError(
                f"blocks.{layer}.attn has W_V of shape {tuple(w_v.shape)} and W_O of shape "
                f"{tuple(w_o.shape)}, but the expected shapes are (n_kv_heads, d_model, "
                f"d_head) and (n_heads={n_heads}, d_head, d_model) with n_heads a multiple of "
                "n_kv_heads."
            )
        layer_circuit = circuit
        if include_norms:
            attention_norm = _norm_map(getattr(block, "ln1", None), d_model)
            if attention_norm is not None:
                layer_circuit = circuit @ attention_norm
        group = n_heads // w_v.shape[0]
        for head in range(n_heads):
            reduced = w_o[head] @ layer_circuit @ w_v[head // group]
            eigenvalues = torch.linalg.eigvals(reduced)
            magnitude = float(eigenvalues.abs().sum())
            if magnitude > 0 and math.isfinite(magnitude):
                scores[row, head] = float(eigenvalues.real.sum()) / magnitude
    return scores
