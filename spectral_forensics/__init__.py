"""Spectral forensics of attention heads and Momentum Attention for TransformerLens 4.

Importing the package registers the Momentum Attention model with the transformers Auto
classes, so ``AutoModelForCausalLM.from_pretrained`` loads saved momentum checkpoints.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

from spectral_forensics.momentum import modeling as _momentum_modeling  # noqa: E402,F401
