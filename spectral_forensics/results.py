"""Result containers of the Bode analysis: plain arrays with their axes, nothing computed lazily.

Plotting and report code read these objects and draw or serialise them; every number a test
checks is already in an array here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spectral_forensics.spectral.transfer import coriolis_error


@dataclass
class BandSpectrum:
    """RoPE-band spectrum of every analysed head.

    Attributes
    ----------
    theta : numpy.ndarray
        Band frequencies θ_i in radians per token, shape ``(n_bands,)``.
    cross : numpy.ndarray
        Complex mean product M_i = E[q_i(t) conj(k_i(s))] over causal token pairs s ≤ t,
        taken before RoPE, shape ``(n_layers, n_heads, n_bands)``.
    q_energy, k_energy : numpy.ndarray
        Band energies E|q_i|^2 and E|k_i|^2, shape ``(n_layers, n_heads, n_bands)`` (the key
        energy is that of the key/value head the query head reads).
    dc_mask : numpy.ndarray
        Boolean, shape ``(n_bands,)``: True where the band wavelength 2π/θ_i exceeds
        ``cutoff_wavelength`` (a slow, "semantic" band).
    cutoff_wavelength : float
        DC/AC cutoff in tokens (by default the analysed context length).
    """

    theta: np.ndarray
    cross: np.ndarray
    q_energy: np.ndarray
    k_energy: np.ndarray
    dc_mask: np.ndarray
    cutoff_wavelength: float

    @property
    def magnitude_db(self) -> np.ndarray:
        """|M_i| in dB (20 log10), shape ``(n_layers, n_heads, n_bands)``."""
        return 20 * np.log10(np.maximum(np.abs(self.cross), np.finfo(float).tiny))

    @property
    def phase_deg(self) -> np.ndarray:
        """arg M_i in degrees, shape ``(n_layers, n_heads, n_bands)``."""
        return np.degrees(np.angle(self.cross))

    @property
    def dc_fraction(self) -> np.ndarray:
        """Share of Σ_i |M_i| in DC bands, shape ``(n_layers, n_heads)``; NaN where Σ_i |M_i| = 0."""
        mag = np.abs(self.cross)
        total = mag.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return mag[..., self.dc_mask].sum(-1) / total


@dataclass
class TemporalSpectrum:
    """Welch power spectra of head activations along the token axis.

    Attributes
    ----------
    freqs : numpy.ndarray
        Frequencies ω in radians per token, shape ``(n_freq,)``, from 0 to π.
    psd : dict of str to numpy.ndarray
        Per hook stage (``"rot_q"``, ``"rot_k"``, ...), the power spectral density averaged over
        the head's channels and all windows, shape ``(n_layers, n_heads, n_freq)``. Key stages
        are indexed by query head (the key/value head each query head reads).
    cutoff : float
        DC/AC cutoff ω_c in radians per token.
    nperseg : int
        Welch segment length in tokens.
    """

    freqs: np.ndarray
    psd: dict[str, np.ndarray]
    cutoff: float
    nperseg: int

    def dc_fraction(self, stage: str) -> np.ndarray:
        """Share of power below ``cutoff`` for ``stage``, shape ``(n_layers, n_heads)``."""
        psd = self.psd[stage]
        low = self.freqs < self.cutoff
        total = psd.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return psd[..., low].sum(-1) / total


@dataclass
class MeasuredTransfer:
    """Measured transfer function between two hook stages of the same heads, with its closed form.

    Attributes
    ----------
    source, target : str
        Input and output stages (``"rot_k"``, ``"mom_k"``).
    freqs : numpy.ndarray
        Frequencies ω in radians per token, shape ``(n_freq,)``.
    h : numpy.ndarray
        Complex H1 estimate P_xy/P_xx, shape ``(n_layers, n_heads, n_freq)``.
    coherence : numpy.ndarray
        Magnitude-squared coherence in [0, 1], same shape as ``h``.
    gamma : numpy.ndarray
        γ of the closed form per head, shape ``(n_layers, n_heads)``.
    theory : numpy.ndarray
        Closed-form post-RoPE response (1 + γ) − γ e^{−jω}, same shape as ``h``.
    r : numpy.ndarray
        Pearson correlation of measured and closed-form |H| in dB over the frequencies where
        the coherence is at least ``coherence_threshold``, shape ``(n_layers, n_heads)``.
    max_dev_db : numpy.ndarray
        Largest |measured − closed form| in dB over the same frequencies.
    coherence_threshold : float
        Coherence a frequency needs to enter ``r`` and ``max_dev_db``.
    """

    source: str
    target: str
    freqs: np.ndarray
    h: np.ndarray
    coherence: np.ndarray
    gamma: np.ndarray
    theory: np.ndarray
    r: np.ndarray
    max_dev_db: np.ndarray
    coherence_threshold: float

    @property
    def name(self) -> str:
        """``"source:target"``, the form the command line takes."""
        return f"{self.source}:{self.target}"


@dataclass
class BodeAnalysis:
    """Everything the ``bode`` command measures on one model and text.

    Attributes
    ----------
    model_name : str
        Name or path of the analysed model.
    layers, heads : list of int
        Analysed layer and query-head indices; array axes follow this order.
    rope : dict
        ``RopeSpec.to_dict()`` of the model.
    n_tokens : int
        Tokens analysed (windows × window).
    window : int
        Tokens per window (the context length of each forward pass).
    bands : BandSpectrum or None
        RoPE-band spectra; None for a model without rotary embeddings.
    temporal : TemporalSpectrum
        Welch spectra per stage.
    gamma : float
        Momentum coupling γ used for the closed-form overlays in plots.
    text_source : str
        Where the text came from (file path or the default corpus name).
    transfers : list of MeasuredTransfer
        Measured transfer functions between stage pairs (empty unless requested).
    extra : dict
        Free-form settings worth recording (stages, cutoffs, versions).
    """

    model_name: str
    layers: list[int]
    heads: list[int]
    rope: dict[str, Any]
    n_tokens: int
    window: int
    bands: BandSpectrum | None
    temporal: TemporalSpectrum
    gamma: float = 1.0
    text_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    transfers: list[MeasuredTransfer] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        """Return one flat record per (layer, head) with the scalar metrics.

        Keys: ``layer``, ``head``, ``kv_head``, ``band_dc_fraction``, ``peak_band``,
        ``peak_theta`` (radians per token), ``peak_magnitude_db``, ``peak_phase_deg``,
        ``q_energy``, ``k_energy``, per temporal stage S ``temporal_dc_fraction_S`` and, per
        measured transfer A:B, ``transfer_r_A_B``, ``transfer_max_dev_db_A_B`` and
        ``transfer_gamma_A_B``.
        Band keys are None for a model without rotary embeddings.
        """
        group = self.rope["n_heads"] // self.rope["n_kv_heads"]
        rows = []
        for li, layer in enumerate(self.layers):
            for hi, head in enumerate(self.heads):
                row: dict[str, Any] = {"layer": layer, "head": head, "kv_head": head // group}
                if self.bands is not None:
                    mag = np.abs(self.bands.cross[li, hi])
                    peak = int(np.argmax(mag))
                    row.update(
                        band_dc_fraction=float(self.bands.dc_fraction[li, hi]),
                        peak_band=peak,
                        peak_theta=float(self.bands.theta[peak]),
                        peak_magnitude_db=float(self.bands.magnitude_db[li, hi, peak]),
                        peak_phase_deg=float(self.bands.phase_deg[li, hi, peak]),
                        q_energy=float(self.bands.q_energy[li, hi].sum()),
                        k_energy=float(self.bands.k_energy[li, hi].sum()),
                    )
                else:
                    row.update(
                        band_dc_fraction=None,
                        peak_band=None,
                        peak_theta=None,
                        peak_magnitude_db=None,
                        peak_phase_deg=None,
                        q_energy=None,
                        k_energy=None,
                    )
                for stage in self.temporal.psd:
                    row[f"temporal_dc_fraction_{stage}"] = float(
                        self.temporal.dc_fraction(stage)[li, hi]
                    )
                for transfer in self.transfers:
                    suffix = f"{transfer.source}_{transfer.target}"
                    row[f"transfer_r_{suffix}"] = float(transfer.r[li, hi])
                    row[f"transfer_max_dev_db_{suffix}"] = float(transfer.max_dev_db[li, hi])
                    row[f"transfer_gamma_{suffix}"] = float(transfer.gamma[li, hi])
                rows.append(row)
        return rows


@dataclass
class PlacementMeasurement:
    """The measured per-band response of one shear configuration.

    Attributes
    ----------
    label : str
        ``"native post_rope"`` for a momentum model's own shear, ``"attached pre_rope"`` for a
        shear attached to a plain model, and so on.
    placement : str
        The placement the shear actually had (``"post_rope"`` or ``"pre_rope"``).
    freqs : numpy.ndarray
        Two-sided frequencies ω in radians per token, ascending in [−π, π), shape ``(n_freq,)``.
    h, coherence : numpy.ndarray
        Per-band H1 estimate and coherence, shape ``(n_layers, n_kv_heads, n_bands, n_freq)``.
    rms_db : dict of str to numpy.ndarray
        RMS of measured − closed-form |H| in dB over coherent frequencies and all bands, per
        hypothesis (``"post_rope"``, ``"pre_rope"``), shape ``(n_layers, n_kv_heads)``.
    r : numpy.ndarray
        Agreement score: Pearson correlation of the measured |H| in dB, pooled over bands and
        coherent frequencies, with the post-RoPE closed form, shape ``(n_layers, n_kv_heads)``.
    mismatch : numpy.ndarray
        Per-band mean |H_i(ω) − H(ω)| over coherent frequencies, the measured distance from the
        post-RoPE closed form, shape ``(n_layers, n_kv_heads, n_bands)``.
    verdict : numpy.ndarray of str
        Per head: the hypothesis with the lower RMS error if it is below the match tolerance,
        else ``"neither"``.
    accuracy : float or None
        Task accuracy of the model in this configuration, when measured.
    """

    label: str
    placement: str
    freqs: np.ndarray
    h: np.ndarray
    coherence: np.ndarray
    rms_db: dict[str, np.ndarray]
    r: np.ndarray
    mismatch: np.ndarray
    verdict: np.ndarray
    accuracy: float | None = None


@dataclass
class PlacementAudit:
    """Result of :func:`audit_rope_placement`.

    Attributes
    ----------
    model_name : str
    layers : list of int
        Analysed layers.
    kv_heads : list of int
        Analysed key/value heads (the key stage has one head per key/value head).
    theta : numpy.ndarray
        Band frequencies in radians per token.
    gamma : numpy.ndarray
        γ per layer and key/value head.
    native_placement : str or None
        The placement a Momentum Attention model was built with; None for plain models.
    measurements : list of PlacementMeasurement
    settings : dict
    """

    model_name: str
    layers: list[int]
    kv_heads: list[int]
    theta: np.ndarray
    gamma: np.ndarray
    native_placement: str | None
    measurements: list[PlacementMeasurement]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def expected_mismatch(self) -> np.ndarray:
        """2γ|sin(θ_i/2)| per layer, head and band: the pre-RoPE shear's distance from H."""
        return coriolis_error(self.theta[None, None, :], self.gamma[..., None])

    def records(self) -> list[dict[str, Any]]:
        """Return one flat record per measurement, layer and key/value head."""
        rows = []
        for m in self.measurements:
            for li, layer in enumerate(self.layers):
                for gi, kv in enumerate(self.kv_heads):
                    rows.append(
                        {
                            "measurement": m.label,
                            "placement": m.placement,
                            "layer": layer,
                            "kv_head": kv,
                            "gamma": float(self.gamma[li, gi]),
                            "r_post_closed_form": float(m.r[li, gi]),
                            "rms_db_post_rope": float(m.rms_db["post_rope"][li, gi]),
                            "rms_db_pre_rope": float(m.rms_db["pre_rope"][li, gi]),
                            "verdict": str(m.verdict[li, gi]),
                            "max_band_mismatch": float(np.nanmax(m.mismatch[li, gi])),
                            "accuracy": m.accuracy,
                        }
                    )
        return rows
