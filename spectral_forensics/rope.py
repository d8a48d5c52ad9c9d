"""RoPE facts of a model, read from its Hugging Face configuration.

Every quantity here comes from the configuration (and, for the band frequencies, from the
same ``transformers`` routine that builds the model's own ``inv_freq`` buffer), never from
assumptions about a model family.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ROTATE_HALF = "rotate_half"
ADJACENT_PAIRS = "adjacent"
PAIRINGS = (ROTATE_HALF, ADJACENT_PAIRS)

# Pairing convention of each architecture's ``apply_rotary_pos_emb``: "rotate half" pairs
# dimension i with i + rotary_dim/2, GPT-J style code pairs 2i with 2i + 1. Model types not
# listed here default to rotate-half, the convention of every Llama-derived model; the
# extractor checks the choice against the model's own hook_rot_q on the first window.
_PAIRING_BY_MODEL_TYPE = {
    "gptj": ADJACENT_PAIRS,
    "codegen": ADJACENT_PAIRS,
    "chatglm": ADJACENT_PAIRS,
    "glm": ADJACENT_PAIRS,
}

# Architectures whose code fixes the RoPE base instead of reading it from the configuration.
_FIXED_BASE_BY_MODEL_TYPE = {"gptj": 10000.0, "codegen": 10000.0}

# Model types whose attention has no rotary embedding at all.
_NO_ROPE_MODEL_TYPES = {"gpt2", "opt", "bloom", "bert", "gpt_bigcode", "mpt", "roberta"}


@dataclass(frozen=True)
class RopeSpec:
    """Rotary-embedding and attention layout of one model.

    Attributes
    ----------
    model_type : str
        ``config.model_type`` of the Hugging Face model.
    n_layers, n_heads, n_kv_heads, head_dim : int
        Layer count, query heads, key/value heads (grouped-query attention when smaller than
        ``n_heads``) and the per-head dimension.
    has_rope : bool
        Whether attention applies rotary position embeddings.
    base : float or None
        RoPE base (``rope_theta``).
    rotary_dim : int
        Number of rotated dimensions per head (``head_dim`` unless partial rotary); 0 without RoPE.
    pairing : str or None
        ``"rotate_half"`` (pairs i, i + rotary_dim/2) or ``"adjacent"`` (pairs 2i, 2i + 1).
    rope_type : str or None
        Scaling type from the configuration (``"default"``, ``"linear"``, ``"llama3"``, ...).
    theta : numpy.ndarray
        Band frequencies θ_i in radians per token, shape ``(rotary_dim // 2,)``, as the model
        computes them (scaling included).
    """

    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    has_rope: bool
    base: float | None
    rotary_dim: int
    pairing: str | None
    rope_type: str | None
    theta: np.ndarray = field(repr=False)
    scaling: dict | None = None

    @property
    def n_bands(self) -> int:
        """Number of rotated pairs, ``rotary_dim // 2``."""
        return self.rotary_dim // 2

    @property
    def group_size(self) -> int:
        """Query heads that share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """Return the key/value head that query head ``head`` reads under grouped-query attention."""
        return head // self.group_size

    @property
    def wavelengths(self) -> np.ndarray:
        """Band wavelengths 2π/θ_i in tokens."""
        with np.errstate(divide="ignore"):
            return 2 * np.pi / self.theta

    def band_dimensions(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the head dimensions holding the real and imaginary part of each band.

        Returns
        -------
        real_dims, imag_dims : numpy.ndarray
            Integer index arrays of shape ``(n_bands,)``: band i is the complex number
            ``x[real_dims[i]] + 1j * x[imag_dims[i]]``.
        """
        return band_dimensions(self.rotary_dim, self.pairing)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary (θ as a list)."""
        out = asdict(self)
        out["theta"] = [float(t) for t in self.theta]
        out["n_bands"] = self.n_bands
        return out

    def require_rope(self, what: str) -> None:
        """Raise a ValueError saying that ``what`` needs rotary embeddings, if this model has none."""
        if not self.has_rope:
            raise ValueError(
                f"{what} needs a model with rotary position embeddings, but model_type="
                f"{self.model_type!r} has none. Use a RoPE model (Llama, SmolLM2, Pythia, GPT-J), "
                "or analyse only the temporal spectra (--no-bands)."
            )


def band_dimensions(rotary_dim: int, pairing: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Return the (real, imaginary) head-dimension indices of each RoPE band.

    Parameters
    ----------
    rotary_dim : int
        Number of rotated dimensions (even).
    pairing : {"rotate_half", "adjacent"}
        Pairing convention of the model.
    """
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim={rotary_dim} must be even")
    half = rotary_dim // 2
    idx = np.arange(half)
    if pairing == ROTATE_HALF:
        return idx, idx + half
    if pairing == ADJACENT_PAIRS:
        return 2 * idx, 2 * idx + 1
    raise ValueError(f"pairing={pairing!r} is not one of {PAIRINGS}")


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _rope_parameters(config: Any) -> dict:
    # transformers 5 keeps rope_theta and the scaling in ``rope_parameters``; older configs
    # (and some remote-code models) have ``rope_theta`` and ``rope_scaling`` at the top level.
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params:
        theta = _get(config, "rope_theta", "rotary_emb_base")
        if theta is not None:
            params["rope_theta"] = theta
    scaling = getattr(config, "rope_scaling", None)
    if scaling and "rope_type" not in params:
        params.update(scaling)
    return params


def _rotary_dim(config: Any, head_dim: int) -> int:
    explicit = _get(config, "rotary_dim")
    if explicit is not None:
        return int(explicit)
    fraction = _get(config, "partial_rotary_factor", "rotary_pct")
    params = getattr(config, "rope_parameters", None) or {}
    if fraction is None:
        fraction = params.get("partial_rotary_factor")
    if fraction is None:
        fraction = 1.0
    dim = int(head_dim * float(fraction))
    return dim - dim % 2


def _theta_from_transformers(config: Any, rope_type: str, base: float, rotary_dim: int) -> np.ndarray:
    """Band frequencies as transformers computes the model's ``inv_freq`` buffer."""
    theta_default = base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    if rope_type in (None, "default"):
        return theta_default
    try:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        inv_freq, _ = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
        theta = inv_freq.double().numpy()
    except (ImportError, KeyError, TypeError, AttributeError) as exc:
        log.warning(
            "Could not compute %r-scaled RoPE frequencies with transformers (%s); using the "
            "unscaled θ_i = base^(-2i/d).",
            rope_type,
            exc,
        )
        return theta_default
    if theta.shape != theta_default.shape:
        log.warning(
            "transformers returned %d RoPE frequencies for rope_type=%r, expected %d; using the "
            "unscaled θ_i = base^(-2i/d).",
            theta.size,
            rope_type,
            theta_default.size,
        )
        return theta_default
    return theta


def rope_spec_from_config(config: Any) -> RopeSpec:
    """Read the RoPE and attention layout of a Hugging Face configuration.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The model's configuration (``model.config``).

    Returns
    -------
    RopeSpec

    Notes
    -----
    Band i turns at θ_i = base^(-2i / rotary_dim) radians per token for unscaled RoPE; scaled
    variants (linear, dynamic, YaRN, Llama 3) use the frequencies transformers computes for the
    model. With partial rotary the dimensions beyond ``rotary_dim`` are not rotated and belong
    to no band.
    """
    text_config = getattr(config, "text_config", None)
    if text_config is not None and getattr(config, "num_hidden_layers", None) is None:
        config = text_config
    model_type = str(getattr(config, "model_type", "unknown"))
    n_layers = int(_get(config, "num_hidden_layers", "n_layer", "num_layers"))
    n_heads = int(_get(config, "num_attention_heads", "n_head"))
    n_kv_heads = int(_get(config, "num_key_value_heads", "multi_query_group_num", default=n_heads))
    hidden = int(_get(config, "hidden_size", "n_embd", "d_model"))
    head_dim = int(_get(config, "head_dim", default=hidden // n_heads))
    if n_heads % n_kv_heads:
        raise ValueError(
            f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv_heads}"
        )

    params = _rope_parameters(config)
    base = params.get("rope_theta", _FIXED_BASE_BY_MODEL_TYPE.get(model_type))
    has_rope = model_type not in _NO_ROPE_MODEL_TYPES and base is not None
    if not has_rope:
        return RopeSpec(
            model_type=model_type,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            has_rope=False,
            base=None,
            rotary_dim=0,
            pairing=None,
            rope_type=None,
            theta=np.zeros(0),
        )

    rotary_dim = _rotary_dim(config, head_dim)
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = _theta_from_transformers(config, rope_type, float(base), rotary_dim)
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "rope_type")} or None
    return RopeSpec(
        model_type=model_type,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        has_rope=True,
        base=float(base),
        rotary_dim=rotary_dim,
        pairing=_PAIRING_BY_MODEL_TYPE.get(model_type, ROTATE_HALF),
        rope_type=rope_type,
        theta=theta,
        scaling=scaling,
    )


def rotate(x: np.ndarray, positions: np.ndarray, spec: RopeSpec) -> np.ndarray:
    """Apply the model's RoPE rotation to head vectors (a reference for checks, not the hot path).

    Parameters
    ----------
    x : numpy.ndarray
        Vectors of shape ``(..., pos, head_dim)``.
    positions : numpy.ndarray
        Token positions of shape ``(pos,)``.
    spec : RopeSpec
        The model's RoPE layout.

    Notes
    -----
    Band i, written as z = x[re] + j x[im], becomes z · e^{j θ_i t} at position t; dimensions
    beyond ``rotary_dim`` pass unchanged.
    """
    spec.require_rope("rotate")
    re, im = spec.band_dimensions()
    out = np.array(x, dtype=np.float64, copy=True)
    angle = np.asarray(positions, dtype=np.float64)[:, None] * spec.theta[None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    a, b = x[..., re], x[..., im]
    out[..., re] = a * cos - b * sin
    out[..., im] = a * sin + b * cos
    return out
