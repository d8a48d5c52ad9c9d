"""Attach the momentum shear to an existing TransformerLens bridge through hooks.

``attach_momentum(bridge, gamma)`` turns a plain rotary model (Llama, SmolLM2, ...) into its
momentum variant without copying weights: hooks shear the queries and keys that the bridge's
attention uses, and ``handle.detach()`` removes exactly those hooks again.

- ``placement="post_rope"`` hooks ``blocks.{l}.attn.hook_rot_q`` and ``hook_rot_k``. The
  attention bridges of TransformerLens 4 (``PositionEmbeddingsAttentionBridge``) compute
  scores from what those hooks return.
- ``placement="pre_rope"`` hooks ``blocks.{l}.attn.hook_q`` and ``hook_k`` (the projections
  before RoPE); the returned tensor is what gets rotated.

For the Llama layout both are checked against :class:`MomentumForCausalLM` with the same
weights in ``tests/test_momentum_attach.py``. Every attach runs a two-token forward pass that
checks the hooks fire (the GPT-NeoX/Pythia attention bridge of TransformerLens 4.3.0 never
fires ``hook_rot_q``, so post_rope raises there).

The hooks are permanent, so ``bridge.reset_hooks()`` keeps them, and they run before any
hook added later: a later hook or ``run_with_cache`` on ``hook_rot_q`` (post_rope) or
``hook_q`` (pre_rope) records the sheared tensor, which is what attention uses.

NOTE: only the Llama layout (``PositionEmbeddingsAttentionBridge``) is checked against a
reference. On other attention bridges a hook that fires does not prove that attention uses
its output.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from spectral_forensics.momentum.modeling import PLACEMENTS, expand_gamma
from spectral_forensics.momentum.operator import momentum_shear

logger = logging.getLogger(__name__)

__all__ = ["MomentumHandle", "attach_momentum"]

# Token axis of the hook tensors, which TransformerLens shows as (batch, pos, head, d_head).
_POS_AXIS = 1


def remove_hook(hook_point: Any, lens_handle: Any) -> None:
    """Remove one hook added with ``hook_point.add_hook`` and leave every other hook in place."""
    lens_handle.hook.remove()
    hook_point.fwd_hooks = [h for h in hook_point.fwd_hooks if h is not lens_handle]


class MomentumHandle:
    """Hooks that shear queries and keys of a bridge; remove them with :meth:`detach`.

    Attributes
    ----------
    bridge : TransformerBridge
        The bridge the hooks are attached to.
    placement : str
        ``"post_rope"`` or ``"pre_rope"``.
    gamma : list of list of float
        γ per layer and query head, ``(n_layers, n_heads)``.
    layers : tuple of int
        Layers that carry the shear.
    document_starts : torch.Tensor or None
        Boolean ``(batch, pos)`` or ``(pos,)`` mask of packed-document starts used by every
        forward pass while attached; assign a new mask before each batch, or None.
    """

    def __init__(
        self,
        bridge: Any,
        placement: str,
        gamma: list[list[float]],
        layers: tuple[int, ...],
        document_starts: torch.Tensor | None,
    ) -> None:
        self.bridge = bridge
        self.placement = placement
        self.gamma = gamma
        self.layers = layers
        self.document_starts = document_starts
        self._registrations: list[tuple[Any, Any]] = []
        self.fire_counts: dict[str, int] = {}

    @property
    def attached(self) -> bool:
        """True while the hooks are registered."""
        return bool(self._registrations)

    def _register(self, hook_point: Any, function: Any) -> None:
        lens_handle = hook_point.add_hook(function, is_permanent=True)
        self._registrations.append((hook_point, lens_handle))

    def detach(self) -> None:
        """Remove the hooks this handle added (and no other hook); a second call does nothing."""
        for hook_point, lens_handle in self._registrations:
            remove_hook(hook_point, lens_handle)
        if self._registrations:
            logger.debug("detached momentum hooks from layers %s", self.layers)
        self._registrations = []

    def __enter__(self) -> MomentumHandle:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"MomentumHandle(placement={self.placement!r}, layers={self.layers}, {state})"


def _shear_hook(handle: MomentumHandle, gamma: torch.Tensor, name: str) -> Any:
    """Make a hook that shears a ``(batch, pos, head, d_head)`` tensor along ``pos``."""
    handle.fire_counts[name] = 0

    def shear(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        handle.fire_counts[name] += 1
        coupling = gamma.to(device=activation.device, dtype=activation.dtype)
        return momentum_shear(
            activation, coupling, _POS_AXIS, handle.document_starts, validate=False
        )

    return shear


def _n_key_value_heads(cfg: Any, n_heads: int) -> int:
    return int(getattr(cfg, "n_key_value_heads", None) or n_heads)


def attach_momentum(
    bridge: Any,
    gamma: float | Sequence,
    placement: str = "post_rope",
    layers: Iterable[int] | None = None,
    document_starts: torch.Tensor | None = None,
    verify: bool = True,
) -> MomentumHandle:
    """Shear the queries and keys of a rotary TransformerBridge through hooks.

    Parameters
    ----------
    bridge : TransformerBridge
        A bridge whose attention fires ``hook_q``/``hook_k`` and ``hook_rot_q``/``hook_rot_k``
        (rotary models with the Llama attention bridge, such as Llama and SmolLM2).
    gamma : float, list of float, or list of list of float
        Momentum coupling γ >= 0: one value, one per layer of the model, or per layer and
        head. Under grouped-query attention, heads that share a key must share γ.
    placement : {"post_rope", "pre_rope"}
        Shear the rotated queries/keys or the unrotated projections.
    layers : iterable of int, optional
        Layers to modify; None means all. Negative indices count from the end.
    document_starts : torch.Tensor, optional
        Boolean mask of packed-document starts, ``(batch, pos)`` or ``(pos,)``; the momentum
        restarts there. Can be changed later through ``handle.document_starts``.
    verify : bool, optional
        Run one two-token forward pass after attaching and raise if a shear hook did not
        run (default True).

    Returns
    -------
    MomentumHandle
        Call ``handle.detach()`` or use it as a context manager to remove the hooks.

    Raises
    ------
    ValueError
        For an invalid placement or γ, a layer index out of range, or a bridge without
        rotary embeddings (no ``hook_rot_q``), where neither placement is defined.
    RuntimeError
        If ``verify`` is True and a hooked point did not fire in the test forward pass.

    Notes
    -----
    Each hooked tensor ``x`` is replaced by ``(1 + γ) x_t - γ x_{t-1}`` along the token axis,
    with ``x̂_0 = x_0`` and a restart at every document start. Values are not touched.

    Examples
    --------
    >>> with attach_momentum(bridge, 1.0, placement="post_rope"):  # doctest: +SKIP
    ...     logits = bridge(tokens)
    """
    if placement not in PLACEMENTS or placement == "none":
        raise ValueError(
            f"placement={placement!r} is invalid; expected 'post_rope' or 'pre_rope' "
            f"(to run without the shear, do not attach)."
        )
    blocks = getattr(bridge, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ValueError(
            f"{type(bridge).__name__} has no 'blocks'; attach_momentum needs a TransformerBridge "
            f"of a decoder with attention blocks."
        )
    n_layers = len(blocks)
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    table = expand_gamma(gamma, n_layers, n_heads, _n_key_value_heads(cfg, n_heads))

    attention = blocks[0].attn
    if not hasattr(attention, "hook_rot_q") or not hasattr(attention, "hook_rot_k"):
        raise ValueError(
            f"placement={placement!r} needs rotary position embeddings, but this bridge "
            f"(positional_embedding_type={getattr(cfg, 'positional_embedding_type', None)!r}) "
            f"has no hook_rot_q/hook_rot_k. Use a rotary model such as Llama or SmolLM2, or "
            f"MomentumForCausalLM for a model built with the shear."
        )

    if layers is None:
        chosen = tuple(range(n_layers))
    else:
        chosen = []
        for layer in layers:
            if not -n_layers <= int(layer) < n_layers:
                raise ValueError(
                    f"layers contains {layer}, out of range for a model with {n_layers} layers; "
                    f"use indices in [-{n_layers}, {n_layers - 1}]."
                )
            chosen.append(int(layer) % n_layers)
        chosen = tuple(sorted(set(chosen)))

    handle = MomentumHandle(bridge, placement, table, chosen, document_starts)
    names = ("hook_rot_q", "hook_rot_k") if placement == "post_rope" else ("hook_q", "hook_k")
    n_kv_heads = _n_key_value_heads(cfg, n_heads)
    group = n_heads // n_kv_heads
    try:
        for layer in chosen:
            row = torch.tensor(table[layer], dtype=torch.float32)
            gamma_q = row[:, None]  # (head, 1) against (batch, pos, head, d_head)
            gamma_k = row[::group][:, None]  # (kv_head, 1)
            for name, coupling in zip(names, (gamma_q, gamma_k)):
                full_name = f"blocks.{layer}.attn.{name}"
                hook_point = bridge.hook_dict[full_name]
                handle._register(hook_point, _shear_hook(handle, coupling, full_name))
    except KeyError as error:
        handle.detach()
        raise ValueError(
            f"bridge has no hook {error.args[0]!r}; attach_momentum needs an attention bridge "
            f"that fires {names[0]} and {names[1]}."
        ) from error
    if verify:
        _verify_hooks_fire(bridge, handle)
    logger.debug("attached momentum (%s) to layers %s", placement, chosen)
    return handle


def _verify_hooks_fire(bridge: Any, handle: MomentumHandle) -> None:
    """Run a two-token forward pass and raise if any shear hook did not run.

    Some attention bridges list ``hook_rot_q``/``hook_rot_k`` without firing them (in
    TransformerLens 4.3.0 the joint-QKV bridge of GPT-NeoX/Pythia does not fire them), and a
    shear hooked there would silently do nothing.
    """
    device = getattr(bridge.cfg, "device", None) or "cpu"
    probe = torch.zeros(1, 2, dtype=torch.long, device=device)
    saved_starts = handle.document_starts
    handle.document_starts = None
    try:
        with torch.no_grad():
            bridge(probe)
    finally:
        handle.document_starts = saved_starts
    silent = [name for name, count in handle.fire_counts.items() if count == 0]
    for name in handle.fire_counts:
        handle.fire_counts[name] = 0
    if silent:
        handle.detach()
        raise RuntimeError(
            f"hooks {silent[:4]} did not fire in a test forward pass, so a {handle.placement} "
            f"shear cannot be hooked onto {type(bridge.blocks[0].attn).__name__}; the hooks "
            f"were removed. Build the model as MomentumForCausalLM to get this placement."
        )
