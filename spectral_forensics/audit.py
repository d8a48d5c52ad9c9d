"""RoPE placement audit: does a head's momentum shear act after RoPE or before it?

For every analysed key/value head and RoPE band i, the audit measures the transfer function
from the unsheared post-RoPE key band r_i(t) to the key band that attention uses, r̂_i(t), and
compares it with the two closed forms, written in the post-RoPE frame:

- post-RoPE shear: H(e^{jω}) = (1 + γ) − γ e^{−jω}, the same high-pass for every band;
- pre-RoPE shear: H_i^pre(e^{jω}) = (1 + γ) − γ e^{jθ_i} e^{−jω}, the high-pass shifted by θ_i,
  so that |H_i^pre(e^{jω})| = |H(e^{j(ω − θ_i)})|.

Their difference has magnitude 2γ|sin(θ_i/2)| at every ω, negligible in slow bands and largest
in fast ones. Band signals are complex (z = x_re + j x_im), so spectra are two-sided.

Sources of the sheared keys:

- a Momentum Attention model: its own placement and γ (``hook_mom_k`` after RoPE, or
  ``hook_rot_k`` of the sheared key before it);
- any other rotary bridge: the shear is attached both ways with a chosen γ
  (:func:`spectral_forensics.momentum.attach.attach_momentum`), and both are measured.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from spectral_forensics.extract import NonFiniteActivationError, hook_name, select_heads
from spectral_forensics.models import LoadedModel
from spectral_forensics.results import PlacementAudit, PlacementMeasurement
from spectral_forensics.rope import RopeSpec
from spectral_forensics.spectral.bands import to_bands
from spectral_forensics.spectral.transfer import (
    agreement,
    cross_spectra,
    magnitude_db,
    momentum_response,
    momentum_response_pre_rope,
    transfer_from_spectra,
)

log = logging.getLogger(__name__)

PLACEMENTS = ("post_rope", "pre_rope")
COHERENCE_THRESHOLD = 0.99
# A head "matches" a closed form when its measured |H| stays within this RMS error (dB) over
# the coherent frequencies of all bands.
MATCH_TOLERANCE_DB = 0.5


def _rotate(k: torch.Tensor, rope: RopeSpec) -> torch.Tensor:
    """RoPE rotation of ``(batch, pos, head, d_head)`` keys at positions 0..pos-1, float64."""
    from spectral_forensics.extract import _rope_rotate

    return _rope_rotate(k.double(), rope, rope.pairing)


class _BandTransferAccumulator:
    """Running two-sided cross-spectra of complex band signals per layer and key/value head."""

    def __init__(self, n_layers: int, rope: RopeSpec, nperseg: int) -> None:
        self.rope = rope
        self.nperseg = nperseg
        self.sums: list[np.ndarray] | None = None
        self.freqs: np.ndarray | None = None
        self.count = 0
        self.n_layers = n_layers

    def add(self, li: int, x: torch.Tensor, y: torch.Tensor) -> None:
        re, im = self.rope.band_dimensions()
        xb = to_bands(x, re, im).numpy()
        yb = to_bands(y.double(), re, im).numpy()
        freqs, pxx, pyy, pxy = cross_spectra(xb, yb, self.nperseg, axis=1, average_axes=(0,), detrend=False)
        if self.sums is None:
            shape = (self.n_layers,) + pxx.shape
            self.sums = [np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=np.complex128)]
            self.freqs = freqs
        batch = x.shape[0]
        self.sums[0][li] += pxx * batch
        self.sums[1][li] += pyy * batch
        self.sums[2][li] += pxy * batch

    def estimate(self):
        order = np.argsort(self.freqs)
        pxx, pyy, pxy = (s[..., order] / max(self.count, 1) for s in self.sums)
        return transfer_from_spectra(self.freqs[order], pxx, pyy, pxy)


def _measure(
    loaded: LoadedModel,
    windows: torch.Tensor,
    layers: list[int],
    kv_heads: list[int],
    output_stage: str,
    before_attached: bool,
    nperseg: int,
    batch_size: int,
    progress: bool,
    label: str,
):
    """Accumulate band cross-spectra from rotate(hook_k) to ``output_stage`` for each window batch.

    With ``before_attached`` the ``hook_k`` captures are put first on their hook points, ahead
    of an attached pre-RoPE shear on the same hook, so they read the unsheared key.
    """
    from spectral_forensics.momentum.attach import remove_hook

    rope = loaded.rope
    acc = _BandTransferAccumulator(len(layers), rope, nperseg)
    kv_index = torch.tensor(kv_heads, dtype=torch.long)
    stop = max(layers) + 1
    pending: dict[int, torch.Tensor] = {}
    fired: set[str] = set()

    def capture_k(li: int, layer: int):
        name = hook_name(layer, "k")

        def hook(x, hook):
            fired.add(name)
            k = select_heads(x.detach(), kv_index).double()
            if not torch.isfinite(k).all():
                raise NonFiniteActivationError(f"Non-finite key activation at layer {layer} ({name})")
            pending[li] = _rotate(k, rope)
            return x

        return hook

    def capture_out(li: int, layer: int):
        name = hook_name(layer, output_stage)

        def hook(y, hook):
            fired.add(name)
            acc.add(li, pending.pop(li), select_heads(y.detach(), kv_index))
            return y

        return hook

    hooks = []
    first: list[tuple[str, Any]] = []
    for li, layer in enumerate(layers):
        (first if before_attached else hooks).append((hook_name(layer, "k"), capture_k(li, layer)))
        hooks.append((hook_name(layer, output_stage), capture_out(li, layer)))
    expected = {name for name, _ in hooks + first}
    registered = [
        (loaded.bridge.hook_dict[name], loaded.bridge.hook_dict[name].add_hook(fn, prepend=True))
        for name, fn in first
    ]
    bar = tqdm(total=windows.shape[0], desc=f"audit {label}", unit="win", disable=not progress)
    try:
        with torch.no_grad():
            for start in range(0, windows.shape[0], batch_size):
                batch = windows[start : start + batch_size]
                fired.clear()
                loaded.bridge.run_with_hooks(
                    batch,
                    fwd_hooks=hooks,
                    return_type=None,
                    stop_at_layer=stop,
                )
                if expected - fired:
                    raise RuntimeError(
                        f"Hook(s) {sorted(expected - fired)[:4]} did not fire; the placement audit needs "
                        "hook_k and the post-shear key stage of every analysed layer."
                    )
                acc.count += batch.shape[0]
                bar.update(batch.shape[0])
    finally:
        for hook_point, lens_handle in registered:
            remove_hook(hook_point, lens_handle)
        bar.close()
    return acc.estimate()


def _native_shear(loaded: LoadedModel, layers: list[int], kv_heads: list[int]) -> tuple[str, np.ndarray]:
    """Return a Momentum Attention model's placement and its γ per layer and key/value head."""
    model = loaded.hf_model
    placement = model.config.placement
    if placement not in PLACEMENTS:
        raise ValueError(
            f"Model {loaded.name!r} has placement={placement!r}: it applies no shear, so there is "
            "nothing to audit. Audit a post_rope or pre_rope model, or attach the shear with --gamma."
        )
    table = model.momentum_gammas().double().cpu().numpy()[layers]
    return placement, table[:, [h * loaded.rope.group_size for h in kv_heads]]


def _score(estimate, theta: np.ndarray, gamma: np.ndarray, label: str, placement: str) -> PlacementMeasurement:
    freqs = estimate.freqs
    g = gamma[:, :, None, None]
    post = momentum_response(freqs[None, None, None, :], g)
    pre = momentum_response_pre_rope(freqs, g, theta[None, None, :])
    measured_db = magnitude_db(estimate.h)
    coherent = estimate.coherence >= COHERENCE_THRESHOLD
    rms = {}
    for name, closed in (("post_rope", post), ("pre_rope", pre)):
        error = np.where(coherent, measured_db - magnitude_db(closed), np.nan)
        n_layers, n_heads = error.shape[:2]
        with np.errstate(invalid="ignore"):
            rms[name] = np.sqrt(np.nanmean(error.reshape(n_layers, n_heads, -1) ** 2, axis=-1))
    flat_shape = estimate.h.shape[:2] + (-1,)
    r, _ = agreement(
        measured_db.reshape(flat_shape),
        np.broadcast_to(magnitude_db(post), measured_db.shape).reshape(flat_shape),
        mask=coherent.reshape(flat_shape),
    )
    with np.errstate(invalid="ignore"):
        mismatch = np.nanmean(np.where(coherent, np.abs(estimate.h - post), np.nan), axis=-1)
    best = np.where(rms["post_rope"] <= rms["pre_rope"], "post_rope", "pre_rope")
    best_rms = np.minimum(rms["post_rope"], rms["pre_rope"])
    verdict = np.where(best_rms <= MATCH_TOLERANCE_DB, best, "neither").astype(object)
    return PlacementMeasurement(
        label=label,
        placement=placement,
        freqs=freqs,
        h=estimate.h,
        coherence=estimate.coherence,
        rms_db=rms,
        r=np.asarray(r, dtype=float),
        mismatch=mismatch,
        verdict=verdict,
    )


def random_windows(vocab_size: int, n_windows: int, window: int, seed: int = 0) -> torch.Tensor:
    """Uniform random token ids, for models without a tokenizer (the shear is input-independent)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size} is too small for random token windows")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n_windows, window), generator=generator)


def audit_rope_placement(
    loaded: LoadedModel,
    windows: torch.Tensor,
    *,
    gamma: float | None = None,
    layers: list[int] | None = None,
    nperseg: int = 64,
    batch_size: int = 4,
    task_accuracy=None,
    progress: bool = True,
) -> PlacementAudit:
    """Measure each key head's per-band shear response and name the consistent RoPE placement.

    Parameters
    ----------
    loaded : LoadedModel
        A Momentum Attention model (audited as built) or any rotary model (the shear is
        attached with ``gamma`` at both placements in turn).
    windows : torch.Tensor
        Token ids ``(n_windows, window)``.
    gamma : float, optional
        γ to attach to a plain model; required there, ignored for momentum models.
    layers : list of int, optional
        Layers to audit (all by default).
    nperseg : int
        Welch segment length in tokens; the frequency resolution is 2π/nperseg.
    task_accuracy : callable, optional
        ``task_accuracy(model) -> float`` for trained task models: the audit then also
        evaluates the Momentum Attention model with its shear at each placement (the same
        weights, the placement switched) and records both accuracies.

    Raises
    ------
    ValueError
        A model without RoPE, a plain model without ``gamma``, a γ that is negative or not
        finite, or windows shorter than ``nperseg``.
    """
    rope = loaded.rope
    rope.require_rope("The RoPE placement audit")
    layers = list(range(rope.n_layers)) if layers is None else list(layers)
    if windows.shape[1] < nperseg:
        raise ValueError(
            f"Windows of {windows.shape[1]} tokens are shorter than nperseg={nperseg}, so the "
            f"frequency resolution 2π/{nperseg} cannot be reached; use longer windows or a smaller "
            "--nperseg."
        )
    kv_heads = list(range(rope.n_kv_heads))
    model = loaded.hf_model
    measurements = []
    native = None
    task_accuracies = None
    if hasattr(model, "momentum_gammas"):
        native, gammas = _native_shear(loaded, layers, kv_heads)
        output_stage = "mom_k" if native == "post_rope" else "rot_k"
        estimate = _measure(loaded, windows, layers, kv_heads, output_stage, False, nperseg, batch_size, progress, native)
        measurement = _score(estimate, rope.theta, gammas, f"native {native}", native)
        if task_accuracy is not None:
            accuracies = placement_accuracies(model, task_accuracy)
            measurement.accuracy = accuracies[native]
            task_accuracies = accuracies
        measurements.append(measurement)
    else:
        if gamma is None:
            raise ValueError(
                f"Model {loaded.name!r} has no momentum shear of its own; pass --gamma to attach the "
                "shear at both placements and audit them."
            )
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma={gamma} must be a finite number ≥ 0")
        from spectral_forensics.momentum.attach import attach_momentum

        gammas = np.full((len(layers), len(kv_heads)), float(gamma))
        for placement in PLACEMENTS:
            handle = attach_momentum(loaded.bridge, gamma, placement=placement, layers=layers)
            try:
                estimate = _measure(
                    loaded, windows, layers, kv_heads, "rot_k", placement == "pre_rope", nperseg, batch_size,
                    progress, placement,
                )
            finally:
                handle.detach()
            measurements.append(_score(estimate, rope.theta, gammas, f"attached {placement}", placement))
    return PlacementAudit(
        model_name=loaded.name,
        layers=layers,
        kv_heads=kv_heads,
        theta=np.asarray(rope.theta, dtype=float),
        gamma=gammas,
        native_placement=native,
        measurements=measurements,
        settings={
            "n_windows": int(windows.shape[0]),
            "window": int(windows.shape[1]),
            "nperseg": nperseg,
            "coherence_threshold": COHERENCE_THRESHOLD,
            "match_tolerance_db": MATCH_TOLERANCE_DB,
            "task_accuracy": task_accuracies,
        },
    )


def placement_accuracies(model, task_accuracy) -> dict[str, float]:
    """Task accuracy of a Momentum Attention model with its shear at each placement.

    The weights stay the same; only where the shear acts changes, on a copy of the model.
    """
    import copy

    out = {}
    for placement in PLACEMENTS:
        variant = copy.deepcopy(model).eval()
        variant.config.placement = placement
        for layer in variant.model.layers:
            layer.self_attn.placement = placement
        out[placement] = float(task_accuracy(variant))
    return out


class SharedPassAudit:
    """The placement audit as read-only observers on another measurement's forward pass.

    It reads the first ``n_windows`` windows that pass through the hooks. A Momentum Attention
    model is measured from its own hooks (``hook_k`` to ``hook_mom_k`` or ``hook_rot_k``), as
    in :func:`audit_rope_placement`. For a plain rotary model the shear is applied to copies
    of each layer's keys at both placements: after RoPE to ``hook_rot_k``, and before RoPE to
    ``hook_k`` followed by the RoPE rotation whose pairing the extractor checks. The model's own
    activations are left unchanged, so the pass still measures the plain model, and no forward
    pass of the audit's own is needed. :func:`audit_rope_placement` instead attaches the shear
    inside the model and runs a pass per placement.

    Use :meth:`observers` as ``observers=`` of :func:`spectral_forensics.analysis.analyse`,
    then :meth:`result`.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        layers: list[int],
        *,
        gamma: float | None = None,
        nperseg: int = 64,
        n_windows: int = 1,
    ) -> None:
        rope = loaded.rope
        rope.require_rope("The RoPE placement audit")
        model = loaded.hf_model
        self.loaded = loaded
        self.layers = list(layers)
        self.kv_heads = list(range(rope.n_kv_heads))
        self.nperseg = nperseg
        self.n_windows = n_windows
        self.native = None
        if hasattr(model, "momentum_gammas"):
            self.native, self.gamma = _native_shear(loaded, self.layers, self.kv_heads)
            self.placements = [self.native]
        else:
            if gamma is None or not (math.isfinite(gamma) and gamma >= 0):
                raise ValueError(f"gamma={gamma} must be a finite number ≥ 0 to audit a model without its own shear")
            self.gamma = np.full((len(self.layers), len(self.kv_heads)), float(gamma))
            self.placements = list(PLACEMENTS)
        self.accumulators = {p: _BandTransferAccumulator(len(self.layers), rope, nperseg) for p in self.placements}
        self._kv_index = torch.tensor(self.kv_heads, dtype=torch.long)
        self._keys: dict[int, torch.Tensor] = {}
        self._seen = [0] * len(self.layers)
        self._rows = [0] * len(self.layers)
        self._window: int | None = None

    def _take(self, li: int, x: torch.Tensor) -> torch.Tensor | None:
        rows = max(0, self.n_windows - self._seen[li])
        return select_heads(x[:rows].detach(), self._kv_index) if rows else None

    def observers(self) -> list[tuple[str, Any]]:
        """``(hook name, fn)`` pairs that read the keys and never change them."""
        from spectral_forensics.momentum.operator import momentum_shear

        rope = self.loaded.rope
        stage = {"post_rope": "mom_k", "pre_rope": "rot_k"}.get(self.native, "rot_k")

        def read_key(li, layer):
            def hook(x, hook):
                k = self._take(li, x)
                if k is not None:
                    if not torch.isfinite(k).all():
                        raise NonFiniteActivationError(f"Non-finite key activation at layer {layer} (hook_k)")
                    self._keys[li] = k.double()
                    self._window = int(k.shape[1])

            return hook

        def read_output(li):
            def hook(y, hook):
                y = self._take(li, y)
                self._seen[li] += y.shape[0] if y is not None else self.n_windows
                if y is None:
                    return
                k = self._keys.pop(li)
                rotated = _rotate(k, rope)
                self._rows[li] += k.shape[0]
                if self.native is not None:
                    self.accumulators[self.native].add(li, rotated, y)
                    return
                gamma = torch.from_numpy(self.gamma[li])[None, None, :, None]
                self.accumulators["post_rope"].add(li, rotated, momentum_shear(y.double(), gamma, 1))
                self.accumulators["pre_rope"].add(li, rotated, _rotate(momentum_shear(k, gamma, 1), rope))

            return hook

        hooks = []
        for li, layer in enumerate(self.layers):
            hooks.append((hook_name(layer, "k"), read_key(li, layer)))
            hooks.append((hook_name(layer, stage), read_output(li)))
        return hooks

    def result(self) -> PlacementAudit:
        """Score what the observers read; raise RuntimeError if they read nothing."""
        if min(self._rows) == 0:
            raise RuntimeError(
                "The placement audit observers read no keys; pass SharedPassAudit.observers() to the "
                "forward pass before calling result()."
            )
        rope = self.loaded.rope
        measurements = []
        for placement, acc in self.accumulators.items():
            acc.count = self._rows[0]
            label = f"native {placement}" if self.native else f"attached {placement}"
            measurements.append(_score(acc.estimate(), rope.theta, self.gamma, label, placement))
        return PlacementAudit(
            model_name=self.loaded.name,
            layers=self.layers,
            kv_heads=self.kv_heads,
            theta=np.asarray(rope.theta, dtype=float),
            gamma=self.gamma,
            native_placement=self.native,
            measurements=measurements,
            settings={
                "n_windows": self._rows[0],
                "window": self._window,
                "nperseg": self.nperseg,
                "coherence_threshold": COHERENCE_THRESHOLD,
                "match_tolerance_db": MATCH_TOLERANCE_DB,
                "task_accuracy": None,
                "source": "observers on the analysis pass" + ("" if self.native else "; shear applied to copies of the keys"),
            },
        )
