"""Result containers of the Bode analysis: plain arrays with their axes, nothing computed lazily.

Plotting and report code read these objects and draw or serialise them; every number a test
checks is already in an array here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
