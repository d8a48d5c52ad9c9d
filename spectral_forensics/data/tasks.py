"""Seeded training tasks: induction, multi-query associative recall, multi-hop chains, text.

Every task yields ``(input_ids, labels)`` batches of shape (batch, pos) as int64 tensors.
``labels`` follow the Hugging Face causal-LM convention: ``labels[b, t]`` is the token the model
should predict at position t from positions < t (the model shifts internally), and -100 marks
positions that are not scored. Batch ``step`` of a split depends only on ``(seed, split, step)``
through a fresh :class:`torch.Generator`, so a run can be resumed at any step and every process
of a data-parallel run can build the same global batch and take its own slice.

Nothing here downloads anything: the synthetic tasks draw random tokens and the text task reads
a local file (the bundled Shakespeare corpus by default).
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from spectral_forensics.data.text import read_text

logger = logging.getLogger(__name__)

#: Label value of positions that are not scored (``ignore_index`` of ``cross_entropy``).
IGNORE_INDEX = -100

#: Token 0 starts every synthetic sequence and pads it after the last scored token.
BOS_TOKEN = 0

SPLITS = ("train", "eval")


def step_generator(seed: int, split: str, step: int) -> torch.Generator:
    """Create the random generator of one batch.

    Parameters
    ----------
    seed : int
        Seed of the task (non-negative).
    split : {"train", "eval"}
        Data split. The two splits draw from independent streams.
    step : int
        Batch index within the split (non-negative).

    Returns
    -------
    torch.Generator
        A CPU generator seeded from ``(seed, split, step)`` through
        :class:`numpy.random.SeedSequence`, which mixes the three integers so that
        neighbouring steps get unrelated streams.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not valid; use one of {', '.join(SPLITS)}")
    if step < 0:
        raise ValueError(f"step={step} is negative; batch indices start at 0")
    state = np.random.SeedSequence([seed, SPLITS.index(split), step]).generate_state(1, np.uint64)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]))
    return generator


def _check_int(name: str, value: int, minimum: int, fix: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        message = f"{name}={value!r} is not valid; it must be an integer >= {minimum}"
        raise ValueError(f"{message}; {fix}" if fix else message)


@dataclasses.dataclass(frozen=True)
class Task(ABC):
    """A seeded source of ``(input_ids, labels)`` batches.

    Attributes
    ----------
    name : str
        Registry name of the task (class attribute).
    seq_len : int
        Tokens per sequence.
    vocab_size : int
        Number of token ids; ids are in ``[0, vocab_size)``.
    seed : int
        Seed of the data streams.
    chance_accuracy : float
        Accuracy of the guessing baseline described in the subclass documentation.
    """

    name: ClassVar[str] = ""

    seq_len: int
    vocab_size: int
    seed: int

    def __post_init__(self) -> None:
        _check_int("seq_len", self.seq_len, 2, "a causal language model needs at least 2 tokens")
        _check_int("vocab_size", self.vocab_size, 2)
        _check_int("seed", self.seed, 0)

    @property
    @abstractmethod
    def chance_accuracy(self) -> float: ...

    @abstractmethod
    def _draw(self, generator: torch.Generator, batch_size: int, split: str) -> tuple[torch.Tensor, torch.Tensor]: ...

    def batch(self, step: int, batch_size: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Build batch ``step`` of a split.

        Parameters
        ----------
        step : int
            Batch index (non-negative).
        batch_size : int
            Number of sequences.
        split : {"train", "eval"}
            Data split.

        Returns
        -------
        input_ids, labels : torch.Tensor
            int64 tensors of shape (batch, pos); ``labels`` is -100 where not scored.
        """
        _check_int("batch_size", batch_size, 1)
        generator = step_generator(self.seed, split, step)
        return self._draw(generator, batch_size, split)

    def params(self) -> dict:
        """Return the constructor arguments, enough to rebuild the task with :func:`make_task`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


def _random_permutations(generator: torch.Generator, rows: int, n: int) -> torch.Tensor:
    """Return ``rows`` independent random permutations of ``range(n)``, shape (rows, n)."""
    return torch.rand(rows, n, generator=generator).argsort(dim=1)


@dataclasses.dataclass(frozen=True)
class InductionTask(Task):
    """Copy a random segment at a random lag.

    Layout of one sequence of length T with a segment of ``copy_len`` = m tokens::

        position  0     1 ... s-1   s ... s+m-1   s+m ... d-1   d ... T-1
        token     BOS   filler      segment       filler        segment (again)

    The copy fills the last m positions (d = T - m), and the source start s = d - lag with the
    lag drawn uniformly per example from ``[min_lag, max_lag]``. Segment tokens are distinct
    and never used as filler, so each copied token has exactly one earlier occurrence.
    Scored positions are d+1 … T-1: there the token after the previous occurrence of the
    current token is the target, so an induction head reaches 100 %. The first copied token is
    not scored because nothing announces where the copy starts.

    Because the lag varies, no head that attends to a fixed offset can solve the task;
    ``min_lag == max_lag`` makes the lag fixed, which a one-layer RoPE model learns by position
    alone. Chance accuracy is ``1 / (vocab_size - 1)``, a uniform guess over content tokens.

    Parameters
    ----------
    seq_len : int
        Tokens per sequence (default 64).
    vocab_size : int
        Token ids; 0 is BOS, 1 … vocab_size-1 are content tokens (default 64).
    seed : int
        Data seed.
    copy_len : int or None
        Segment length m >= 2 (default ``seq_len // 4``).
    min_lag, max_lag : int or None
        Range of the distance d - s (defaults ``copy_len`` and ``seq_len - copy_len - 1``,
        the whole range where source and copy do not overlap).
    """

    name: ClassVar[str] = "induction"

    seq_len: int = 64
    vocab_size: int = 64
    seed: int = 0
    copy_len: int | None = None
    min_lag: int | None = None
    max_lag: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        set_ = object.__setattr__
        if self.copy_len is None:
            set_(self, "copy_len", max(2, self.seq_len // 4))
        _check_int("copy_len", self.copy_len, 2, "the first copied token is not scored, so a copy needs 2+ tokens")
        if self.min_lag is None:
            set_(self, "min_lag", self.copy_len)
        if self.max_lag is None:
            set_(self, "max_lag", self.seq_len - self.copy_len - 1)
        longest = self.seq_len - self.copy_len - 1
        if self.min_lag < self.copy_len or self.max_lag > longest or self.min_lag > self.max_lag:
            raise ValueError(
                f"min_lag={self.min_lag}, max_lag={self.max_lag} are not valid for seq_len={self.seq_len} "
                f"and copy_len={self.copy_len}; they need copy_len <= min_lag <= max_lag <= {longest} "
                "(increase seq_len or decrease copy_len)"
            )
        if self.vocab_size - 1 < self.copy_len + 1:
            raise ValueError(
                f"vocab_size={self.vocab_size} is too small for copy_len={self.copy_len}; it must be at "
                f"least copy_len + 2 = {self.copy_len + 2} (BOS, distinct segment tokens, one filler token)"
            )

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / (self.vocab_size - 1)

    def _draw(self, generator, batch_size, split):
        T, m = self.seq_len, self.copy_len
        content = self.vocab_size - 1

        # A random permutation of the content tokens per example: its first m entries are the
        # segment, and filler is drawn from the rest.
        perm = _random_permutations(generator, batch_size, content) + 1
        segment = perm[:, :m]
        filler_index = torch.randint(m, content, (batch_size, T), generator=generator)
        tokens = perm.gather(1, filler_index)
        tokens[:, 0] = BOS_TOKEN

        lag = torch.randint(self.min_lag, self.max_lag + 1, (batch_size,), generator=generator)
        dest = T - m
        offsets = torch.arange(m)
        source_positions = (dest - lag)[:, None] + offsets
        tokens.scatter_(1, source_positions, segment)
        tokens[:, dest:] = segment

        labels = torch.full_like(tokens, IGNORE_INDEX)
        labels[:, dest + 1 :] = tokens[:, dest + 1 :]
        return tokens, labels


@dataclasses.dataclass(frozen=True)
class MQARTask(Task):
    """Multi-query associative recall.

    Layout of one sequence with P pairs and Q queries::

        BOS  k_1 v_1  k_2 v_2 … k_P v_P   q_1 a_1  q_2 a_2 … q_Q a_Q   BOS … (padding)

    Keys are ids ``1 … vocab_size // 2 - 1``, values ids ``vocab_size // 2 … vocab_size - 1``.
    The P keys of a sequence are distinct; values are drawn with replacement. The queries
    q_1 … q_Q are Q distinct keys from the pairs in random order, each followed by its value
    a_i; only the answers a_i are scored. Chance accuracy is ``1 / (number of value ids)``,
    a uniform guess over values.

    Parameters
    ----------
    seq_len : int
        Tokens per sequence (default 64); positions after the last answer are padding.
    vocab_size : int
        Token ids (default 64).
    seed : int
        Data seed.
    num_pairs : int or None
        P (default ``(seq_len - 1) // 4``).
    num_queries : int or None
        Q <= P (default P).
    """

    name: ClassVar[str] = "mqar"

    seq_len: int = 64
    vocab_size: int = 64
    seed: int = 0
    num_pairs: int | None = None
    num_queries: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_pairs is None:
            object.__setattr__(self, "num_pairs", max(1, (self.seq_len - 1) // 4))
        if self.num_queries is None:
            object.__setattr__(self, "num_queries", self.num_pairs)
        _check_int("num_pairs", self.num_pairs, 1)
        _check_int("num_queries", self.num_queries, 1)
        if self.num_queries > self.num_pairs:
            raise ValueError(
                f"num_queries={self.num_queries} exceeds num_pairs={self.num_pairs}; "
                "queries re-present distinct keys, so use num_queries <= num_pairs"
            )
        needed = 1 + 2 * self.num_pairs + 2 * self.num_queries
        if needed > self.seq_len:
            raise ValueError(
                f"seq_len={self.seq_len} is too short for {self.num_pairs} pairs and {self.num_queries} "
                f"queries; it must be at least 1 + 2 * num_pairs + 2 * num_queries = {needed}"
            )
        if self._num_keys < self.num_pairs or self._num_values < 1:
            raise ValueError(
                f"vocab_size={self.vocab_size} gives {self._num_keys} key ids, fewer than "
                f"num_pairs={self.num_pairs}; use vocab_size >= {2 * self.num_pairs + 2}"
            )

    @property
    def _first_value(self) -> int:
        return self.vocab_size // 2

    @property
    def _num_keys(self) -> int:
        return self._first_value - 1

    @property
    def _num_values(self) -> int:
        return self.vocab_size - self._first_value

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / self._num_values

    def _draw(self, generator, batch_size, split):
        P, Q = self.num_pairs, self.num_queries
        keys = _random_permutations(generator, batch_size, self._num_keys)[:, :P] + 1
        values = torch.randint(self._first_value, self.vocab_size, (batch_size, P), generator=generator)
        chosen = _random_permutations(generator, batch_size, P)[:, :Q]

        tokens = torch.full((batch_size, self.seq_len), BOS_TOKEN, dtype=torch.long)
        labels = torch.full_like(tokens, IGNORE_INDEX)
        tokens[:, 1 : 1 + 2 * P : 2] = keys
        tokens[:, 2 : 2 + 2 * P : 2] = values

        start = 1 + 2 * P
        answers = values.gather(1, chosen)
        tokens[:, start : start + 2 * Q : 2] = keys.gather(1, chosen)
        tokens[:, start + 1 : start + 2 * Q : 2] = answers
        labels[:, start + 1 : start + 2 * Q : 2] = answers
        return tokens, labels


@dataclasses.dataclass(frozen=True)
class ChainTask(Task):
    """Follow a chain of ``depth`` hops through shuffled edges.

    Each sequence contains ``num_chains`` = K disjoint chains n_0 → n_1 → … → n_L of depth L,
    written as their K·L edges ``a b`` (one edge = two tokens) in random order::

        BOS  a_1 b_1  a_2 b_2 … a_KL b_KL  QUERY  n_0  n_L  BOS … (padding)

    ``n_0`` is the start of one chain picked at random and the scored answer ``n_L`` is the node
    L hops from it. All K·(L+1) nodes of a sequence are distinct ids from ``2 … vocab_size-1``
    (0 is BOS and padding, 1 is QUERY). Every chain end is a node that appears as a target
    but never as a source, so a model can find the K ends without following edges; chance
    accuracy is therefore ``1 / num_chains``, not one over the number of node ids.

    Parameters
    ----------
    seq_len : int or None
        Tokens per sequence; default and minimum ``2 * K * L + 4``.
    vocab_size : int or None
        Token ids; default and minimum ``K * (L + 1) + 2``, rounded up to a multiple of 8.
    seed : int
        Data seed.
    depth : int
        Number of hops L (default 4).
    num_chains : int
        Number of chains K (default 2; with K = 1 the end is known without hopping).
    """

    name: ClassVar[str] = "chain"

    seq_len: int | None = None
    vocab_size: int | None = None
    seed: int = 0
    depth: int = 4
    num_chains: int = 2

    QUERY_TOKEN: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_int("depth", self.depth, 1)
        _check_int("num_chains", self.num_chains, 1)
        needed_len = 2 * self.num_chains * self.depth + 4
        needed_vocab = self.num_chains * (self.depth + 1) + 2
        if self.seq_len is None:
            object.__setattr__(self, "seq_len", needed_len)
        if self.vocab_size is None:
            object.__setattr__(self, "vocab_size", -(-needed_vocab // 8) * 8)
        super().__post_init__()
        if self.seq_len < needed_len:
            raise ValueError(
                f"seq_len={self.seq_len} is too short for depth={self.depth} and num_chains={self.num_chains}; "
                f"it must be at least 2 * num_chains * depth + 4 = {needed_len}"
            )
        if self.vocab_size < needed_vocab:
            raise ValueError(
                f"vocab_size={self.vocab_size} is too small for depth={self.depth} and "
                f"num_chains={self.num_chains}; distinct nodes need at least "
                f"num_chains * (depth + 1) + 2 = {needed_vocab}"
            )

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / self.num_chains

    def _draw(self, generator, batch_size, split):
        K, L = self.num_chains, self.depth
        num_edges = K * L
        nodes = _random_permutations(generator, batch_size, self.vocab_size - 2)[:, : K * (L + 1)] + 2
        chains = nodes.view(batch_size, K, L + 1)
        sources = chains[:, :, :-1].reshape(batch_size, num_edges)
        targets = chains[:, :, 1:].reshape(batch_size, num_edges)
        order = _random_permutations(generator, batch_size, num_edges)
        picked = torch.randint(0, K, (batch_size, 1), generator=generator)

        tokens = torch.full((batch_size, self.seq_len), BOS_TOKEN, dtype=torch.long)
        tokens[:, 1 : 1 + 2 * num_edges : 2] = sources.gather(1, order)
        tokens[:, 2 : 2 + 2 * num_edges : 2] = targets.gather(1, order)
        query = 1 + 2 * num_edges
        tokens[:, query] = self.QUERY_TOKEN
        tokens[:, query + 1] = chains[:, :, 0].gather(1, picked)[:, 0]
        answer = chains[:, :, L].gather(1, picked)[:, 0]
        tokens[:, query + 2] = answer

        labels = torch.full_like(tokens, IGNORE_INDEX)
        labels[:, query + 2] = answer
        return tokens, labels


@dataclasses.dataclass(frozen=True)
class TextTask(Task):
    """Byte-level language modelling on a text corpus.

    The text is encoded as UTF-8 bytes (token id = byte value, so ``vocab_size`` is 256 and no
    tokenizer is needed). The last ``val_fraction`` of the bytes is the ``eval`` split, the rest
    the ``train`` split. Every batch takes random crops of ``seq_len`` bytes from its split and
    scores every position. Chance accuracy is the share of the most frequent byte in the
    training split, the accuracy of always predicting that byte.

    Parameters
    ----------
    seq_len : int
        Bytes per sequence (default 128).
    vocab_size : int
        Must be 256.
    seed : int
        Data seed.
    text : str or None
        Path of a UTF-8 text file; None reads the bundled Shakespeare corpus.
    val_fraction : float
        Share of the text held out as the ``eval`` split, in (0, 1) (default 0.1).
    """

    name: ClassVar[str] = "text"

    seq_len: int = 128
    vocab_size: int = 256
    seed: int = 0
    text: str | None = None
    val_fraction: float = 0.1
    _data: torch.Tensor = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vocab_size != 256:
            raise ValueError(f"vocab_size={self.vocab_size} is not valid for byte-level text; it must be 256")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction!r} is not valid; it must be in (0, 1)")
        if self.text is not None:
            object.__setattr__(self, "text", str(self.text))
        raw = read_text(self.text).encode("utf-8")
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        object.__setattr__(self, "_data", data)
        for split in SPLITS:
            size = len(self._split_data(split))
            if size <= self.seq_len:
                source = self.text or "the default corpus"
                raise ValueError(
                    f"the {split} split of {source} has {size} bytes, not more than seq_len={self.seq_len}; "
                    "use a longer text, a shorter seq_len or another val_fraction"
                )

    def _split_data(self, split: str) -> torch.Tensor:
        boundary = int(len(self._data) * (1.0 - self.val_fraction))
        return self._data[:boundary] if split == "train" else self._data[boundary:]

    @property
    def chance_accuracy(self) -> float:
        counts = torch.bincount(self._split_data("train").long(), minlength=256)
        return float(counts.max()) / float(counts.sum())

    def _draw(self, generator, batch_size, split):
        data = self._split_data(split)
        starts = torch.randint(0, len(data) - self.seq_len + 1, (batch_size,), generator=generator)
        windows = starts[:, None] + torch.arange(self.seq_len)
        tokens = data[windows].long()
        return tokens, tokens.clone()


TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (InductionTask, MQARTask, ChainTask, TextTask)}


def make_task(name: str, **params) -> Task:
    """Build a task by name.

    Parameters
    ----------
    name : str
        One of ``induction``, ``mqar``, ``chain``, ``text``.
    **params
        Constructor arguments of the task class (``seq_len``, ``vocab_size``, ``seed`` and the
        task-specific ones). A value of None takes the task's default.

    Returns
    -------
    Task

    Raises
    ------
    ValueError
        If the name or a parameter is not valid.
    """
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not known; use one of {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"parameter(s) {', '.join(unknown)} are not valid for task {name!r}; it takes {', '.join(valid)}"
        )
    return cls(**{key: value for key, value in params.items() if value is not None})
