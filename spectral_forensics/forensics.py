"""All per-head forensics of one model joined: spectra, transfer functions, placement audit,
DC/AC orthogonality and induction scores, with a short classification of each head.

Classification thresholds (stored with every report):

- ``induction`` when the induction score is at least 0.4 (mean attention to the token after
  the previous occurrence, on repeated random tokens);
- otherwise ``DC-dominated`` when the band DC fraction is at least 0.6, ``AC-dominated`` when it
  is at most 0.4, else ``mixed``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spectral_forensics.analysis import analyse, head_gammas
from spectral_forensics.audit import SharedPassAudit
from spectral_forensics.extract import _rope_rotate, hook_name, select_heads
from spectral_forensics.metrics.induction import HeadScores, induction_scores
from spectral_forensics.metrics.orthogonality import orthogonality
from spectral_forensics.models import LoadedModel
from spectral_forensics.results import BodeAnalysis, PlacementAudit

log = logging.getLogger(__name__)

THRESHOLDS = {"induction": 0.4, "dc_dominated": 0.6, "ac_dominated": 0.4}


@dataclass
class ForensicReport:
    """Everything measured on one model, ready for :func:`spectral_forensics.report_forensics.write_forensic_report`."""

    analysis: BodeAnalysis
    audit: PlacementAudit | None
    induction: HeadScores
    orthogonality: dict[str, Any]
    thresholds: dict[str, float] = field(default_factory=lambda: dict(THRESHOLDS))

    def records(self) -> list[dict[str, Any]]:
        """Return one record per (layer, head) joining every measurement, plus its class."""
        rows = self.analysis.records()
        lookup_induction = {(r["layer"], r["head"]): r for r in self.induction.records()}
        audit_rows = {}
        if self.audit is not None:
            for r in self.audit.records():
                audit_rows.setdefault((r["layer"], r["kv_head"]), []).append(r)
        for row in rows:
            key = (row["layer"], row["head"])
            scores = lookup_induction.get(key, {})
            for name in ("induction", "duplicate_token", "previous_token", "copying"):
                row[f"{name}_score"] = scores.get(name)
            for placement, result in self.orthogonality.items():
                li = self.analysis.layers.index(row["layer"])
                hi = self.analysis.heads.index(row["head"])
                row[f"overlap_{placement}"] = float(result[li].overlap[hi])
                row[f"time_cosine_{placement}"] = float(result[li].time_cosine[hi])
                row[f"mechanistic_high_share_{placement}"] = float(result[li].mechanistic_high_share[hi])
            for a in audit_rows.get((row["layer"], row["kv_head"]), []):
                tag = a["measurement"].replace(" ", "_")
                row[f"audit_verdict_{tag}"] = a["verdict"]
                row[f"audit_r_{tag}"] = a["r_post_closed_form"]
            row["class"] = classify(row, self.thresholds)
        return rows


def classify(row: dict[str, Any], thresholds: dict[str, float] = THRESHOLDS) -> str:
    """Return ``induction``, ``DC-dominated``, ``AC-dominated`` or ``mixed`` for one head record."""
    score = row.get("induction_score")
    if score is not None and math.isfinite(score) and score >= thresholds["induction"]:
        return "induction"
    dc = row.get("band_dc_fraction")
    if dc is None or not math.isfinite(dc):
        return "unclassified"
    if dc >= thresholds["dc_dominated"]:
        return "DC-dominated"
    if dc <= thresholds["ac_dominated"]:
        return "AC-dominated"
    return "mixed"


class _QueryCapture:
    """Keep each layer's ``hook_q`` of the first window, as a read-only observer."""

    def __init__(self, layers: list[int], heads: list[int]) -> None:
        self.layers = layers
        self.head_index = torch.tensor(heads, dtype=torch.long)
        self.captured: dict[int, torch.Tensor] = {}

    def observers(self) -> list[tuple[str, Any]]:
        def keep(layer):
            def hook(x, hook):
                if layer not in self.captured:
                    self.captured[layer] = select_heads(x[:1].detach(), self.head_index).double()

            return hook

        return [(hook_name(layer, "q"), keep(layer)) for layer in self.layers]


def _query_orthogonality(loaded: LoadedModel, captured: dict[int, torch.Tensor], layers, gammas, nperseg):
    """Orthogonality of each head's queries at both placements, from unsheared ``hook_q``."""
    rope = loaded.rope
    out: dict[str, list] = {"post_rope": [], "pre_rope": []}
    for li, layer in enumerate(layers):
        q = captured[layer]
        gamma = torch.from_numpy(np.maximum(gammas[li], 1e-12))[None, None, :, None]
        out["post_rope"].append(
            orthogonality(_rope_rotate(q, rope, rope.pairing), gamma, "post_rope", nperseg=nperseg)
        )
        out["pre_rope"].append(
            orthogonality(q, gamma, "pre_rope", rope.theta, pairing=rope.pairing, nperseg=nperseg,
                          positions=torch.arange(q.shape[1]))
        )
    return out


def run_forensics(
    loaded: LoadedModel,
    windows: torch.Tensor,
    *,
    text_source: str = "",
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    gamma: float | None = None,
    nperseg: int = 64,
    batch_size: int = 4,
    audit_windows: int = 1,
    induction_batch: int = 8,
    progress: bool = True,
) -> ForensicReport:
    """Run every per-head measurement on ``windows`` of token ids.

    Parameters
    ----------
    loaded : LoadedModel
        The model; a Momentum Attention model is measured with its own γ and placement.
    windows : torch.Tensor
        Token ids ``(n_windows, window)`` (text, or random ids for tokenizer-less models).
    gamma : float, optional
        γ for plain models: the shear attached for the audit and the γ of the orthogonality
        split and overlays. Default 1.0 for those analyses; the audit is skipped without it.
    audit_windows : int
        Windows the placement audit reads (the first ones). The shear is a fixed linear
        filter, so its per-band response is measured with coherence near 1 from one window.
    induction_batch : int
        Rows of repeated random tokens for the induction scores; each scored head averages
        about 16 positions per row.

    The orthogonality split and the placement audit read their activations through observers
    on the spectral analysis's forward pass (see :class:`spectral_forensics.audit.SharedPassAudit`
    for how a plain model's shear is measured there), so neither runs a pass of its own.
    """
    if isinstance(audit_windows, bool) or not isinstance(audit_windows, int) or audit_windows < 1:
        raise ValueError(f"audit_windows={audit_windows!r} is not valid; give a whole number of windows >= 1")
    rope = loaded.rope
    rope.require_rope("The forensic report")
    layers = list(range(rope.n_layers)) if layers is None else list(layers)
    heads = list(range(rope.n_heads)) if heads is None else list(heads)
    model = loaded.hf_model
    momentum = hasattr(model, "momentum_gammas") and model.config.placement != "none"
    pairs = []
    if momentum:
        # Post-RoPE models shear rot_* into mom_*; pre-RoPE models shear q/k before rotation.
        pairs = [("rot_k", "mom_k"), ("rot_q", "mom_q")] if model.config.placement == "post_rope" else [("k", "mom_k"), ("q", "mom_q")]
    queries = _QueryCapture(layers, heads)
    observers = queries.observers()
    audit = None
    if momentum or gamma is not None:
        audit = SharedPassAudit(loaded, layers, gamma=gamma, nperseg=nperseg, n_windows=audit_windows)
        observers += audit.observers()
    analysis = analyse(
        loaded,
        None,
        layers=layers,
        heads=heads,
        windows=windows,
        nperseg=nperseg,
        batch_size=batch_size,
        gamma=1.0 if gamma is None else gamma,
        transfer_pairs=pairs,
        progress=progress,
        text_source=text_source,
        observers=observers,
    )
    placement_audit = None if audit is None else audit.result()
    gammas = head_gammas(loaded, layers, heads, 1.0 if gamma is None else gamma)
    ortho = _query_orthogonality(loaded, queries.captured, layers, gammas, nperseg)
    scores = induction_scores(loaded.bridge, layers, batch=induction_batch, progress=progress)
    return ForensicReport(analysis=analysis, audit=placement_audit, induction=scores, orthogonality=ortho)
