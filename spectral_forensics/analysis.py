"""Run the streaming extractor over a model and a text and return per-head spectra."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spectral_forensics.data.windows import tokenize_windows
from spectral_forensics.extract import StreamingExtractor
from spectral_forensics.models import LoadedModel, load_model
from spectral_forensics.results import (
    BandSpectrum,
    BodeAnalysis,
    MeasuredTransfer,
    TemporalSpectrum,
)
from spectral_forensics.rope import RopeSpec
from spectral_forensics.spectral.bands import dc_band_mask
from spectral_forensics.spectral.transfer import (
    agreement,
    magnitude_db,
    momentum_response,
    transfer_from_spectra,
)

log = logging.getLogger(__name__)

DEFAULT_TOKENS = 4096
DEFAULT_WINDOW = 512
DEFAULT_NPERSEG = 128
# Variation slower than 16 tokens (about a sentence) counts as DC in the temporal spectrum.
DEFAULT_TEMPORAL_CUTOFF = 2 * math.pi / 16
# Frequencies whose coherence is below this are left out of the transfer agreement score.
COHERENCE_THRESHOLD = 0.99


def validate_indices(values: Sequence[int] | None, size: int, what: str) -> list[int]:
    """Return ``values`` (all of ``range(size)`` when None) after a range check.

    Raises
    ------
    ValueError
        An index outside ``0 .. size-1``, or an empty selection; the message gives the valid range.
    """
    if values is None:
        return list(range(size))
    values = list(dict.fromkeys(int(v) for v in values))
    if not values:
        raise ValueError(f"No {what} selected; valid {what} are 0-{size - 1}")
    bad = [v for v in values if not 0 <= v < size]
    if bad:
        raise ValueError(
            f"{what.capitalize()} {bad} out of range: this model has {size} {what}, valid are 0-{size - 1}"
        )
    return values


def default_temporal_stages(rope: RopeSpec) -> tuple[str, ...]:
    """Post-RoPE queries and keys for RoPE models, plain q and k otherwise."""
    return ("rot_q", "rot_k") if rope.has_rope else ("q", "k")


def analyse(
    model: Any = None,
    text: str | Path | None = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    tokens: int | None = DEFAULT_TOKENS,
    window: int = DEFAULT_WINDOW,
    batch_size: int = 4,
    bands: bool | None = None,
    temporal_stages: Sequence[str] | None = None,
    nperseg: int = DEFAULT_NPERSEG,
    cutoff_wavelength: float | None = None,
    temporal_cutoff: float = DEFAULT_TEMPORAL_CUTOFF,
    gamma: float = 1.0,
    transfer_pairs: Sequence[tuple[str, str]] = (),
    windows: Any = None,
    text_source: str | None = None,
    progress: bool = True,
    observers: Sequence[tuple[str, Any]] = (),
) -> BodeAnalysis:
    """Measure the RoPE-band and temporal spectra of every selected head.

    Parameters
    ----------
    model : str, path, TransformerBridge, LoadedModel or None
        Anything :func:`spectral_forensics.models.load_model` accepts; None for the embedded
        SmolLM2-135M-Instruct.
    text : str or path or None
        A UTF-8 text file; None for the default Shakespeare corpus.
    layers, heads : sequence of int, optional
        Layers and query heads to analyse (all by default).
    tokens : int or None
        Tokens to analyse from the start of the text, in whole windows (None: the whole text).
    window : int
        Tokens per forward pass; also the context length that separates DC from AC bands.
    batch_size : int
        Windows per forward pass.
    bands : bool or None
        Compute RoPE-band spectra; None means "when the model has RoPE".
    temporal_stages : sequence of str, optional
        Hook stages for the Welch spectra (default ``rot_q``, ``rot_k`` with RoPE, else ``q``, ``k``).
    nperseg : int
        Welch segment length in tokens.
    cutoff_wavelength : float, optional
        Band DC/AC cutoff in tokens (default ``window``): a band is DC when 2π/θ_i exceeds it.
    temporal_cutoff : float
        Temporal DC/AC cutoff ω_c in radians per token (default 2π/16).
    gamma : float
        Momentum coupling γ for the closed-form overlays of the plots, and for the closed form
        of measured transfer functions on models that do not store their own γ.
    transfer_pairs : sequence of (str, str)
        Stage pairs (input, output) of the same heads, such as ``("rot_k", "mom_k")``, whose
        transfer function is measured (H1 estimate and coherence) and compared with the
        closed form of the momentum shear.
    windows : torch.Tensor, optional
        Token ids ``(n_windows, window)`` to analyse instead of tokenising ``text``; ``window``
        and ``tokens`` are then taken from it. Models without a tokenizer need this.
    text_source : str, optional
        Description of ``windows`` for the report.
    progress : bool
        Show tqdm progress bars.
    observers : sequence of (str, callable)
        Extra read-only ``(hook name, fn)`` hooks run in the same forward passes, for
        measurements that share the pass (see ``StreamingExtractor.run``).

    Returns
    -------
    BodeAnalysis
    """
    if nperseg < 2:
        raise ValueError(f"nperseg={nperseg} must be at least 2 tokens")
    if nperseg > window:
        raise ValueError(
            f"nperseg={nperseg} is longer than the window of {window} tokens; use a smaller "
            "--nperseg or a longer --window"
        )
    if not (temporal_cutoff > 0 and temporal_cutoff <= math.pi):
        raise ValueError(f"temporal_cutoff={temporal_cutoff} must lie in (0, π] radians per token")
    if cutoff_wavelength is not None and not cutoff_wavelength > 0:
        raise ValueError(f"cutoff_wavelength={cutoff_wavelength} must be a positive number of tokens")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma={gamma} must be a finite number ≥ 0")

    from spectral_forensics.data.text import read_text

    if windows is not None:
        window = int(windows.shape[1])
        if nperseg > window:
            raise ValueError(
                f"nperseg={nperseg} is longer than the window of {window} tokens; use a smaller "
                "--nperseg or longer windows"
            )
    corpus = read_text(text) if windows is None else None
    loaded = model if isinstance(model, LoadedModel) else None
    if loaded is None:
        if progress:
            log.info("Loading model %s", model or "smollm2 (embedded default)")
        loaded = load_model(model)
    rope = loaded.rope
    layers = validate_indices(layers, rope.n_layers, "layers")
    heads = validate_indices(heads, rope.n_heads, "heads")
    if bands is None:
        bands = rope.has_rope
    elif bands:
        rope.require_rope("The RoPE-band spectrum")
    stages = tuple(temporal_stages) if temporal_stages else default_temporal_stages(rope)
    if windows is None:
        if loaded.tokenizer is None:
            raise ValueError(
                f"Model {loaded.name!r} has no tokenizer, so it cannot read a text. Save a tokenizer "
                "next to the weights, or pass token windows."
            )
        source = str(text) if text is not None else "default Shakespeare corpus"
        windows = tokenize_windows(corpus, loaded.tokenizer, window, tokens, source=source)
    else:
        source = text_source or "token windows supplied by the caller"

    extractor = StreamingExtractor(
        loaded.bridge,
        rope,
        layers,
        heads,
        bands=bands,
        temporal_stages=stages,
        nperseg=nperseg,
        transfer_pairs=tuple(tuple(p) for p in transfer_pairs),
    )
    stats = extractor.run(windows, batch_size=batch_size, progress=progress, observers=observers)
    rope = stats.rope
    transfers = [
        measured_transfer_result(stats, pair, head_gammas(loaded, layers, heads, gamma))
        for pair in extractor.transfer_pairs
    ]

    band_spectrum = None
    if bands:
        cutoff = float(cutoff_wavelength or window)
        band_spectrum = BandSpectrum(
            theta=np.asarray(rope.theta, dtype=float),
            cross=stats.cross_mean,
            q_energy=stats.q_energy,
            k_energy=stats.k_energy,
            dc_mask=np.asarray(dc_band_mask(rope.theta, cutoff)),
            cutoff_wavelength=cutoff,
        )
    temporal = TemporalSpectrum(
        freqs=stats.freqs,
        psd={stage: stats.psd(stage) for stage in stages},
        cutoff=float(temporal_cutoff),
        nperseg=nperseg,
    )
    return BodeAnalysis(
        model_name=loaded.name,
        layers=layers,
        heads=heads,
        rope=rope.to_dict(),
        n_tokens=int(windows.numel()),
        window=window,
        bands=band_spectrum,
        temporal=temporal,
        gamma=float(gamma),
        text_source=source,
        extra={"batch_size": batch_size, "temporal_stages": list(stages)},
        transfers=transfers,
    )


def head_gammas(loaded: LoadedModel, layers: list[int], heads: list[int], default: float) -> np.ndarray:
    """γ per analysed head: the model's own couplings for Momentum Attention models, else ``default``.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_layers, n_heads)`` in the order of ``layers`` and ``heads``.
    """
    model = loaded.hf_model
    if hasattr(model, "momentum_gammas"):
        table = model.momentum_gammas().double().cpu().numpy()
        return table[np.ix_(layers, heads)]
    return np.full((len(layers), len(heads)), float(default))


def measured_transfer_result(stats, pair: tuple[str, str], gammas: np.ndarray) -> MeasuredTransfer:
    """Turn accumulated cross-spectra into a :class:`MeasuredTransfer` with its closed form.

    Notes
    -----
    H1(ω) = P_xy(ω)/P_xx(ω) with coherence C = |P_xy|²/(P_xx P_yy); the closed form is
    H(e^{jω}) = (1 + γ) − γ e^{−jω}. The agreement score r is the Pearson correlation of
    20 log10|H1| and 20 log10|H| over the frequencies with C ≥ 0.99.
    """
    pxx, pyy, pxy = stats.transfer_spectra(pair)
    estimate = transfer_from_spectra(stats.freqs, pxx, pyy, pxy)
    theory = momentum_response(stats.freqs[None, None, :], gammas[..., None])
    mask = estimate.coherence >= COHERENCE_THRESHOLD
    r, max_dev = agreement(magnitude_db(estimate.h), magnitude_db(theory), mask=mask)
    return MeasuredTransfer(
        source=pair[0],
        target=pair[1],
        freqs=stats.freqs,
        h=estimate.h,
        coherence=estimate.coherence,
        gamma=gammas,
        theory=theory,
        r=np.asarray(r, dtype=float),
        max_dev_db=np.asarray(max_dev, dtype=float),
        coherence_threshold=COHERENCE_THRESHOLD,
    )
