"""Spectral forensics of attention heads and Momentum Attention for TransformerLens 4.

Importing the package registers the Momentum Attention model with the transformers Auto
classes and with TransformerLens, so ``AutoModelForCausalLM.from_pretrained`` and
``TransformerBridge.boot_transformers`` load saved momentum checkpoints.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

from spectral_forensics.momentum import modeling as _momentum_modeling  # noqa: E402,F401

# TransformerLens 4.3 resolves the architecture of boot_transformers(path) from its built-in
# table only, not from the transformer_lens.architectures entry point, so the adapter module
# adds MomentumForCausalLM to that table when imported.
from spectral_forensics.momentum import adapter as _momentum_adapter  # noqa: E402,F401
