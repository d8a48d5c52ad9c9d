"""Numerical spectra of attention heads: pure functions on numpy arrays and torch tensors.

- :mod:`~spectral_forensics.spectral.transfer`: the momentum shear's closed-form frequency
  response and transfer functions measured from two hook stages with Welch cross-spectra.
- :mod:`~spectral_forensics.spectral.bands`: RoPE band components and the per-band causal
  cross sums and energies behind a head's band spectrum.
- :mod:`~spectral_forensics.spectral.temporal`: Welch power spectra along the token axis and
  their DC/AC split.

Frequencies are in radians per token throughout. These modules import numpy, scipy and torch
only, never a model or TransformerLens.
"""

from spectral_forensics.spectral.bands import (
    band_dc_fraction,
    band_energy_sum,
    causal_cross_sum,
    dc_band_mask,
    expand_kv_heads,
    to_bands,
)
from spectral_forensics.spectral.temporal import (
    dc_ac_split,
    peak_frequency,
    validate_nperseg,
    welch_psd,
)
from spectral_forensics.spectral.transfer import (
    TransferEstimate,
    agreement,
    coriolis_error,
    cross_spectra,
    highpass_magnitude,
    magnitude_db,
    measured_transfer,
    momentum_coefficients,
    momentum_phase,
    momentum_response,
    momentum_response_pre_rope,
    phase_deg,
    transfer_from_spectra,
)

__all__ = [
    "TransferEstimate",
    "agreement",
    "band_dc_fraction",
    "band_energy_sum",
    "causal_cross_sum",
    "coriolis_error",
    "cross_spectra",
    "dc_ac_split",
    "dc_band_mask",
    "expand_kv_heads",
    "highpass_magnitude",
    "magnitude_db",
    "measured_transfer",
    "momentum_coefficients",
    "momentum_phase",
    "momentum_response",
    "momentum_response_pre_rope",
    "peak_frequency",
    "phase_deg",
    "to_bands",
    "transfer_from_spectra",
    "validate_nperseg",
    "welch_psd",
]
