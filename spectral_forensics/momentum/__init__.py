"""Momentum Attention: the shear operator, the Hugging Face model and its TransformerLens bridge.

``operator`` and ``modeling`` are imported eagerly (importing ``modeling`` registers the model
type ``"momentum"`` with the transformers Auto classes). The TransformerLens parts,
``MomentumArchitectureAdapter``, ``MomentumAttentionBridge``, ``attach_momentum`` and
``MomentumHandle``, load on first access because importing TransformerLens takes seconds.
"""

from __future__ import annotations

import importlib
from typing import Any

from spectral_forensics.momentum.modeling import (
    CheckpointMismatchError,
    MomentumConfig,
    MomentumForCausalLM,
    MomentumModel,
)
from spectral_forensics.momentum.operator import (
    document_starts_from_ids,
    inverse_momentum_shear,
    kinematic_momentum,
    momentum_shear,
    phase_space_matrix,
    validate_gamma,
)

_LAZY = {
    "MomentumArchitectureAdapter": "spectral_forensics.momentum.adapter",
    "MomentumAttentionBridge": "spectral_forensics.momentum.adapter",
    "boot_momentum_bridge": "spectral_forensics.momentum.adapter",
    "build_momentum_bridge": "spectral_forensics.momentum.adapter",
    "MomentumHandle": "spectral_forensics.momentum.attach",
    "attach_momentum": "spectral_forensics.momentum.attach",
}

__all__ = [
    "CheckpointMismatchError",
    "MomentumConfig",
    "MomentumForCausalLM",
    "MomentumModel",
    "document_starts_from_ids",
    "inverse_momentum_shear",
    "kinematic_momentum",
    "momentum_shear",
    "phase_space_matrix",
    "validate_gamma",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
