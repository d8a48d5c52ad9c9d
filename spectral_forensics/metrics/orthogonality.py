"""DC/AC orthogonality of a head's post-shear signal: semantic versus mechanistic part.

The momentum shear writes a head's sheared query or key sequence as the sum of two parts seen
in the post-RoPE frame: the semantic part s_t, which is the same head at γ = 0, and the
mechanistic part m_t, which the shear adds. This module measures how far the two occupy
separate frequencies and directions:

- :func:`spectral_overlap`: Bhattacharyya coefficient of their normalised power spectra;
- :func:`band_separation`: share of S_s below a cutoff and of S_m above it;
- :func:`time_cosine`: cosine between s and m over tokens and channels;
- :func:`split_semantic_mechanistic` and :func:`orthogonality`: the split for the post-RoPE
  and pre-RoPE placements, and all three measures per head.

Frequencies are in radians per token, from 0 (constant over tokens) to π. Everything here
works on numpy arrays and torch tensors and imports no model or TransformerLens code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from spectral_forensics.momentum.operator import kinematic_momentum
from spectral_forensics.rope import PAIRINGS, ROTATE_HALF, band_dimensions
from spectral_forensics.spectral.temporal import dc_ac_split, welch_psd
from spectral_forensics.spectral._axes import normalize_axis as _normalize_axis

__all__ = [
    "DEFAULT_CUTOFF",
    "PLACEMENTS",
    "BandSeparation",
    "OrthogonalityResult",
    "band_separation",
    "orthogonality",
    "spectral_overlap",
    "split_semantic_mechanistic",
    "time_cosine",
]

PLACEMENTS = ("post_rope", "pre_rope")
"""Placements of the shear: on the rotated queries and keys, or before RoPE rotates them."""

DEFAULT_CUTOFF = 2 * math.pi / 16
"""Default DC/AC cutoff ω_c in radians per token: a wavelength of 16 tokens."""

# Head-vector layout of every sequence passed to the split, as TransformerLens hooks show it.
_BATCH_AXIS, _POS_AXIS, _HEAD_AXIS, _CHANNEL_AXIS = 0, 1, 2, 3


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array, moving a torch tensor to the CPU first."""
    if isinstance(x, torch.Tensor):
        tensor = x.detach().cpu()
        if tensor.dtype.is_floating_point and tensor.element_size() < 4:
            tensor = tensor.float()
        x = tensor.numpy()
    array = np.asarray(x)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{name} has dtype {array.dtype}, expected a numeric array or tensor.")
    return array


def _unit_sum(psd: np.ndarray) -> np.ndarray:
    """Divide spectra (frequency axis last) by their sum, giving NaN where the sum is 0."""
    total = psd.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, psd / np.where(total > 0, total, 1.0), np.nan)


def _validated_spectrum(psd: Any, name: str, axis: int) -> np.ndarray:
    """Return ``psd`` as a float64 array with the frequency axis last, after range checks."""
    array = _to_numpy(psd, name)
    if np.iscomplexobj(array):
        raise ValueError(
            f"{name} has complex dtype {array.dtype}, but a power spectrum is real and >= 0. Pass "
            "the PSD (for example from welch_psd), not the Fourier coefficients."
        )
    if array.ndim == 0:
        raise ValueError(f"{name} is a scalar. Pass a spectrum with a frequency axis.")
    array = np.moveaxis(array.astype(np.float64), _normalize_axis(axis, array.ndim, "axis"), -1)
    finite = array[np.isfinite(array)]
    if finite.size and finite.min() < 0:
        raise ValueError(
            f"{name} contains negative values (minimum {finite.min():g}), but a power spectrum "
            "must be >= 0. Pass a PSD, not a signed or log-scaled (dB) spectrum."
        )
    return array


def spectral_overlap(psd_s: Any, psd_m: Any, axis: int = -1) -> np.ndarray:
    """Compute the Bhattacharyya coefficient of two power spectra.

    Parameters
    ----------
    psd_s, psd_m : numpy.ndarray or torch.Tensor
        Power spectral densities of the semantic and the mechanistic part on the same
        frequency grid, values >= 0, with the frequency axis at ``axis``. Their shapes must
        be equal. The unit does not matter because each spectrum is normalised.
    axis : int, optional
        Frequency axis. Default -1.

    Returns
    -------
    numpy.ndarray
        Overlap O in [0, 1], float64, with the shape of the inputs without ``axis``. O is 1 for
        proportional spectra and 0 for spectra without a common nonzero bin. It is NaN where a
        spectrum is zero everywhere.

    Raises
    ------
    ValueError
        If the shapes differ or a spectrum is complex or has negative entries.

    Notes
    -----
    With each spectrum normalised to unit sum over the frequency bins,
    Ŝ(ω_k) = S(ω_k) / Σ_k S(ω_k),

        O = Σ_k sqrt(Ŝ_s(ω_k) Ŝ_m(ω_k)).

    By the Cauchy-Schwarz inequality O <= 1, with equality exactly when Ŝ_s = Ŝ_m. All bins
    have equal weight, which is right for the uniform grid of a Welch spectrum.

    Examples
    --------
    >>> import numpy as np
    >>> float(spectral_overlap(np.array([1.0, 2.0, 0.0]), np.array([2.0, 4.0, 0.0])))
    1.0
    >>> float(spectral_overlap(np.array([1.0, 0.0]), np.array([0.0, 3.0])))
    0.0
    """
    s = _validated_spectrum(psd_s, "psd_s", axis)
    m = _validated_spectrum(psd_m, "psd_m", axis)
    if s.shape != m.shape:
        raise ValueError(
            f"psd_s has shape {np.moveaxis(s, -1, axis).shape} but psd_m has shape "
            f"{np.moveaxis(m, -1, axis).shape}. Compute both spectra on the same frequency "
            "grid and layout."
        )
    return np.sqrt(_unit_sum(s) * _unit_sum(m)).sum(axis=-1)


class BandSeparation(NamedTuple):
    """Power shares of the semantic part below and the mechanistic part above a cutoff.

    Attributes
    ----------
    semantic_low_share : numpy.ndarray
        Share of the semantic spectrum S_s at |ω| < ω_c, in [0, 1].
    mechanistic_high_share : numpy.ndarray
        Share of the mechanistic spectrum S_m at |ω| >= ω_c, in [0, 1].
    """

    semantic_low_share: np.ndarray
    mechanistic_high_share: np.ndarray


def band_separation(
    freqs: np.ndarray, psd_s: Any, psd_m: Any, cutoff: float = DEFAULT_CUTOFF, axis: int = -1
) -> BandSeparation:
    """Measure how far the semantic part stays below and the mechanistic part above a cutoff.

    Parameters
    ----------
    freqs : numpy.ndarray
        Uniform frequency grid in radians per token, shape ``(n_freq,)``, as returned by
        ``spectral_forensics.spectral.temporal.welch_psd``.
    psd_s, psd_m : numpy.ndarray or torch.Tensor
        PSDs of the semantic and the mechanistic part, frequency axis at ``axis``.
    cutoff : float, optional
        Cutoff ω_c in radians per token, 0 < ω_c <= π. Default 2π/16 (a wavelength of 16
        tokens).
    axis : int, optional
        Frequency axis of both spectra. Default -1.

    Returns
    -------
    BandSeparation
        ``semantic_low_share`` and ``mechanistic_high_share``, each with the shape of its
        spectrum without ``axis``, NaN where that spectrum is zero everywhere. Both are 1
        for perfectly separated parts.

    Raises
    ------
    ValueError
        If ``cutoff`` is outside (0, π], a spectrum has negative entries, or ``freqs`` does
        not match the spectra.

    Notes
    -----
    With the bin width Δω,

        semantic_low_share    = Σ_{|ω_k| < ω_c} S_s(ω_k) Δω / Σ_k S_s(ω_k) Δω
        mechanistic_high_share = Σ_{|ω_k| >= ω_c} S_m(ω_k) Δω / Σ_k S_m(ω_k) Δω

    computed with ``dc_ac_split``, so each bin belongs entirely to one side.

    Examples
    --------
    >>> import numpy as np
    >>> freqs = np.linspace(0, np.pi, 5)
    >>> shares = band_separation(freqs, np.array([3, 1, 0, 0, 0.0]),
    ...                          np.array([0, 0, 1, 1, 2.0]), cutoff=np.pi / 2)
    >>> float(shares.semantic_low_share), float(shares.mechanistic_high_share)
    (1.0, 1.0)
    """
    s = _validated_spectrum(psd_s, "psd_s", axis)
    m = _validated_spectrum(psd_m, "psd_m", axis)
    _, _, semantic_dc = dc_ac_split(freqs, s, cutoff)
    _, _, mechanistic_dc = dc_ac_split(freqs, m, cutoff)
    return BandSeparation(np.asarray(semantic_dc), np.asarray(1.0 - mechanistic_dc))


def time_cosine(
    s: Any, m: Any, axis: int = -1, channel_axes: int | Sequence[int] | None = None
) -> np.ndarray:
    """Compute the cosine between the semantic and the mechanistic sequence.

    Parameters
    ----------
    s, m : numpy.ndarray or torch.Tensor
        The two parts, same shape, real or complex, for example ``(batch, pos, head, d_head)``.
    axis : int, optional
        Token axis. Default -1.
    channel_axes : int or sequence of int, optional
        Further axes that are flattened together with the token axis, for example the
        ``d_head`` axis (and the batch axis to pool over rows). Default: none.

    Returns
    -------
    numpy.ndarray
        Cosine in [-1, 1], float64, with the shape of the inputs without the reduced axes.
        NaN where one of the parts is zero.

    Raises
    ------
    ValueError
        If the shapes differ or an axis is out of range or repeated.

    Notes
    -----
    Over all entries u of the flattened token and channel axes,

        cos = Re Σ_u s_u conj(m_u) / sqrt(Σ_u |s_u|^2 Σ_u |m_u|^2).

    The means are not subtracted, so this is the cosine of the raw sequences, not their
    correlation coefficient: a constant s and an alternating m have cosine 0.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(64)
    >>> omega = 2 * np.pi * 4 / 64  # four whole periods
    >>> round(float(time_cosine(np.cos(omega * t), np.sin(omega * t))), 6)
    0.0
    """
    s_array = _to_numpy(s, "s")
    m_array = _to_numpy(m, "m")
    if s_array.shape != m_array.shape:
        raise ValueError(
            f"s has shape {s_array.shape} but m has shape {m_array.shape}. The two parts of "
            "one signal must have the same shape."
        )
    token_axis = _normalize_axis(axis, s_array.ndim, "axis")
    if channel_axes is None:
        extra: tuple[int, ...] = ()
    elif isinstance(channel_axes, (int, np.integer)):
        extra = (_normalize_axis(channel_axes, s_array.ndim, "channel_axes"),)
    else:
        extra = tuple(_normalize_axis(a, s_array.ndim, "channel_axes") for a in channel_axes)
    reduced = (token_axis, *extra)
    if len(set(reduced)) != len(reduced):
        raise ValueError(
            f"channel_axes={channel_axes!r} repeats an axis or contains the token axis "
            f"{token_axis}. List each further axis once."
        )
    s_array = s_array.astype(np.result_type(s_array.dtype, np.float64))
    m_array = m_array.astype(np.result_type(m_array.dtype, np.float64))
    inner = np.real(np.sum(s_array * np.conj(m_array), axis=reduced))
    norm_s = np.sqrt(np.sum(np.abs(s_array) ** 2, axis=reduced))
    norm_m = np.sqrt(np.sum(np.abs(m_array) ** 2, axis=reduced))
    denominator = norm_s * norm_m
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, inner / np.where(denominator > 0, denominator, 1), np.nan)


def _as_head_layout(x: Any) -> torch.Tensor:
    """Return ``x`` as a real float64 tensor of shape (batch, pos, head, d_head).

    A (pos, head, d_head) input gets a batch axis of size 1.
    """
    tensor = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(
            f"x has dtype {tensor.dtype}, expected real head vectors (float). Pass the hook "
            "tensor, for example blocks.{l}.attn.hook_rot_q, as it is."
        )
    if tensor.ndim == 3:
        return tensor.to(torch.float64).unsqueeze(0)
    if tensor.ndim != 4:
        raise ValueError(
            f"x has shape {tuple(tensor.shape)}, expected (batch, pos, head, d_head) or "
            "(pos, head, d_head)."
        )
    return tensor.to(torch.float64)


def _gamma_per_head(gamma: Any, n_heads: int) -> torch.Tensor:
    """Return γ as a float64 tensor of shape (1, 1, head, 1) after range checks."""
    values = torch.as_tensor(_to_numpy(gamma, "gamma"), dtype=torch.float64).reshape(-1)
    if values.numel() not in (1, n_heads):
        raise ValueError(
            f"gamma has {values.numel()} values but x has {n_heads} heads. Pass one float or "
            "one value per head."
        )
    invalid = ~torch.isfinite(values) | (values < 0)
    if bool(invalid.any()):
        raise ValueError(
            f"gamma contains {values[invalid].tolist()[:4]}, but the momentum coupling must be "
            "finite and >= 0."
        )
    return values.expand(n_heads).reshape(1, 1, n_heads, 1).clone()


def _rotate(
    x: torch.Tensor, theta: torch.Tensor, pairing: str, positions: torch.Tensor
) -> torch.Tensor:
    """Rotate band i of (batch, pos, head, d_head) vectors by θ_i · position.

    Band i, z = x[re_i] + j x[im_i], becomes z e^{j θ_i t}, the rotation of RoPE in
    Hugging Face models. Dimensions beyond 2 · len(theta) pass unchanged.
    """
    real_dims, imag_dims = band_dimensions(2 * theta.numel(), pairing)
    re = torch.as_tensor(real_dims)
    im = torch.as_tensor(imag_dims)
    # positions has shape (pos,) or (batch, pos), and angle broadcasts to (batch, pos, 1, band).
    angle = positions.to(torch.float64)[..., None, None] * theta
    if angle.ndim == 3:
        angle = angle.unsqueeze(0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    a, b = x[..., re], x[..., im]
    out = x.clone()
    out[..., re] = a * cos - b * sin
    out[..., im] = a * sin + b * cos
    return out


def _validated_theta(theta: Any, d_head: int, pairing: str) -> torch.Tensor:
    if theta is None:
        raise ValueError(
            "theta is None, but placement='pre_rope' needs the RoPE band frequencies to rotate "
            "the sheared pre-RoPE vectors. Pass RopeSpec.theta of the model "
            "(spectral_forensics.rope.rope_spec_from_config)."
        )
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing={pairing!r} is not one of {PAIRINGS}.")
    values = torch.as_tensor(_to_numpy(theta, "theta"), dtype=torch.float64)
    if values.ndim != 1 or not bool(torch.isfinite(values).all()):
        raise ValueError(
            f"theta has shape {tuple(values.shape)} or non-finite entries, expected finite band "
            "frequencies in radians per token, shape (n_bands,)."
        )
    if 2 * values.numel() > d_head:
        raise ValueError(
            f"theta has {values.numel()} bands, which need {2 * values.numel()} rotated "
            f"dimensions, but the head vectors have d_head={d_head}. Pass the θ of this model."
        )
    return values


def _validated_positions(positions: Any, n_batch: int, n_pos: int) -> torch.Tensor:
    if positions is None:
        return torch.arange(n_pos, dtype=torch.float64)
    values = torch.as_tensor(_to_numpy(positions, "positions"), dtype=torch.float64)
    if values.shape not in ((n_pos,), (n_batch, n_pos), (1, n_pos)):
        raise ValueError(
            f"positions has shape {tuple(values.shape)}, expected ({n_pos},) or "
            f"({n_batch}, {n_pos}), one RoPE position per token."
        )
    return values


def split_semantic_mechanistic(
    x: Any,
    gamma: Any,
    placement: str,
    theta: Any = None,
    *,
    pairing: str = ROTATE_HALF,
    positions: Any = None,
    document_starts: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a head's post-shear sequence into its semantic and its mechanistic part.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        Real head vectors of shape ``(batch, pos, head, d_head)`` or ``(pos, head, d_head)``:
        the post-RoPE vectors r_t (``blocks.{l}.attn.hook_rot_q`` or ``hook_rot_k`` of an
        unsheared model) for ``placement="post_rope"``, the pre-RoPE vectors x_t
        (``hook_q`` or ``hook_k``) for ``placement="pre_rope"``.
    gamma : float or array_like
        Momentum coupling γ >= 0 (dimensionless), one value or one per head.
    placement : {"post_rope", "pre_rope"}
        Where the shear acts.
    theta : array_like, optional
        RoPE band frequencies θ_i in radians per token, shape ``(n_bands,)``, required for
        ``"pre_rope"``, ignored for ``"post_rope"``. Dimensions beyond 2 · n_bands are not
        rotated (partial rotary).
    pairing : {"rotate_half", "adjacent"}, optional
        Which head dimensions form band i: (i, i + n_bands) or (2i, 2i + 1). Default
        ``"rotate_half"``, the Llama convention. Take ``RopeSpec.pairing`` of the model.
    positions : array_like, optional
        RoPE position of each token, shape ``(pos,)`` or ``(batch, pos)``. Default 0 … pos-1.
    document_starts : array_like of bool, optional
        True at the first token of each packed document, shape ``(pos,)`` or ``(batch, pos)``.
        The momentum is 0 there, as in the model.

    Returns
    -------
    s, m : torch.Tensor
        Semantic and mechanistic part in the post-RoPE frame, float64, shape of ``x`` (with a
        batch axis of 1 added to a 3-D input). The post-shear signal is s + m.

    Raises
    ------
    ValueError
        If ``placement`` is unknown, ``gamma`` or ``theta`` is invalid, or a shape does not fit.

    Notes
    -----
    Both placements are written in the post-RoPE frame, with the momentum p_0 = 0 (and 0 at
    every document start). For a band i, write r_t = e^{j θ_i t} x_t as a complex number.

    Post-RoPE placement, shear on r_t:

        r̂_t = (1 + γ) r_t - γ r_{t-1},   s_t = r_t,   m_t = γ (r_t - r_{t-1}).

    Pre-RoPE placement, shear on x_t and rotation afterwards:

        r̂_t = e^{j θ_i t} ((1 + γ) x_t - γ x_{t-1}) = r_t + γ (r_t - e^{j θ_i} r_{t-1}),
        s_t = r_t,   m_t = γ (r_t - e^{j θ_i} r_{t-1}) = γ e^{j θ_i t} (x_t - x_{t-1}).

    So s is the same for both placements (the head at γ = 0), and m differs only through the
    phase e^{j θ_i}: post-RoPE m is the high-passed r, pre-RoPE m is the rotated pre-RoPE
    momentum. Unrotated dimensions (θ = 0) get the same m under both placements.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r} is not one of {PLACEMENTS}.")
    vectors = _as_head_layout(x)
    n_batch, n_pos, n_heads, d_head = vectors.shape
    gamma_t = _gamma_per_head(gamma, n_heads)
    starts = None
    if document_starts is not None:
        starts = torch.as_tensor(_to_numpy(document_starts, "document_starts")).to(torch.bool)

    if placement == "post_rope":
        semantic = vectors
        momentum = kinematic_momentum(vectors, dim=_POS_AXIS, document_starts=starts)
    else:
        theta_t = _validated_theta(theta, d_head, pairing)
        angles = _validated_positions(positions, n_batch, n_pos)
        semantic = _rotate(vectors, theta_t, pairing, angles)
        pre_momentum = kinematic_momentum(vectors, dim=_POS_AXIS, document_starts=starts)
        momentum = _rotate(pre_momentum, theta_t, pairing, angles)
    return semantic, gamma_t * momentum


@dataclass(frozen=True)
class OrthogonalityResult:
    """Orthogonality measures of the semantic and the mechanistic part, one entry per head.

    Attributes
    ----------
    placement : str
        ``"post_rope"`` or ``"pre_rope"``.
    gamma : numpy.ndarray
        γ per head, shape ``(head,)``.
    overlap : numpy.ndarray
        Spectral overlap O (Bhattacharyya coefficient), shape ``(head,)``.
    semantic_low_share, mechanistic_high_share : numpy.ndarray
        Share of S_s below and of S_m at or above ``cutoff``, shape ``(head,)``.
    time_cosine : numpy.ndarray
        Cosine between s and m over batch, tokens and channels, shape ``(head,)``.
    freqs : numpy.ndarray
        Welch frequency grid in radians per token, shape ``(n_freq,)``.
    psd_semantic, psd_mechanistic : numpy.ndarray
        Channel- and batch-averaged PSDs, shape ``(head, n_freq)``, in (activation units)^2
        per (radian per token).
    cutoff : float
        DC/AC cutoff ω_c in radians per token.
    nperseg : int
        Welch segment length in tokens.
    """

    placement: str
    gamma: np.ndarray
    overlap: np.ndarray
    semantic_low_share: np.ndarray
    mechanistic_high_share: np.ndarray
    time_cosine: np.ndarray
    freqs: np.ndarray = field(repr=False)
    psd_semantic: np.ndarray = field(repr=False)
    psd_mechanistic: np.ndarray = field(repr=False)
    cutoff: float = DEFAULT_CUTOFF
    nperseg: int = 64

    def records(self) -> list[dict[str, Any]]:
        """Return one dict per head with the scalar measures as Python floats."""
        return [
            {
                "head": head,
                "placement": self.placement,
                "gamma": float(self.gamma[head]),
                "overlap": float(self.overlap[head]),
                "semantic_low_share": float(self.semantic_low_share[head]),
                "mechanistic_high_share": float(self.mechanistic_high_share[head]),
                "time_cosine": float(self.time_cosine[head]),
                "cutoff": self.cutoff,
                "nperseg": self.nperseg,
            }
            for head in range(self.overlap.shape[0])
        ]


def orthogonality(
    x: Any,
    gamma: Any,
    placement: str,
    theta: Any = None,
    *,
    pairing: str = ROTATE_HALF,
    nperseg: int = 64,
    cutoff: float = DEFAULT_CUTOFF,
    detrend: str | bool = False,
    window: str | tuple = "hann",
    positions: Any = None,
    document_starts: Any = None,
) -> OrthogonalityResult:
    """Measure per head how far the shear's mechanistic part is orthogonal to the semantic part.

    Parameters
    ----------
    x, gamma, placement, theta, pairing, positions, document_starts
        As in :func:`split_semantic_mechanistic`: ``x`` of shape ``(batch, pos, head, d_head)``
        contains post-RoPE vectors for ``"post_rope"`` and pre-RoPE vectors (with ``theta``) for
        ``"pre_rope"``.
    nperseg : int, optional
        Welch segment length in tokens, 2 <= nperseg <= pos. Default 64, so the frequency
        resolution is 2π / nperseg radians per token.
    cutoff : float, optional
        DC/AC cutoff ω_c in radians per token, 0 < ω_c <= π. Default 2π/16.
    detrend : {False, "constant", "linear"}, optional
        Detrending of each Welch segment. The default False keeps the constant part of each
        segment, which is the slow content the semantic part carries. "constant" removes it
        from both spectra.
    window : str or tuple, optional
        Welch window. Default ``"hann"``.

    Returns
    -------
    OrthogonalityResult
        Overlap, band shares and time cosine per head, with the spectra they come from.

    Raises
    ------
    ValueError
        For an invalid placement, γ, θ, segment length or cutoff.

    Notes
    -----
    With s and m from :func:`split_semantic_mechanistic`, the PSDs S_s and S_m are Welch
    spectra of the real head channels along the token axis, averaged over the batch and the
    d_head channels of each head. Then

        O = Σ_k sqrt(Ŝ_s(ω_k) Ŝ_m(ω_k))                     (Ŝ: spectrum / its sum)
        semantic_low_share = share of S_s at |ω| < ω_c
        mechanistic_high_share = share of S_m at |ω| >= ω_c
        cos = Σ s·m / (‖s‖ ‖m‖)  over batch, tokens and channels.

    Every measure is invariant to the scale of m, so for γ > 0 none depends on γ. A head with
    γ = 0 has m = 0, and its overlap, mechanistic share and cosine are NaN.

    Which placement gives the smaller O depends on the pre-RoPE content. When band i of x_t
    is one slow line A_i e^{j ω0 t}, pre-RoPE m is (1 - e^{-j ω0}) s in every band, so O = 1,
    while post-RoPE m scales band i by |2 sin((ω0 + θ_i) / 2)|, which tilts S_m towards fast
    bands and gives O < 1. When x_t is static content plus broadband fluctuations, the static
    part has no pre-RoPE momentum at all, so pre-RoPE m contains only the fluctuations, and
    its O can be smaller than post-RoPE. ``tests/test_metrics_orthogonality.py`` checks both.
    """
    semantic, mechanistic = split_semantic_mechanistic(
        x,
        gamma,
        placement,
        theta,
        pairing=pairing,
        positions=positions,
        document_starts=document_starts,
    )
    if not (math.isfinite(cutoff) and 0 < cutoff <= math.pi):
        raise ValueError(
            f"cutoff={cutoff!r} is out of range. Use a frequency in (0, π] radians per token."
        )
    welch_options = {
        "nperseg": nperseg,
        "axis": _POS_AXIS,
        "average_axes": (_BATCH_AXIS, _CHANNEL_AXIS),
        "detrend": detrend,
        "window": window,
    }
    freqs, psd_s = welch_psd(semantic.numpy(), **welch_options)
    _, psd_m = welch_psd(mechanistic.numpy(), **welch_options)
    shares = band_separation(freqs, psd_s, psd_m, cutoff)
    n_heads = semantic.shape[_HEAD_AXIS]
    return OrthogonalityResult(
        placement=placement,
        gamma=_gamma_per_head(gamma, n_heads).reshape(-1).numpy(),
        overlap=spectral_overlap(psd_s, psd_m),
        semantic_low_share=shares.semantic_low_share,
        mechanistic_high_share=shares.mechanistic_high_share,
        time_cosine=time_cosine(
            semantic.numpy(),
            mechanistic.numpy(),
            axis=_POS_AXIS,
            channel_axes=(_BATCH_AXIS, _CHANNEL_AXIS),
        ),
        freqs=freqs,
        psd_semantic=psd_s,
        psd_mechanistic=psd_m,
        cutoff=float(cutoff),
        nperseg=int(nperseg),
    )
