"""Streaming, hook-based extraction of per-head query/key statistics.

The extractor hooks ``blocks.{layer}.attn.hook_{stage}`` of a TransformerLens 4 bridge and turns
each window's activations into running sums inside the hooks, so no activation cache of the
model is ever held: memory stays at one layer's activations for one batch of windows.

Stages are TransformerLens hook names without the ``hook_`` prefix: ``q`` and ``k`` (before
RoPE), ``rot_q`` and ``rot_k`` (after RoPE), and any other per-head attention hook such as the
momentum model's ``mom_q`` and ``mom_k``. Activations of query stages have shape
``(batch, pos, head, d_head)``; key stages have ``n_kv_heads`` heads and are mapped to query
heads under grouped-query attention (query head h reads key/value head
h // (n_heads / n_kv_heads)).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from spectral_forensics.rope import ADJACENT_PAIRS, ROTATE_HALF, RopeSpec, band_dimensions
from spectral_forensics.spectral.bands import band_energy_sum, causal_cross_sum, to_bands
from spectral_forensics.spectral.temporal import welch_psd
from spectral_forensics.spectral.transfer import cross_spectra

log = logging.getLogger(__name__)

# Relative error below which a hook_rot_q activation counts as the RoPE rotation of hook_q.
_ROPE_CHECK_TOLERANCE = 1e-3


def select_heads(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Return ``x[:, :, index]`` for activations ``(batch, pos, head, d_head)``.

    The full head range in order returns ``x`` itself (read-only use). Advanced indexing is
    used instead of ``index_select``, which is several times slower on this layout on CPU.
    """
    if index.numel() == x.shape[2] and bool((index == torch.arange(x.shape[2])).all()):
        return x
    return x[:, :, index]


class HookNotFiredError(RuntimeError):
    """A requested hook exists in the bridge's hook list but never ran during the forward pass."""


class NonFiniteActivationError(ValueError):
    """An activation contains NaN or infinity; the message names the layer, head and stage."""


def hook_name(layer: int, stage: str) -> str:
    """Return the TransformerLens hook name of ``stage`` in ``layer`` (``blocks.3.attn.hook_rot_q``)."""
    return f"blocks.{layer}.attn.hook_{stage}"


def is_key_stage(stage: str) -> bool:
    """Return whether ``stage`` contains keys (and so has one head per key/value head)."""
    return stage.endswith("k")


@dataclass
class HeadStatistics:
    """Running sums over all windows, per analysed layer and query head.

    Arrays are indexed ``[layer_index, head_index, ...]`` in the order of ``layers`` and
    ``heads``. Sums are float64/complex128 so that thousands of windows add up exactly enough.
    """

    layers: list[int]
    heads: list[int]
    rope: RopeSpec
    freqs: np.ndarray | None = None
    nperseg: int = 0
    cross_sum: np.ndarray | None = None
    pair_count: int = 0
    q_energy_sum: np.ndarray | None = None
    k_energy_sum: np.ndarray | None = None
    token_count: int = 0
    psd_sum: dict[str, np.ndarray] = field(default_factory=dict)
    psd_count: int = 0
    transfer_sums: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)
    windows: int = 0

    @property
    def cross_mean(self) -> np.ndarray:
        """M_i = E[q_i(t) conj(k_i(s))] over causal pairs, shape ``(n_layers, n_heads, n_bands)``."""
        return self.cross_sum / max(self.pair_count, 1)

    @property
    def q_energy(self) -> np.ndarray:
        """E|q_i|^2 per band, shape ``(n_layers, n_heads, n_bands)``."""
        return self.q_energy_sum / max(self.token_count, 1)

    @property
    def k_energy(self) -> np.ndarray:
        """E|k_i|^2 per band of the key/value head each query head reads."""
        return self.k_energy_sum / max(self.token_count, 1)

    def transfer_spectra(self, pair: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Averaged (P_xx, P_yy, P_xy) between two stages, each ``(n_layers, n_heads, n_freq)``."""
        n = max(self.psd_count, 1)
        pxx, pyy, pxy = self.transfer_sums[pair]
        return pxx / n, pyy / n, pxy / n

    def psd(self, stage: str) -> np.ndarray:
        """Welch PSD of ``stage`` averaged over channels and windows, ``(n_layers, n_heads, n_freq)``."""
        return self.psd_sum[stage] / max(self.psd_count, 1)


def _check_finite(x: torch.Tensor, layer: int, stage: str, heads_axis: int = 2) -> None:
    # A sum is NaN or infinite whenever an element is (a float32 overflow of the sum itself
    # would need activations near 1e34), and costs one reduction instead of a mask.
    if bool(torch.isfinite(x.sum())):
        return
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    other_axes = [a for a in range(x.ndim) if a != heads_axis]
    bad_heads = bad.any(dim=other_axes[-1]).any(dim=other_axes[1]).any(dim=other_axes[0])
    heads = [int(h) for h in torch.nonzero(bad_heads).flatten()]
    raise NonFiniteActivationError(
        f"Non-finite activation (NaN or inf) at layer {layer}, {'key/value ' if is_key_stage(stage) else ''}"
        f"head(s) {heads}, hook {hook_name(layer, stage)}. Check the model weights and dtype "
        "(float16 overflows are common; load in float32)."
    )


def _rope_rotate(x: torch.Tensor, rope: RopeSpec, pairing: str) -> torch.Tensor:
    """Rotate ``(batch, pos, head, d_head)`` vectors with RoPE starting at position 0."""
    re, im = band_dimensions(rope.rotary_dim, pairing)
    t = torch.arange(x.shape[1], dtype=torch.float64)
    angle = t[:, None] * torch.from_numpy(rope.theta)[None, :]
    cos = torch.cos(angle)[None, :, None, :].to(x.dtype)
    sin = torch.sin(angle)[None, :, None, :].to(x.dtype)
    out = x.clone()
    a, b = x[..., re], x[..., im]
    out[..., re] = a * cos - b * sin
    out[..., im] = a * sin + b * cos
    return out


def check_rope_pairing(q: torch.Tensor, rot_q: torch.Tensor, rope: RopeSpec) -> RopeSpec:
    """Check which pairing convention turns ``hook_q`` into ``hook_rot_q`` and return the spec to use.

    Parameters
    ----------
    q, rot_q : torch.Tensor
        The same window's queries before and after RoPE, ``(batch, pos, head, d_head)``.
    rope : RopeSpec
        The layout read from the configuration.

    Returns
    -------
    RopeSpec
        ``rope`` itself when its pairing reproduces ``rot_q``; a copy with the other pairing
        (and a logged warning) when only that one does. When neither does (scaled cos/sin, a
        custom rotation), ``rope`` is returned and a logged warning states that band spectra follow the
        configuration, not the measured rotation.
    """
    errors = {}
    scale = rot_q.detach().double().norm().clamp_min(1e-30)
    for pairing in (rope.pairing, ADJACENT_PAIRS if rope.pairing == ROTATE_HALF else ROTATE_HALF):
        predicted = _rope_rotate(q.detach().double(), rope, pairing)
        errors[pairing] = float((predicted - rot_q.detach().double()).norm() / scale)
    if errors[rope.pairing] <= _ROPE_CHECK_TOLERANCE:
        return rope
    other = next(p for p in errors if p != rope.pairing)
    if errors[other] <= _ROPE_CHECK_TOLERANCE:
        log.warning(
            "hook_rot_q matches %s pairing (relative error %.1e), not the %s pairing assumed for "
            "model_type=%r; using %s.",
            other,
            errors[other],
            rope.pairing,
            rope.model_type,
            other,
        )
        return replace(rope, pairing=other)
    log.warning(
        "hook_rot_q is not the plain RoPE rotation of hook_q under either pairing (relative errors "
        "%s); band spectra use the configuration's %s pairing.",
        {k: f"{v:.1e}" for k, v in errors.items()},
        rope.pairing,
    )
    return rope


class StreamingExtractor:
    """Hook-based accumulator of per-head band and temporal statistics.

    Parameters
    ----------
    bridge : TransformerBridge
        The model.
    rope : RopeSpec
        Its RoPE layout (``rope_spec_from_config(bridge.original_model.config)``).
    layers, heads : list of int
        Layers and query heads to analyse.
    bands : bool
        Accumulate the RoPE-band spectrum from ``hook_q``/``hook_k`` (needs RoPE).
    temporal_stages : sequence of str
        Stages whose Welch spectrum along the token axis is accumulated.
    nperseg : int
        Welch segment length in tokens.
    check_pairing : bool
        Check the pairing convention against ``hook_rot_q`` on the first batch.
    transfer_pairs : sequence of (str, str)
        Stage pairs (input, output) of the same heads, such as ``("rot_k", "mom_k")``, whose
        Welch auto- and cross-spectra are accumulated for measured transfer functions.
    """

    def __init__(
        self,
        bridge,
        rope: RopeSpec,
        layers: list[int],
        heads: list[int],
        *,
        bands: bool = True,
        temporal_stages: tuple[str, ...] = ("rot_q", "rot_k"),
        nperseg: int = 128,
        check_pairing: bool = True,
        transfer_pairs: tuple[tuple[str, str], ...] = (),
    ) -> None:
        for source, target in transfer_pairs:
            if source == target or is_key_stage(source) != is_key_stage(target):
                raise ValueError(
                    f"Stages {source}:{target} do not form a transfer pair of the same heads: both "
                    "must be query stages (q, rot_q, mom_q) or both key stages (k, rot_k, mom_k), "
                    "and differ."
                )
        if bands:
            rope.require_rope("The RoPE-band spectrum")
        self.bridge = bridge
        self.rope = rope
        self.layers = list(layers)
        self.heads = list(heads)
        self.bands = bands
        self.temporal_stages = tuple(temporal_stages)
        self.nperseg = nperseg
        self.transfer_pairs = tuple(tuple(p) for p in transfer_pairs)
        self._check_pairing = check_pairing and bands
        self._head_index = torch.tensor(self.heads, dtype=torch.long)
        self._kv_index = torch.tensor([rope.kv_head(h) for h in self.heads], dtype=torch.long)
        self.stats = HeadStatistics(self.layers, self.heads, rope)
        self._pending: dict[int, dict[str, torch.Tensor]] = {}
        self._fired: set[str] = set()
        self._validate_hooks()

    # -- hooks ---------------------------------------------------------------------------

    def stages(self) -> list[str]:
        """Stages hooked in each analysed layer."""
        needed = list(self.temporal_stages)
        for pair in self.transfer_pairs:
            needed.extend(pair)
        if self.bands:
            needed = ["q", "k"] + needed
            if self._check_pairing:
                needed.append("rot_q")
        return list(dict.fromkeys(needed))

    def hook_names(self) -> list[str]:
        """Every hook the extractor attaches."""
        return [hook_name(layer, stage) for layer in self.layers for stage in self.stages()]

    def _validate_hooks(self) -> None:
        available = set(self.bridge.hook_dict)
        missing = [name for name in self.hook_names() if name not in available]
        if missing:
            stages = sorted({name.rsplit("hook_", 1)[1] for name in missing})
            attn_hooks = sorted(
                {n.split(".attn.", 1)[1] for n in available if n.startswith("blocks.0.attn.hook_")}
            )
            hint = ""
            if any(stage.startswith("mom_") for stage in stages):
                hint = (
                    " The mom_q/mom_k stages exist only in Momentum Attention models: train one with "
                    "`spectral-forensics train`, or attach the shear to this bridge with "
                    "spectral_forensics.momentum.attach.attach_momentum(bridge, gamma)."
                )
            raise ValueError(
                f"The model has no hook(s) {missing[:4]}{' ...' if len(missing) > 4 else ''}: stage(s) "
                f"{stages} do not exist. Attention hooks of this model: {attn_hooks}.{hint}"
            )

    def _make_hook(self, layer: int, stage: str):
        li = self.layers.index(layer)
        # hook.name is the canonical point (hook_q is an alias of attn.q.hook_out), so record
        # the requested name instead.
        name = hook_name(layer, stage)

        def hook(activation: torch.Tensor, hook) -> torch.Tensor:
            self._fired.add(name)
            self._consume(li, layer, stage, activation.detach())
            return activation

        return hook

    def fwd_hooks(self) -> list[tuple[str, object]]:
        """``(name, fn)`` pairs for ``bridge.hooks`` / ``run_with_hooks``."""
        return [
            (hook_name(layer, stage), self._make_hook(layer, stage))
            for layer in self.layers
            for stage in self.stages()
        ]

    # -- per-batch work ------------------------------------------------------------------

    def _consume(self, li: int, layer: int, stage: str, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise RuntimeError(
                f"Hook {hook_name(layer, stage)} produced shape {tuple(x.shape)}; per-head stages "
                "must have shape (batch, pos, head, d_head)"
            )
        _check_finite(x, layer, stage)
        x = x.float()
        pending = self._pending.setdefault(li, {})
        if stage in self.temporal_stages:
            self._add_temporal(li, stage, x)
        for pair in self.transfer_pairs:
            if stage == pair[0]:
                pending[("transfer",) + pair] = x
            elif stage == pair[1]:
                source = pending.pop(("transfer",) + pair, None)
                if source is None:
                    raise HookNotFiredError(
                        f"Stage {pair[1]} of layer {layer} ran before {pair[0]}; a transfer pair "
                        "needs its input stage to run first."
                    )
                self._add_transfer(li, pair, source, x)
        wanted = ("q", "k", "rot_q") if self._check_pairing else ("q", "k")
        if self.bands and stage in wanted:
            pending[stage] = x
            ready = "q" in pending and "k" in pending
            if ready and self._check_pairing:
                if "rot_q" not in pending:
                    return
                self.rope = check_rope_pairing(pending["q"], pending["rot_q"], self.rope)
                self.stats.rope = self.rope
                self._check_pairing = False
            if ready:
                self._add_bands(li, pending.pop("q"), pending.pop("k"))
                pending.pop("rot_q", None)

    def _add_temporal(self, li: int, stage: str, x: torch.Tensor) -> None:
        # detrend=False keeps each segment's mean: static content is the DC part of the split.
        batch, pos = x.shape[:2]
        if pos < self.nperseg:
            raise ValueError(
                f"The window has {pos} tokens, fewer than the Welch segment nperseg={self.nperseg}; "
                "use a longer --window or a smaller --nperseg."
            )
        if is_key_stage(stage):
            # One spectrum per key/value head, then one row per query head that reads it.
            freqs, psd = welch_psd(x, self.nperseg, axis=1, average_axes=(0, 3), detrend=False)
            psd = psd[self._kv_index.numpy()]
        else:
            x = select_heads(x, self._head_index)
            freqs, psd = welch_psd(x, self.nperseg, axis=1, average_axes=(0, 3), detrend=False)
        sums = self.stats.psd_sum.setdefault(
            stage, np.zeros((len(self.layers), len(self.heads), freqs.size))
        )
        if self.stats.freqs is None:
            self.stats.freqs = freqs
            self.stats.nperseg = self.nperseg
        sums[li] += psd * batch

    def _add_transfer(self, li: int, pair: tuple[str, str], x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape != y.shape:
            raise RuntimeError(
                f"Stages {pair[0]} {tuple(x.shape)} and {pair[1]} {tuple(y.shape)} differ in shape"
            )
        batch, pos = x.shape[:2]
        if pos < self.nperseg:
            raise ValueError(
                f"The window has {pos} tokens, fewer than the Welch segment nperseg={self.nperseg}; "
                "use a longer --window or a smaller --nperseg."
            )
        index = self._kv_index if is_key_stage(pair[0]) else self._head_index
        if not is_key_stage(pair[0]):
            x, y = select_heads(x, index), select_heads(y, index)
        freqs, pxx, pyy, pxy = cross_spectra(
            x, y, self.nperseg, axis=1, average_axes=(0, 3), detrend=False
        )
        if is_key_stage(pair[0]):
            rows = index.numpy()
            pxx, pyy, pxy = pxx[rows], pyy[rows], pxy[rows]
        if self.stats.freqs is None:
            self.stats.freqs = freqs
            self.stats.nperseg = self.nperseg
        sums = self.stats.transfer_sums.get(pair)
        if sums is None:
            shape = (len(self.layers), len(self.heads), freqs.size)
            sums = [np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=np.complex128)]
            self.stats.transfer_sums[pair] = sums
        sums[0][li] += pxx * batch
        sums[1][li] += pyy * batch
        sums[2][li] += pxy * batch

    def _add_bands(self, li: int, q: torch.Tensor, k: torch.Tensor) -> None:
        re, im = self.rope.band_dimensions()
        q_bands = to_bands(select_heads(q, self._head_index), re, im)
        k_bands = to_bands(select_heads(k, self._kv_index), re, im)
        cross, pairs = causal_cross_sum(q_bands, k_bands, axis=1)
        stats = self.stats
        if stats.cross_sum is None:
            shape = (len(self.layers), len(self.heads), self.rope.n_bands)
            stats.cross_sum = np.zeros(shape, dtype=np.complex128)
            stats.q_energy_sum = np.zeros(shape)
            stats.k_energy_sum = np.zeros(shape)
        stats.cross_sum[li] += np.asarray(cross, dtype=np.complex128)
        stats.q_energy_sum[li] += np.asarray(band_energy_sum(q_bands, axis=1), dtype=np.float64)
        stats.k_energy_sum[li] += np.asarray(band_energy_sum(k_bands, axis=1), dtype=np.float64)
        if li == 0:
            stats.pair_count += int(pairs)
            stats.token_count += q.shape[0] * q.shape[1]

    # -- driver --------------------------------------------------------------------------

    @torch.no_grad()
    def run(
        self,
        windows: torch.Tensor,
        batch_size: int = 4,
        progress: bool = True,
        observers: Sequence[tuple[str, Callable]] = (),
    ) -> HeadStatistics:
        """Run the model over ``windows`` (``(n_windows, window)`` token ids) and accumulate.

        The forward pass stops after the last analysed layer, so later blocks, the final norm
        and the unembedding are never computed. ``observers`` are extra ``(hook name, fn)``
        pairs that run in the same forward passes, after the extractor's hooks. Other
        measurements read activations through them instead of running their own pass. They
        must not change the activation (return None).

        Raises
        ------
        HookNotFiredError
            A hook in the bridge's hook list did not run during the first batch.
        NonFiniteActivationError
            An analysed activation contains NaN or infinity.
        """
        if windows.ndim != 2 or windows.shape[0] == 0:
            raise ValueError(f"windows must have shape (n_windows, window), got {tuple(windows.shape)}")
        # Stopping after the last analysed block also skips the final norm and the unembedding
        # (stop_at_layer = n_layers still stops before them).
        stop_at_layer = max(self.layers) + 1
        device = next(self.bridge.original_model.parameters()).device
        hooks = self.fwd_hooks() + list(observers)
        n_batches = (windows.shape[0] + batch_size - 1) // batch_size
        bar = tqdm(total=windows.shape[0], desc="windows", unit="win", disable=not progress)
        for b in range(n_batches):
            batch = windows[b * batch_size : (b + 1) * batch_size].to(device)
            self._fired.clear()
            self.bridge.run_with_hooks(
                batch, fwd_hooks=hooks, return_type=None, stop_at_layer=stop_at_layer
            )
            if b == 0:
                self._verify_fired()
            self.stats.psd_count += batch.shape[0]
            self.stats.windows += batch.shape[0]
            bar.update(batch.shape[0])
        bar.close()
        if any(self._pending.values()):
            raise HookNotFiredError(
                "Incomplete q/k pairs after the forward pass: "
                f"{ {self.layers[k]: sorted(map(str, v)) for k, v in self._pending.items() if v} }"
            )
        return self.stats

    def _verify_fired(self) -> None:
        expected = set(self.hook_names())
        silent = sorted(expected - self._fired)
        if silent:
            raise HookNotFiredError(
                f"Hook(s) {silent[:4]}{' ...' if len(silent) > 4 else ''} are listed by the bridge but "
                "did not fire during the forward pass, so their stage cannot be measured on this "
                "model. Choose other stages (see `spectral-forensics info`)."
            )
