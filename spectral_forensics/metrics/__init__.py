"""Per-head metrics: induction behaviour of a bridge and DC/AC orthogonality of the shear.

- :mod:`~spectral_forensics.metrics.induction`: induction, duplicate-token, previous-token
  and copying scores of every head, from repeated random tokens and OV-circuit eigenvalues.
- :mod:`~spectral_forensics.metrics.orthogonality`: spectral overlap, band separation and
  time-domain cosine between the semantic and the mechanistic part of a sheared head. Its
  all-in-one function shares the module's name, so it is not re-exported here: import it as
  ``from spectral_forensics.metrics.orthogonality import orthogonality``.
"""

from spectral_forensics.metrics.induction import (
    HeadScores,
    RepeatedTokenBatch,
    copying_scores,
    induction_scores,
    model_vocab_size,
    repeated_token_batch,
    special_token_ids,
)
from spectral_forensics.metrics.orthogonality import (
    DEFAULT_CUTOFF,
    BandSeparation,
    OrthogonalityResult,
    band_separation,
    spectral_overlap,
    split_semantic_mechanistic,
    time_cosine,
)

__all__ = [
    "DEFAULT_CUTOFF",
    "BandSeparation",
    "HeadScores",
    "OrthogonalityResult",
    "RepeatedTokenBatch",
    "band_separation",
    "copying_scores",
    "induction_scores",
    "model_vocab_size",
    "repeated_token_batch",
    "special_token_ids",
    "spectral_overlap",
    "split_semantic_mechanistic",
    "time_cosine",
]
