"""Train Momentum Attention models on the seeded tasks, resumable and data-parallel.

A run lives in one directory::

    RUN_DIR/
        train_config.json                  the TrainConfig, with task defaults filled in
        metrics.jsonl                      one JSON object per line: train and eval records
        checkpoints/step-00001000/         config.json, model.safetensors, trainer_state.pt
        config.json, model.safetensors     copies of the newest checkpoint's model, so the run
                                           directory loads with from_pretrained(RUN_DIR)

A train record ``{"step", "split": "train", "loss", "accuracy", "lr", "grad_norm"}`` describes
the batch of update ``step`` (1-based), measured before that update. An eval record
``{"step", "split": "eval", "loss", "accuracy", "tokens", "elapsed_s"}`` describes the model after
``step`` updates (step 0 is the initial model), and ``elapsed_s`` is the wall time since this
``train`` call started. Losses are cross-entropies in nats per scored token.

``train_config.json`` and checkpoints are written atomically (a temporary file or directory
next to the target, then ``os.replace``), so a killed run leaves either the previous checkpoint
or the new one. ``metrics.jsonl`` is appended line by line; resuming drops the records after the
checkpoint and any partial last line. Batch ``i`` depends only on ``(seed, i)``, and the
optimizer, scheduler and random states are checkpointed, so ``train(config, resume=True)``
continues a killed run with the same losses an uninterrupted run would have logged.

Under ``torchrun`` (environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) the run
uses DistributedDataParallel: every process builds the same global batch and trains on its
slice of ``batch_size / WORLD_SIZE`` sequences, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from spectral_forensics.data.tasks import IGNORE_INDEX, TASKS, Task, make_task
from spectral_forensics.momentum.modeling import PLACEMENTS, MomentumConfig, MomentumForCausalLM

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.pt"
DTYPES = {"fp32": None, "bf16": torch.bfloat16}

# Fields that may change between a run and its resumption: they do not change the losses.
# ``steps`` changes the learning-rate schedule from the resumed step on, which is the point of
# extending a run.
_RESUMABLE_CHANGES = frozenset(
    {"out_dir", "steps", "eval_every", "log_every", "checkpoint_every", "device", "dtype"}
)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every setting of a training run; saved as ``train_config.json`` in the run directory.

    Task
        ``task`` (induction, mqar, chain, text), ``seq_len`` and ``vocab_size`` (None = the
        task's default), ``depth`` (hops of the chain task), ``text`` (UTF-8 file of the text
        task; None = bundled Shakespeare), ``task_options`` (other task parameters such as
        ``copy_len``, ``min_lag``, ``max_lag``, ``num_pairs``, ``num_chains``).
    Model
        ``layers``, ``d_model``, ``heads``, ``kv_heads`` (None = ``heads``), ``d_mlp``
        (None = 4 * d_model), ``attn_only``, ``gamma`` (γ >= 0: a float, one per layer or one
        per layer and head), ``learn_gamma``, ``placement`` (post_rope, pre_rope, none),
        ``smear_keys`` (learned previous-key mixing before RoPE), ``rope_theta``.
    Optimisation
        AdamW with ``lr``, ``weight_decay`` (on matrices only) and ``betas``; linear warm-up
        over ``warmup_steps`` (None = min(100, steps // 10)) then cosine decay to
        ``min_lr_ratio * lr`` at ``steps``; gradient norm clipped to ``grad_clip``
        (0 disables). ``batch_size`` is the global batch, split across processes.
    Evaluation and output
        Evaluation on ``eval_batches`` fixed batches of ``eval_batch_size`` (None =
        batch_size) every ``eval_every`` steps; a train record every ``log_every`` steps; a
        checkpoint every ``checkpoint_every`` steps (None = eval_every) and at the end.
    Hardware
        ``device`` ("cpu", "cuda", "cuda:N"), ``dtype`` ("fp32", or "bf16" autocast).
    """

    out_dir: str = "runs/run"

    task: str = "induction"
    seq_len: int | None = None
    vocab_size: int | None = None
    depth: int | None = None
    text: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)

    layers: int = 1
    d_model: int = 64
    heads: int = 4
    kv_heads: int | None = None
    d_mlp: int | None = None
    attn_only: bool = False
    gamma: float | list = 0.0
    learn_gamma: bool = False
    placement: str = "post_rope"
    smear_keys: bool = False
    rope_theta: float = 10000.0

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0

    eval_every: int = 100
    eval_batches: int = 4
    eval_batch_size: int | None = None
    log_every: int = 10
    checkpoint_every: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "fp32"

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field, its value and the valid range."""
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not known; use one of {', '.join(sorted(TASKS))}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement={self.placement!r} is not valid; use one of {', '.join(PLACEMENTS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not valid; use one of {', '.join(DTYPES)}")
        if self.learn_gamma and self.placement == "none":
            raise ValueError("learn_gamma=True has no effect with placement='none'; choose post_rope or pre_rope")
        _check_gamma(self.gamma)

        positive = ("layers", "d_model", "heads", "steps", "batch_size", "eval_every", "eval_batches", "log_every")
        for name in positive:
            _check_integer(name, getattr(self, name), 1)
        for name in ("kv_heads", "d_mlp", "eval_batch_size", "checkpoint_every"):
            if getattr(self, name) is not None:
                _check_integer(name, getattr(self, name), 1)

        if self.warmup_steps is not None:
            _check_integer("warmup_steps", self.warmup_steps, 0)
        _check_integer("seed", self.seed, 0)
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 2):
            raise ValueError(
                f"seq_len={self.seq_len!r} is not valid; a causal language model needs a sequence "
                "length of at least 2"
            )

        for name, low, high in (("lr", 0.0, math.inf), ("min_lr_ratio", 0.0, 1.0), ("weight_decay", 0.0, math.inf),
                                ("grad_clip", 0.0, math.inf), ("rope_theta", 1.0, math.inf)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
                raise ValueError(f"{name}={value!r} is not valid; it must be a finite number in [{low}, {high}]")
        if self.lr == 0:
            raise ValueError("lr=0 is not valid; the learning rate must be positive")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas={self.betas!r} is not valid; give two numbers in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict."""
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def _check_integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not valid; it must be an integer >= {minimum}")


def _check_gamma(gamma: Any) -> None:
    """Reject negative, NaN and infinite momentum couplings at any nesting level."""
    values = gamma if isinstance(gamma, (list, tuple)) else [gamma]
    for value in values:
        if isinstance(value, (list, tuple)):
            _check_gamma(list(value))
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"gamma={value!r} is not valid; the momentum coupling must be a finite number >= 0 "
                "(0 turns the shear off)"
            )


def build_task(config: TrainConfig) -> Task:
    """Build the task a config describes (seeded with ``config.seed``)."""
    params = dict(config.task_options)
    params.update(seq_len=config.seq_len, vocab_size=config.vocab_size, seed=config.seed)
    if config.depth is not None:
        if config.task != "chain":
            raise ValueError(f"depth={config.depth} only applies to the chain task, not task={config.task!r}")
        params["depth"] = config.depth
    if config.text is not None:
        if config.task != "text":
            raise ValueError(f"text={config.text!r} only applies to the text task, not task={config.task!r}")
        params["text"] = config.text
    return make_task(config.task, **params)


def resolve_config(config: TrainConfig, task: Task) -> TrainConfig:
    """Return a copy with the task's sequence length and vocabulary filled in."""
    return dataclasses.replace(config, seq_len=task.seq_len, vocab_size=task.vocab_size)


def build_model(config: TrainConfig) -> MomentumForCausalLM:
    """Create a freshly initialised model (seeded with ``config.seed``) from a resolved config."""
    model_config = MomentumConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        intermediate_size=config.d_mlp,
        max_position_embeddings=config.seq_len,
        rope_theta=config.rope_theta,
        attention_only=config.attn_only,
        gamma=config.gamma,
        learn_gamma=config.learn_gamma,
        placement=config.placement,
        smear_keys=config.smear_keys,
    )
    torch.manual_seed(config.seed)
    return MomentumForCausalLM(model_config)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier after ``step`` scheduler steps.

    Notes
    -----
    Linear warm-up, then cosine decay::

        f(s) = (s + 1) / W                                          for s < W
        f(s) = r + (1 - r) (1 + cos(π min(1, (s - W) / (S - W)))) / 2   otherwise

    with W warm-up steps, S total steps and r = ``min_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_of(config: TrainConfig) -> int:
    """Return the configured warm-up, or min(100, steps // 10) when it is None."""
    return min(100, config.steps // 10) if config.warmup_steps is None else config.warmup_steps


# --------------------------------------------------------------------------------------------
# Loss, accuracy and evaluation
# --------------------------------------------------------------------------------------------


def token_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum the next-token cross-entropy and count correct predictions over scored positions.

    Parameters
    ----------
    logits : torch.Tensor
        Shape (batch, pos, vocab).
    labels : torch.Tensor
        Shape (batch, pos); position t is predicted from the logits at t - 1, and -100 is
        not scored.

    Returns
    -------
    loss_sum, correct, count : torch.Tensor
        Scalars: summed cross-entropy in nats (float32, differentiable), number of argmax
        predictions equal to the label, and number of scored positions.
    """
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:].to(logits.device)
    loss_sum = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    scored = shifted_labels != IGNORE_INDEX
    correct = ((shifted_logits.argmax(-1) == shifted_labels) & scored).sum()
    return loss_sum, correct, scored.sum()


def _autocast(device: torch.device, dtype: str):
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


@torch.no_grad()
def evaluate_task(
    model: torch.nn.Module,
    task: Task,
    *,
    batches: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
) -> dict[str, float]:
    """Compute loss and accuracy on the fixed evaluation set of a task.

    The evaluation set is batches ``0 … batches-1`` of the ``eval`` split, the same for every
    call with the same task seed.

    Returns
    -------
    dict
        ``loss`` (mean cross-entropy in nats per scored token), ``accuracy`` (share of scored
        tokens predicted by argmax) and ``tokens`` (number of scored tokens).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total_loss = total_correct = total_count = 0.0
    for index in range(batches):
        input_ids, labels = task.batch(index, batch_size, "eval")
        with _autocast(device, dtype):
            logits = model(input_ids.to(device)).logits
        loss_sum, correct, count = token_loss_sums(logits, labels.to(device))
        total_loss += float(loss_sum)
        total_correct += float(correct)
        total_count += float(count)
    model.train(was_training)
    return {
        "loss": total_loss / total_count,
        "accuracy": total_correct / total_count,
        "tokens": int(total_count),
    }


# --------------------------------------------------------------------------------------------
# Run directory: validation, atomic writes, checkpoints
# --------------------------------------------------------------------------------------------


def default_mode(path: str | Path, directory: bool = False) -> None:
    """Give a file or directory made by tempfile the mode ``open``/``mkdir`` would have given.

    mkstemp and mkdtemp create 0600 files and 0700 directories. Outputs renamed into place
    from them get 0666 or 0777 minus the umask instead, like every other output.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file in the same directory and os.replace."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, allow_nan=True)
            handle.write("\n")
        default_mode(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Return the newest complete checkpoint directory of a run, or None if there is none."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    complete = [
        path
        for path in root.glob("step-*")
        if path.is_dir() and path.name[5:].isdigit() and (path / TRAINER_STATE_FILE).is_file()
    ]
    return max(complete, key=lambda path: int(path.name[5:]), default=None)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """Check that a run can start (or resume) in ``run_dir`` without writing anything.

    Returns
    -------
    pathlib.Path or None
        The checkpoint to resume from, or None for a new run.

    Raises
    ------
    ValueError
        If the directory is a file, already contains a run (without ``resume``), contains no
        checkpoint (with ``resume``), or cannot be created or written.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"output directory {str(run_dir)!r} is a file; choose a directory path for --out")
    existing = _nearest_existing(run_dir)
    if not existing.is_dir():
        raise ValueError(
            f"output directory {str(run_dir)!r} cannot be created because {str(existing)!r} is a file; "
            "choose another --out"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"output directory {str(run_dir)!r} is not writable ({str(existing)!r} denies write access); "
            "choose another --out or fix its permissions"
        )
    checkpoint = latest_checkpoint(run_dir)
    if resume:
        if checkpoint is None:
            raise ValueError(
                f"cannot resume: {str(run_dir)!r} contains no checkpoint "
                f"({CHECKPOINT_DIR}/step-*/{TRAINER_STATE_FILE}); start the run without resume"
            )
        if not (run_dir / CONFIG_FILE).is_file():
            raise ValueError(f"cannot resume: {str(run_dir / CONFIG_FILE)!r} is missing")
        return checkpoint
    if checkpoint is not None or (run_dir / CONFIG_FILE).exists() or (run_dir / METRICS_FILE).exists():
        raise ValueError(
            f"output directory {str(run_dir)!r} already contains a run; resume it or choose another --out"
        )
    return None


def load_train_config(run_dir: str | Path) -> TrainConfig:
    """Read ``train_config.json`` of a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{str(path)!r} was not found; is {str(run_dir)!r} a training run directory?") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error})") from None
    return TrainConfig.from_dict(values)


def _check_resume_compatible(saved: TrainConfig, requested: TrainConfig) -> None:
    old, new = saved.to_dict(), requested.to_dict()
    differences = [
        f"{key}: saved {old[key]!r}, requested {new[key]!r}"
        for key in old
        if key not in _RESUMABLE_CHANGES and old[key] != new[key]
    ]
    if differences:
        raise ValueError(
            "cannot resume with settings that change the training: "
            + "; ".join(differences)
            + f". Only {', '.join(sorted(_RESUMABLE_CHANGES))} may change; start a new run for other settings"
        )
    if saved.steps != requested.steps:
        logger.warning("steps changed from %d to %d: the learning-rate schedule changes from the resumed step on",
                       saved.steps, requested.steps)


@contextlib.contextmanager
def _transformers_progress_off():
    """Hide the progress bars transformers shows while saving or loading weights."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _save_checkpoint(run_dir: Path, model: MomentumForCausalLM, trainer_state: dict[str, Any]) -> Path:
    root = run_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{trainer_state['step']:08d}"
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        with _transformers_progress_off():
            model.save_pretrained(temporary)
        torch.save(trainer_state, temporary / TRAINER_STATE_FILE)
        default_mode(temporary, directory=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    # Older checkpoints, and temporary directories left by a killed run, are no longer needed.
    for old in [*root.glob("step-*"), *root.glob(".step-*.tmp")]:
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    _export_latest(run_dir, final)
    return final


def _export_latest(run_dir: Path, checkpoint: Path) -> None:
    """Copy the checkpoint's model files to the run directory itself.

    ``from_pretrained(RUN_DIR)`` and ``spectral-forensics bode --model RUN_DIR`` then load the
    newest model. Each file is replaced atomically; the checkpoint directory keeps the
    matching set if a run dies between two files.
    """
    for source in checkpoint.iterdir():
        if source.name == TRAINER_STATE_FILE or not source.is_file():
            continue
        temporary = run_dir / f".{source.name}.tmp"
        shutil.copyfile(source, temporary)
        os.replace(temporary, run_dir / source.name)


def load_checkpoint_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> MomentumForCausalLM:
    """Load the model of a checkpoint directory."""
    with _transformers_progress_off():
        return MomentumForCausalLM.from_pretrained(checkpoint).to(device)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (and any partial last line) left by a killed run."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in kept))
    default_mode(temporary)
    os.replace(temporary, path)


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Read the records of ``metrics.jsonl``, optionally only those of one split."""
    path = Path(run_dir) / METRICS_FILE
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if split is None or r.get("split") == split]


# --------------------------------------------------------------------------------------------
# Devices and processes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _process_layout() -> _Processes:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Processes()
    return _Processes(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


# NOTE: the CUDA paths (device selection, bf16 autocast on CUDA, NCCL) have not been run on a
# GPU. The tests cover CPU, gloo, CPU bf16 autocast and the error without CUDA.
def _resolve_device(name: str, local_rank: int, world_size: int) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise ValueError(f"device={name!r} is not valid; use 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device={name!r} was requested but CUDA is not available to this torch build "
            f"({torch.__version__}); use device='cpu' or install a CUDA build of torch"
        )
    if world_size > 1:
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _init_processes(layout: _Processes, device: torch.device) -> _Processes:
    if layout.world_size == 1:
        return layout
    if dist.is_initialized():
        return layout
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return dataclasses.replace(layout, owns_group=True)


def _barrier(layout: _Processes) -> None:
    if layout.world_size > 1:
        dist.barrier()


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    run_dir : pathlib.Path
        The run directory.
    step : int
        Optimizer steps completed.
    eval : dict
        Last evaluation (``loss``, ``accuracy``, ``tokens``), empty if none ran.
    chance_accuracy : float
        Accuracy of the task's guessing baseline.
    seconds : float
        Wall time of this call.
    config : TrainConfig
        The resolved configuration.
    """

    run_dir: Path
    step: int
    eval: dict[str, float]
    chance_accuracy: float
    seconds: float
    config: TrainConfig


def _make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a model on a task and write the run directory ``config.out_dir``.

    Parameters
    ----------
    config : TrainConfig
        All settings. ``seq_len`` and ``vocab_size`` may be None (task defaults).
    resume : bool
        Continue the run in ``config.out_dir`` from its newest checkpoint. The settings must
        match the saved ones except the fields that do not change the losses (``steps``,
        ``eval_every``, ``log_every``, ``checkpoint_every``, ``device``, ``dtype``, ``out_dir``).
    stop_at : int, optional
        Stop after this many optimizer steps, writing a checkpoint, as if the run were
        interrupted there; a later ``resume=True`` call continues it.
    progress : bool
        Show a tqdm progress bar (rank 0 only).

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        For invalid settings or run directories, before any file is written.
    RuntimeError
        If CUDA is requested but not available.
    """
    started = time.perf_counter()
    config.validate()
    if stop_at is not None:
        _check_integer("stop_at", stop_at, 1)
    layout = _process_layout()
    device = _resolve_device(config.device, layout.local_rank, layout.world_size)
    if config.dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"dtype='bf16' is not supported by {torch.cuda.get_device_name(device)}; use dtype='fp32'")
    task = build_task(config)
    config = resolve_config(config, task)
    if config.batch_size % layout.world_size:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by WORLD_SIZE={layout.world_size}; "
            "the global batch is split evenly across processes"
        )
    eval_batch_size = config.eval_batch_size or config.batch_size
    run_dir = Path(config.out_dir)
    checkpoint = check_run_dir(run_dir, resume)
    if checkpoint is not None:
        _check_resume_compatible(load_train_config(run_dir), config)
    model = build_model(config)

    layout = _init_processes(layout, device)
    try:
        # Every process has validated the same inputs. The barrier keeps rank 0 from creating
        # the run directory while another process still checks that it is empty.
        _barrier(layout)
        return _run(config, task, model, checkpoint, layout, device, eval_batch_size, stop_at, progress, started)
    finally:
        if layout.owns_group:
            dist.destroy_process_group()


def _run(config, task, model, checkpoint, layout, device, eval_batch_size, stop_at, progress, started) -> TrainResult:
    run_dir = Path(config.out_dir)
    model.to(device)
    model.train()
    optimizer = _make_optimizer(model, config)
    warmup = warmup_steps_of(config)

    def schedule(step: int) -> float:
        return lr_factor(step, config.steps, warmup, config.min_lr_ratio)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    start_step = 0
    if checkpoint is not None:
        model.load_state_dict(load_checkpoint_model(checkpoint, device).state_dict())
        state = torch.load(checkpoint / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # The scheduler keeps ``schedule`` and restores only its step, so a changed ``steps``
        # applies from here on; the current learning rate is recomputed from it.
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * schedule(scheduler.last_epoch)
        _set_rng_state(state["rng"], device)
        start_step = int(state["step"])
        logger.info("resuming %s from step %d (%s)", run_dir, start_step, checkpoint)

    metrics_path = run_dir / METRICS_FILE
    if layout.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG_FILE, config.to_dict())
        if checkpoint is not None:
            _truncate_metrics(metrics_path, start_step)

    trained = model
    if layout.world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    end_step = max(start_step, config.steps if stop_at is None else min(stop_at, config.steps))
    per_rank = config.batch_size // layout.world_size
    rows = slice(layout.rank * per_rank, (layout.rank + 1) * per_rank)
    checkpoint_every = config.checkpoint_every or config.eval_every
    last_eval: dict[str, float] = {}

    def evaluate_now(step: int) -> None:
        nonlocal last_eval
        last_eval = evaluate_task(model, task, batches=config.eval_batches, batch_size=eval_batch_size,
                                  device=device, dtype=config.dtype)
        record = {"step": step, "split": "eval", **last_eval, "elapsed_s": time.perf_counter() - started}
        if config.learn_gamma:
            record["gamma"] = model.momentum_gammas().tolist()
        log.write(json.dumps(record) + "\n")
        log.flush()
        logger.info("step %d: eval loss %.4f, accuracy %.4f", step, last_eval["loss"], last_eval["accuracy"])

    log = open(metrics_path, "a", encoding="utf-8") if layout.is_main else open(os.devnull, "w")
    bar = tqdm(total=end_step, initial=start_step, disable=not (progress and layout.is_main),
               desc=f"{config.task} γ={config.gamma}", dynamic_ncols=True)
    try:
        if start_step == 0 and layout.is_main:
            evaluate_now(0)
        for step in range(start_step, end_step):
            input_ids, labels = task.batch(step, config.batch_size, "train")
            scored_total = int((labels[:, 1:] != IGNORE_INDEX).sum())
            local_ids, local_labels = input_ids[rows].to(device), labels[rows].to(device)
            with _autocast(device, config.dtype):
                logits = trained(local_ids).logits
            loss_sum, correct, count = token_loss_sums(logits, local_labels)
            if not math.isfinite(loss_sum.detach().item()):
                raise RuntimeError(
                    f"the training loss became {loss_sum.detach().item()} at step {step + 1}; start a new run "
                    f"with a lower lr (now {config.lr}) or with grad_clip > 0"
                )
            # DistributedDataParallel averages gradients over processes, so scaling by the
            # world size makes the update the gradient of the mean over the global batch.
            (loss_sum * (layout.world_size / scored_total)).backward()
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                if config.grad_clip > 0
                else _grad_norm(model)
            )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1

            if done % config.log_every == 0 or done == end_step:
                totals = torch.stack([loss_sum.detach().float(), correct.float(), count.float()])
                if layout.world_size > 1:
                    dist.all_reduce(totals)
                record = {"step": done, "split": "train", "loss": float(totals[0] / totals[2]),
                          "accuracy": float(totals[1] / totals[2]), "lr": lr, "grad_norm": float(grad_norm)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
            if layout.is_main and (done % config.eval_every == 0 or done == config.steps):
                evaluate_now(done)
            if layout.is_main and (done % checkpoint_every == 0 or done == end_step):
                _save_checkpoint(run_dir, model, {
                    "step": done,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(device),
                    "torch_version": str(torch.__version__),
                })
            bar.update(1)
    finally:
        bar.close()
        log.close()

    if not last_eval and layout.is_main:
        last_eval = evaluate_task(model, task, batches=config.eval_batches, batch_size=eval_batch_size,
                                  device=device, dtype=config.dtype)
    return TrainResult(run_dir=run_dir, step=end_step, eval=last_eval, chance_accuracy=task.chance_accuracy,
                       seconds=time.perf_counter() - started, config=config)


def _grad_norm(model: torch.nn.Module) -> torch.Tensor:
    norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
