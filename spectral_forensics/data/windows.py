"""Tokenise a text once and cut it into fixed-length windows of token ids."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


# Characters per token assumed for the first attempt at tokenising only a prefix; English BPE
# averages about 4, so the first attempt nearly always suffices.
_CHARS_PER_TOKEN = 6


def _tokenize_prefix(text: str, tokenizer, n_tokens: int | None) -> list[int]:
    """Token ids of a prefix of ``text`` holding at least ``n_tokens`` tokens (all of it for None).

    Tokenising a whole corpus (the default Shakespeare text has 5 million characters) costs
    seconds, so only a prefix is tokenised, doubled until it contains enough tokens. The last
    token of a cut prefix may be split differently from the whole text, so one token is
    dropped at every cut.
    """
    if n_tokens is None:
        return tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    length = n_tokens * _CHARS_PER_TOKEN + 1000
    while True:
        ids = tokenizer(text[:length], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        if length >= len(text):
            return ids
        if len(ids) > n_tokens:
            return ids[:-1]
        length *= 2


def tokenize_windows(
    text: str,
    tokenizer,
    window: int,
    n_tokens: int | None = None,
    *,
    source: str = "text",
    min_tokens: int | None = None,
) -> torch.Tensor:
    """Tokenise ``text`` and return consecutive windows of ``window`` token ids.

    Parameters
    ----------
    text : str
        The text to analyse.
    tokenizer : transformers.PreTrainedTokenizerBase
        Tokenizer of the model.
    window : int
        Tokens per window (the context length of each forward pass), at least 2.
    n_tokens : int, optional
        Tokens to keep from the start of the text, rounded down to whole windows; all whole
        windows when omitted.
    source : str
        Name of the text for error messages (a file path or the default corpus).
    min_tokens : int, optional
        Raise when fewer tokens than this remain (defaults to one window).

    Returns
    -------
    torch.Tensor
        Token ids of shape ``(n_windows, window)``, dtype int64. Every window starts at
        position 0 of its own forward pass; no BOS token is inserted.

    Raises
    ------
    ValueError
        ``window`` below 2, ``n_tokens`` below ``window``, or a text shorter than one window.
    """
    if window < 2:
        raise ValueError(f"window={window} is too small; use at least 2 tokens per window")
    if n_tokens is not None and n_tokens < window:
        raise ValueError(
            f"tokens={n_tokens} is less than one window of {window} tokens; raise --tokens or "
            "lower --window"
        )
    ids = _tokenize_prefix(text, tokenizer, None if n_tokens is None else max(n_tokens, min_tokens or 0))
    available = len(ids)
    needed = max(window, min_tokens or 0)
    if available < needed:
        raise ValueError(
            f"The {source} has {available} tokens, fewer than the {needed} needed (window={window}"
            f"{'' if min_tokens is None else f', min_tokens={min_tokens}'}). Use a longer text or a "
            "smaller --window."
        )
    if n_tokens is not None and n_tokens > available:
        log.warning(
            "The %s has %d tokens, fewer than the %d requested; analysing %d",
            source,
            available,
            n_tokens,
            available - available % window,
        )
    limit = available if n_tokens is None else min(n_tokens, available)
    n_windows = limit // window
    return torch.tensor(ids[: n_windows * window], dtype=torch.long).view(n_windows, window)
