"""Closed-form and measured transfer functions of the momentum shear along the token axis.

The shear x̂_t = (1 + γ) x_t - γ x_{t-1} is a causal first-order FIR filter with

    H(z) = (1 + γ) - γ z^{-1},    H(e^{jω}) = (1 + γ) - γ e^{-jω},

ω in radians per token. The functions here evaluate that response (and its RoPE-band shifted
form for a shear applied before RoPE), and estimate a transfer function from two recorded hook
stages with Welch cross-spectra, so that the two can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.signal

from spectral_forensics.spectral.temporal import (
    SAMPLING_RATE,
    _as_numpy,
    _normalize_average_axes,
    _normalize_axis,
    average_segments,
    segment_spectra,
    validate_nperseg,
)

__all__ = [
    "TransferEstimate",
    "agreement",
    "coriolis_error",
    "cross_spectra",
    "highpass_magnitude",
    "magnitude_db",
    "measured_transfer",
    "momentum_coefficients",
    "momentum_phase",
    "momentum_response",
    "momentum_response_pre_rope",
    "phase_deg",
    "transfer_from_spectra",
]


def _validate_gamma(gamma: Any) -> np.ndarray:
    """Return γ as a float64 array, raising ValueError unless every entry is finite and >= 0."""
    try:
        values = np.asarray(gamma, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"gamma={gamma!r} is not a number or an array of numbers. Pass finite floats >= 0."
        ) from error
    bad = values[~np.isfinite(values) | (values < 0)]
    if bad.size:
        invalid_text = ", ".join(f"{v:g}" for v in bad[:4])
        raise ValueError(
            f"gamma contains invalid value(s) {invalid_text}, but the momentum coupling must be "
            "finite and >= 0 (0 turns the shear off)."
        )
    return values


def momentum_coefficients(gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the filter coefficients of the momentum shear for scipy.signal.

    Parameters
    ----------
    gamma : float
        Momentum coupling γ >= 0 (dimensionless).

    Returns
    -------
    b, a : numpy.ndarray
        Numerator ``[1 + γ, -γ]`` and denominator ``[1]``, as used by
        ``scipy.signal.freqz(b, a)`` and ``scipy.signal.lfilter(b, a, x)``.

    Notes
    -----
    y_t = (1 + γ) x_t - γ x_{t-1}, that is H(z) = (b_0 + b_1 z^{-1}) / a_0 with
    b_0 = 1 + γ, b_1 = -γ, a_0 = 1. ``lfilter`` starts from x_{-1} = 0, which matches the
    shear's first token only when the sequence starts at zero. The operator in
    ``spectral_forensics.momentum.operator`` leaves the first token unchanged instead.

    Examples
    --------
    >>> b, a = momentum_coefficients(0.5)
    >>> b.tolist(), a.tolist()
    ([1.5, -0.5], [1.0])
    """
    values = _validate_gamma(gamma)
    if values.ndim != 0:
        raise ValueError(
            f"gamma has shape {values.shape}, but momentum_coefficients takes one scalar coupling. "
            "Call it once per value, or use momentum_response for arrays of couplings."
        )
    g = float(values)
    return np.array([1.0 + g, -g]), np.array([1.0])


def momentum_response(omega: Any, gamma: Any) -> np.ndarray:
    """Evaluate the frequency response of the momentum shear.

    Parameters
    ----------
    omega : array_like
        Frequencies ω in radians per token (normally 0 to π).
    gamma : float or array_like
        Momentum coupling γ >= 0, broadcast against ``omega`` with numpy rules: for one
        coupling per head and a frequency grid of shape ``(n_freq,)`` pass
        ``gamma[:, None]`` to get shape ``(head, n_freq)``.

    Returns
    -------
    numpy.ndarray
        Complex response H(e^{jω}), shape ``broadcast(omega, gamma)``.

    Notes
    -----
    H(e^{jω}) = (1 + γ) - γ e^{-jω}, so

        |H|^2 = 1 + 4 γ (1 + γ) sin^2(ω / 2),

    |H(e^{j0})| = 1 (a constant passes unchanged) and |H(e^{jπ})| = 1 + 2γ. The only zero is at
    z = γ / (1 + γ), inside the unit circle, so the filter is minimum phase.

    Examples
    --------
    >>> import numpy as np
    >>> h = momentum_response(np.array([0.0, np.pi]), 1.0)
    >>> np.round(np.abs(h), 6).tolist()
    [1.0, 3.0]
    >>> momentum_response(np.zeros(4), np.array([0.5, 1.0])[:, None]).shape
    (2, 4)
    """
    omega = np.asarray(omega, dtype=np.float64)
    gamma = _validate_gamma(gamma)
    return (1.0 + gamma) - gamma * np.exp(-1j * omega)


def momentum_response_pre_rope(
    omega: Any, gamma: Any, theta: Any, direction: int = 1
) -> np.ndarray:
    """Evaluate the per-band response of a shear applied before RoPE, in the post-RoPE frame.

    Parameters
    ----------
    omega : array_like
        Frequencies ω in radians per token, shape ``(n_freq,)`` or any shape that broadcasts
        against ``theta[..., None]``.
    gamma : float or array_like
        Momentum coupling γ >= 0, broadcast against the result with numpy rules.
    theta : array_like
        RoPE band frequencies θ_i in radians per token, shape ``(n_bands,)``.
    direction : {1, -1}, optional
        Direction in which RoPE turns band i = x[re_i] + j x[im_i]: +1 when position t
        multiplies the band by e^{+j θ_i t} (the rotation of Llama-style models, written
        r_t = e^{j θ_i t} x_t), -1 for e^{-j θ_i t}. Default 1.

    Returns
    -------
    numpy.ndarray
        Complex responses H_i^pre(e^{jω}), shape ``broadcast(theta[..., None], omega, gamma)``,
        for example ``(n_bands, n_freq)``.

    Notes
    -----
    With r_t = e^{j d θ_i t} x_t (d = ``direction``) and the shear applied to x_t before the
    rotation,

        r̂_t = (1 + γ) r_t - γ e^{j d θ_i} r_{t-1},
        H_i^pre(e^{jω}) = (1 + γ) - γ e^{j d θ_i} e^{-jω} = H(e^{j(ω - d θ_i)}),

    so |H_i^pre(e^{jω})| = |H(e^{j(ω - d θ_i)})|: band i's response is the post-RoPE response
    shifted by d θ_i, with unity gain at ω = d θ_i instead of at DC. A real channel,
    which contains both ±ω, also shows the mirrored shift at -d θ_i.

    Examples
    --------
    >>> import numpy as np
    >>> h = momentum_response_pre_rope(np.array([0.0, 0.5]), 1.0, np.array([0.0, 0.5]))
    >>> h.shape
    (2, 2)
    >>> round(float(np.abs(h[1, 1])), 6)  # band θ = 0.5 passes ω = 0.5 unchanged
    1.0
    """
    if direction not in (1, -1):
        raise ValueError(
            f"direction={direction!r} is invalid. Use 1 for a rotation e^(+j θ t) or -1 for "
            "e^(-j θ t)."
        )
    omega = np.asarray(omega, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    gamma = _validate_gamma(gamma)
    shift = np.exp(1j * direction * theta[..., None])
    return (1.0 + gamma) - gamma * shift * np.exp(-1j * omega)


def highpass_magnitude(omega: Any, gamma: Any) -> np.ndarray:
    """Return the magnitude of the added momentum term γ (1 - z^{-1}) alone.

    Parameters
    ----------
    omega : array_like
        Frequencies ω in radians per token.
    gamma : float or array_like
        Momentum coupling γ >= 0, broadcast against ``omega``.

    Returns
    -------
    numpy.ndarray
        |γ (1 - e^{-jω})|, shape ``broadcast(omega, gamma)``.

    Notes
    -----
    |γ (1 - e^{-jω})| = 2 γ |sin(ω / 2)|: zero at DC and 2γ at ω = π, a pure high-pass.

    Examples
    --------
    >>> import numpy as np
    >>> float(highpass_magnitude(np.pi, 0.5))
    1.0
    """
    omega = np.asarray(omega, dtype=np.float64)
    gamma = _validate_gamma(gamma)
    return 2.0 * gamma * np.abs(np.sin(omega / 2.0))


def coriolis_error(theta: Any, gamma: Any) -> np.ndarray:
    """Return the per-band mismatch between the pre-RoPE and post-RoPE shear responses.

    Parameters
    ----------
    theta : array_like
        RoPE band frequencies θ_i in radians per token.
    gamma : float or array_like
        Momentum coupling γ >= 0, broadcast against ``theta``.

    Returns
    -------
    numpy.ndarray
        |H_i^pre(e^{jω}) - H(e^{jω})|, the same at every ω, shape ``broadcast(theta, gamma)``.

    Notes
    -----
    H_i^pre - H = γ (1 - e^{j θ_i}) e^{-jω}, whose magnitude is 2 γ |sin(θ_i / 2)|, for either
    direction of rotation: negligible in slow bands (θ_i near 0), largest in fast bands.

    Examples
    --------
    >>> import numpy as np
    >>> np.round(coriolis_error(np.array([0.0, np.pi]), 1.0), 6).tolist()
    [0.0, 2.0]
    """
    return highpass_magnitude(theta, gamma)


def momentum_phase(omega: Any, gamma: Any) -> np.ndarray:
    """Return the phase of the momentum shear's frequency response in radians.

    Parameters
    ----------
    omega : array_like
        Frequencies ω in radians per token.
    gamma : float or array_like
        Momentum coupling γ >= 0, broadcast against ``omega``.

    Returns
    -------
    numpy.ndarray
        arg H(e^{jω}) in radians, in [0, π/2) for ω in [0, π] (a phase lead).

    Notes
    -----
    H(e^{jω}) = (1 + γ - γ cos ω) + j γ sin ω, so

        arg H = atan2(γ sin ω, (1 + γ) - γ cos ω).

    Examples
    --------
    >>> import numpy as np
    >>> float(momentum_phase(np.pi / 2, 1.0)) == float(np.arctan2(1.0, 2.0))
    True
    """
    omega = np.asarray(omega, dtype=np.float64)
    gamma = _validate_gamma(gamma)
    return np.arctan2(gamma * np.sin(omega), (1.0 + gamma) - gamma * np.cos(omega))


def magnitude_db(h: Any, floor: float = float(np.finfo(np.float64).tiny)) -> np.ndarray:
    """Convert an amplitude response to decibels.

    Parameters
    ----------
    h : array_like
        Complex or real amplitudes (a transfer function or a band product M_i), not powers.
    floor : float, optional
        Smallest magnitude converted. Smaller ones, zeros included, are clipped to it so the
        result stays finite. Default: the smallest positive normal float64, about -6153 dB.

    Returns
    -------
    numpy.ndarray
        20 log10(max(|h|, floor)) in dB, float64.

    Notes
    -----
    For a power spectrum P use 10 log10 P, which equals 20 log10 of the amplitude √P.

    Examples
    --------
    >>> import numpy as np
    >>> np.round(magnitude_db(np.array([1.0, 10j, 0.0])), 1).tolist()
    [0.0, 20.0, -6153.1]
    """
    if not floor > 0:
        raise ValueError(f"floor={floor!r} must be a positive magnitude, for example 1e-12.")
    return 20.0 * np.log10(np.maximum(np.abs(np.asarray(h)), floor))


def phase_deg(h: Any, unwrap: bool = False, axis: int = -1) -> np.ndarray:
    """Return the phase of complex amplitudes in degrees.

    Parameters
    ----------
    h : array_like
        Complex amplitudes.
    unwrap : bool, optional
        If True, remove 360° jumps along ``axis`` (``numpy.unwrap``), as a Bode phase plot
        over frequency needs. Default False: each value in (-180°, 180°].
    axis : int, optional
        Frequency axis used when ``unwrap`` is True. Default -1.

    Returns
    -------
    numpy.ndarray
        arg h in degrees.

    Examples
    --------
    >>> import numpy as np
    >>> phase_deg(np.array([1j, -1.0])).tolist()
    [90.0, 180.0]
    """
    angle = np.angle(np.asarray(h))
    if unwrap:
        angle = np.unwrap(angle, axis=axis)
    return np.degrees(angle)


@dataclass(frozen=True)
class TransferEstimate:
    """Transfer function between two signals estimated from Welch cross-spectra.

    Attributes
    ----------
    freqs : numpy.ndarray
        Frequencies ω in radians per token, shape ``(n_freq,)``.
    h : numpy.ndarray
        Complex H1 estimate P_xy / P_xx, frequency axis last, NaN where P_xx = 0.
    coherence : numpy.ndarray
        Magnitude-squared coherence |P_xy|^2 / (P_xx P_yy) in [0, 1], same shape as ``h``,
        NaN where P_xx P_yy = 0.
    pxx, pyy : numpy.ndarray
        Auto-spectral densities of input and output, same shape as ``h``.
    pxy : numpy.ndarray
        Cross-spectral density (complex), same shape as ``h``.
    """

    freqs: np.ndarray
    h: np.ndarray
    coherence: np.ndarray
    pxx: np.ndarray
    pyy: np.ndarray
    pxy: np.ndarray

    @property
    def magnitude_db(self) -> np.ndarray:
        """|H| in dB (20 log10), floored like :func:`magnitude_db`. NaN stays NaN."""
        return magnitude_db(self.h)

    @property
    def phase_deg(self) -> np.ndarray:
        """arg H in degrees, in (-180°, 180°]."""
        return phase_deg(self.h)


def cross_spectra(
    x: Any,
    y: Any,
    nperseg: int,
    axis: int = -1,
    average_axes: int | Sequence[int] | None = None,
    *,
    noverlap: int | None = None,
    window: str | tuple = "hann",
    detrend: str | bool = "constant",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Compute the auto- and cross-spectral densities of two signals, averaged over extra axes.

    Parameters
    ----------
    x, y : numpy.ndarray or torch.Tensor
        Input and output signals of the same shape, for example two hook stages of the same
        heads with shape ``(batch, pos, head, d_head)``.
    nperseg : int
        Welch segment length in tokens, 2 <= nperseg <= ``x.shape[axis]``.
    axis : int, optional
        Token axis. Default -1.
    average_axes : int or sequence of int, optional
        Axes of ``x`` (channels, batch, windows) over which the spectra are averaged. Default
        None: no averaging.
    noverlap, window, detrend : optional
        Welch settings, as in :func:`spectral_forensics.spectral.temporal.welch_psd`.

    Returns
    -------
    freqs : numpy.ndarray
        Frequencies in radians per token, shape ``(n_freq,)``.
    pxx, pyy : numpy.ndarray
        Auto-spectral densities of ``x`` and ``y``, frequency axis last, ``axis`` and
        ``average_axes`` removed.
    pxy : numpy.ndarray
        Cross-spectral density, same shape, complex.

    Notes
    -----
    P_xx = ``scipy.signal.welch(x)``, P_yy = ``welch(y)`` and P_xy = ``scipy.signal.csd(x, y)``
    (scipy's convention P_xy = E[conj(X) Y], so P_xy / P_xx = H for y = h * x), all with
    fs = 2π. Without linear detrending they come from one FFT of each signal's segments and
    equal scipy's within float rounding. Averaging the spectra, not the ratios, keeps the estimate unbiased by noise in
    y. A caller that streams windows can sum these spectra over windows and pass the sums to
    :func:`transfer_from_spectra`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((4, 256))
    >>> freqs, pxx, pyy, pxy = cross_spectra(x, 2 * x, nperseg=32, average_axes=0)
    >>> pxx.shape, bool(np.allclose(pxy, 2 * pxx))
    ((17,), True)
    """
    x = _as_numpy(x, "x")
    y = _as_numpy(y, "y")
    if x.shape != y.shape:
        raise ValueError(
            f"x has shape {x.shape} but y has shape {y.shape}. Pass two stages of the same heads "
            "with identical shapes (expand key heads to query heads first if needed)."
        )
    token_axis = _normalize_axis(axis, x.ndim, "axis")
    axes = _normalize_average_axes(average_axes, token_axis, x.ndim)
    validate_nperseg(x.shape[token_axis], nperseg, noverlap)

    settings = dict(
        fs=SAMPLING_RATE,
        window=window,
        nperseg=nperseg,
        noverlap=noverlap,
        detrend=detrend,
        axis=token_axis,
    )
    if detrend in (False, "constant"):
        # The same estimates from one FFT of each signal's segments (see welch_psd).
        two_sided = np.iscomplexobj(x) or np.iscomplexobj(y)
        freqs, fx, scale = segment_spectra(x, nperseg, noverlap, window, detrend, token_axis, two_sided)
        _, fy, _ = segment_spectra(y, nperseg, noverlap, window, detrend, token_axis, two_sided)
        pxx = average_segments(fx.real**2 + fx.imag**2, scale, nperseg, two_sided, token_axis)
        pyy = average_segments(fy.real**2 + fy.imag**2, scale, nperseg, two_sided, token_axis)
        pxy = average_segments(np.conj(fx) * fy, scale, nperseg, two_sided, token_axis)
    else:
        freqs, pxx = scipy.signal.welch(x, **settings)
        _, pyy = scipy.signal.welch(y, **settings)
        _, pxy = scipy.signal.csd(x, y, **settings)

    spectra = []
    kept_axes = [a for a in range(x.ndim) if a != token_axis]
    squeeze = tuple(kept_axes.index(a) for a in axes)
    for spectrum in (pxx, pyy, pxy):
        if axes:
            spectrum = spectrum.mean(axis=axes, keepdims=True)
        spectrum = np.moveaxis(spectrum, token_axis, -1)
        if squeeze:
            spectrum = spectrum.squeeze(axis=squeeze)
        spectra.append(spectrum)
    return freqs, spectra[0], spectra[1], spectra[2]


def transfer_from_spectra(
    freqs: np.ndarray, pxx: Any, pyy: Any, pxy: Any
) -> TransferEstimate:
    """Form the H1 transfer estimate and the coherence from (averaged) spectral densities.

    Parameters
    ----------
    freqs : numpy.ndarray
        Frequencies in radians per token, shape ``(n_freq,)``.
    pxx, pyy : array_like
        Auto-spectral densities of input and output, frequency axis last.
    pxy : array_like
        Cross-spectral density E[conj(X) Y], same shape.

    Returns
    -------
    TransferEstimate

    Notes
    -----
    H1(ω) = P_xy(ω) / P_xx(ω) and C_xy(ω) = |P_xy(ω)|^2 / (P_xx(ω) P_yy(ω)). A linear
    time-invariant stage without added noise gives C_xy = 1, and noise or non-linearity in y
    lowers it. C_xy of spectra from a single segment is identically 1, so it only carries
    information when the spectra average several segments or channels.

    Examples
    --------
    >>> import numpy as np
    >>> est = transfer_from_spectra(np.array([0.0, 1.0]), np.array([2.0, 1.0]),
    ...                             np.array([8.0, 1.0]), np.array([4.0, 0.5]))
    >>> est.h.real.tolist(), est.coherence.tolist()
    ([2.0, 0.5], [1.0, 0.25])
    """
    freqs = np.asarray(freqs, dtype=np.float64)
    pxx = np.asarray(pxx)
    pyy = np.asarray(pyy)
    pxy = np.asarray(pxy)
    if not pxx.shape == pyy.shape == pxy.shape:
        raise ValueError(
            f"pxx, pyy and pxy have shapes {pxx.shape}, {pyy.shape}, {pxy.shape}, but they "
            "must match."
        )
    if pxx.ndim == 0 or pxx.shape[-1] != freqs.shape[0]:
        raise ValueError(
            f"the spectra have shape {pxx.shape} but freqs has {freqs.shape[0]} bins. The "
            "frequency axis must be last and match freqs."
        )
    valid_x = pxx > 0
    valid_xy = valid_x & (pyy > 0)
    h = np.divide(pxy, pxx, out=np.full(pxy.shape, np.nan, dtype=pxy.dtype), where=valid_x)
    denominator = pxx * pyy
    coherence = np.divide(
        np.abs(pxy) ** 2,
        denominator,
        out=np.full(pxx.shape, np.nan, dtype=np.result_type(pxx.dtype, np.float32)),
        where=valid_xy,
    )
    return TransferEstimate(freqs=freqs, h=h, coherence=coherence, pxx=pxx, pyy=pyy, pxy=pxy)


def measured_transfer(
    x: Any,
    y: Any,
    nperseg: int,
    axis: int = -1,
    average_axes: int | Sequence[int] | None = None,
    *,
    noverlap: int | None = None,
    window: str | tuple = "hann",
    detrend: str | bool = "constant",
) -> TransferEstimate:
    """Estimate the transfer function from ``x`` to ``y`` along the token axis.

    Parameters
    ----------
    x, y : numpy.ndarray or torch.Tensor
        Input and output stage of the same heads, identical shapes, for example
        ``(batch, pos, head, d_head)``.
    nperseg : int
        Welch segment length in tokens, 2 <= nperseg <= ``x.shape[axis]``. The frequency
        resolution is 2π / nperseg radians per token.
    axis : int, optional
        Token axis. Default -1.
    average_axes : int or sequence of int, optional
        Axes averaged in the spectra before dividing (channels, batch, windows). Default None.
    noverlap, window, detrend : optional
        Welch settings, as in :func:`spectral_forensics.spectral.temporal.welch_psd`. The
        default constant detrend removes each segment's mean, so the DC bin has little power
        and a low coherence there.

    Returns
    -------
    TransferEstimate
        ``freqs`` in radians per token, ``h`` and ``coherence`` with the frequency axis last
        and ``axis`` and ``average_axes`` removed, e.g. ``(head, n_freq)`` for
        ``axis=1, average_axes=(0, 3)``.

    Raises
    ------
    ValueError
        If the shapes differ or ``nperseg`` is invalid for the sequence length.

    Notes
    -----
    H1(ω) = P_xy(ω) / P_xx(ω) with P_xy = E[conj(X) Y] and P_xx = E|X|^2 averaged over Welch
    segments and ``average_axes``, and C_xy(ω) = |P_xy|^2 / (P_xx P_yy). The spectra come from
    :func:`cross_spectra`, the ratio from :func:`transfer_from_spectra`.

    Examples
    --------
    >>> import numpy as np, scipy.signal
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((16, 1024))
    >>> b, a = momentum_coefficients(1.0)
    >>> est = measured_transfer(x, scipy.signal.lfilter(b, a, x), nperseg=64, average_axes=0)
    >>> theory = momentum_response(est.freqs, 1.0)
    >>> bool(np.allclose(np.abs(est.h[1:]), np.abs(theory[1:]), rtol=0.02))
    True
    """
    freqs, pxx, pyy, pxy = cross_spectra(
        x,
        y,
        nperseg,
        axis,
        average_axes,
        noverlap=noverlap,
        window=window,
        detrend=detrend,
    )
    return transfer_from_spectra(freqs, pxx, pyy, pxy)


def agreement(
    measured_db: Any, theory_db: Any, mask: Any = None, axis: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Compare a measured and a theoretical magnitude response in dB.

    Parameters
    ----------
    measured_db, theory_db : array_like
        |H| in dB, broadcastable against each other, frequency axis at ``axis``.
    mask : array_like of bool, optional
        Frequencies to compare (for example ``coherence >= 0.99``), broadcastable against the
        inputs. Non-finite values are always left out. Default: all frequencies.
    axis : int, optional
        Frequency axis. Default -1.

    Returns
    -------
    r : numpy.ndarray
        Pearson correlation of the two curves over the selected frequencies, shape of the
        inputs without ``axis`` (a 0-d array for 1-D inputs). NaN where fewer than two
        frequencies are selected or either curve is constant over them.
    max_dev_db : numpy.ndarray
        max |measured - theory| in dB over the selected frequencies, NaN where none is selected.

    Notes
    -----
    r = Σ (m_k - m̄)(t_k - t̄) / sqrt(Σ (m_k - m̄)^2 Σ (t_k - t̄)^2) over the selected bins k.
    r measures the shape of the curve and ignores a constant gain offset, which ``max_dev_db``
    catches.

    Examples
    --------
    >>> import numpy as np
    >>> r, dev = agreement(np.array([0.0, 1.0, 2.5]), np.array([0.0, 1.0, 2.0]))
    >>> round(float(r), 3), float(dev)
    (0.993, 0.5)
    """
    measured = np.asarray(measured_db, dtype=np.float64)
    theory = np.asarray(theory_db, dtype=np.float64)
    try:
        measured, theory = np.broadcast_arrays(measured, theory)
    except ValueError as error:
        raise ValueError(
            f"measured_db has shape {measured.shape} and theory_db has shape {theory.shape}, but "
            "they must broadcast against each other."
        ) from error
    if measured.ndim == 0:
        raise ValueError("measured_db and theory_db are scalars. Pass curves over frequency.")
    freq_axis = _normalize_axis(axis, measured.ndim, "axis")

    selected = np.isfinite(measured) & np.isfinite(theory)
    if mask is not None:
        try:
            selected = selected & np.broadcast_to(np.asarray(mask, dtype=bool), selected.shape)
        except ValueError as error:
            raise ValueError(
                f"mask has shape {np.shape(mask)}, which does not broadcast to the curves' "
                f"shape {selected.shape}."
            ) from error

    weight = selected.astype(np.float64)
    measured = np.where(selected, measured, 0.0)
    theory = np.where(selected, theory, 0.0)
    count = weight.sum(axis=freq_axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        measured_mean = measured.sum(axis=freq_axis, keepdims=True) / count
        theory_mean = theory.sum(axis=freq_axis, keepdims=True) / count
        dm = np.where(selected, measured - measured_mean, 0.0)
        dt = np.where(selected, theory - theory_mean, 0.0)
        covariance = (dm * dt).sum(axis=freq_axis)
        spread = np.sqrt((dm**2).sum(axis=freq_axis) * (dt**2).sum(axis=freq_axis))
        r = np.where((count.squeeze(freq_axis) >= 2) & (spread > 0), covariance / spread, np.nan)
    deviation = np.where(selected, np.abs(measured - theory), -np.inf).max(axis=freq_axis)
    max_dev = np.where(np.isfinite(deviation), deviation, np.nan)
    return r, max_dev
