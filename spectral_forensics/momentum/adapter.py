"""TransformerLens 4 support for :class:`~spectral_forensics.momentum.modeling.MomentumForCausalLM`.

``MomentumArchitectureAdapter`` is registered for the architecture name
``"MomentumForCausalLM"`` through the ``transformer_lens.architectures`` entry point, so

    TransformerBridge.boot_transformers(saved_dir, tokenizer=tokenizer)
    build_bridge_from_module(model, "MomentumForCausalLM", hf_config=model.config)

both wrap a momentum model; ``boot_transformers`` needs this module imported first (see
``_register_with_transformer_lens``). The adapter reuses the Llama components (embedding, RMS norms,
gated MLP, unembedding, rotary embedding) and replaces the attention with
``MomentumAttentionBridge``, which computes attention itself so that the shear happens
between named hook points. Per layer ``l`` the query path fires, in order:

- ``post_rope``: ``hook_q`` → ``hook_rot_q`` → ``hook_mom_q`` (shear of the rotated query);
- ``pre_rope``: ``hook_q`` → ``hook_mom_q`` (shear of the unrotated query) → ``hook_rot_q``;
- ``none``: ``hook_q`` → ``hook_rot_q`` → ``hook_mom_q`` (unchanged copy),

and the key path the same with ``k``. ``blocks.{l}.attn.hook_mom_q`` and ``hook_mom_k`` have
shape ``(batch, pos, head, d_head)`` (``kv_head`` for keys under grouped-query attention);
what a hook returns there is what the attention scores use.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components import (
    BlockBridge,
    EmbeddingBridge,
    RMSNormalizationBridge,
    RotaryEmbeddingBridge,
    UnembeddingBridge,
)
from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
    PositionEmbeddingsAttentionBridge,
)

from spectral_forensics.momentum.modeling import (
    PLACEMENTS,
    MomentumForCausalLM,
    apply_rotary,
)
from spectral_forensics.momentum.operator import momentum_shear

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURE",
    "MomentumArchitectureAdapter",
    "MomentumAttentionBridge",
    "boot_momentum_bridge",
    "build_momentum_bridge",
]

ARCHITECTURE = "MomentumForCausalLM"


class MomentumAttentionBridge(PositionEmbeddingsAttentionBridge):
    """Attention bridge that applies the momentum shear between hook points.

    The placement and γ are read from the wrapped ``MomentumAttention`` module
    (``placement``, ``head_gamma()``, ``kv_gamma()``), so a learned γ stays live.
    """

    def __init__(self, name: str, config: Any, **kwargs: Any) -> None:
        super().__init__(name, config, **kwargs)
        self.hook_mom_q = HookPoint()
        self.hook_mom_k = HookPoint()

    def _setup_qkv_hook_reshaping(self) -> None:
        super()._setup_qkv_hook_reshaping()
        # Internal tensors are (batch, head, pos, d_head); hooks show (batch, pos, head, d_head)
        # through the same transpose conversion that hook_rot_q and hook_rot_k use.
        self.hook_mom_q.hook_conversion = self.hook_rot_q.hook_conversion
        self.hook_mom_k.hook_conversion = self.hook_rot_k.hook_conversion

    def _project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Project to queries, keys and values of shape ``(batch, head, pos, d_head)``."""
        hf_attn: Any = self.original_component
        head_dim = hf_attn.head_dim
        use_split = bool(getattr(self.config, "use_split_qkv_input", False))
        use_attn_in = bool(getattr(self.config, "use_attn_in", False))
        if use_split or use_attn_in:
            n_heads, n_kv = hf_attn.num_heads, hf_attn.num_key_value_heads
            source = self._captured_pre_ln_residual
            source = hidden_states if source is None else source
            if use_split:
                q_in = self._fork_and_norm_per_head(source, self.hook_q_input, n_heads)
                k_in = self._fork_and_norm_per_head(source, self.hook_k_input, n_kv)
                v_in = self._fork_and_norm_per_head(source, self.hook_v_input, n_kv)
            else:
                q_in = self._fork_and_norm_per_head(source, self.hook_attn_in, n_heads)
                k_in = v_in = q_in[..., :n_kv, :].contiguous()
            query = self._project_per_head_qkv(self.q, q_in, n_heads, head_dim)
            key = self._project_per_head_qkv(self.k, k_in, n_kv, head_dim)
            value = self._project_per_head_qkv(self.v, v_in, n_kv, head_dim)
            return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)

        # LinearBridges fire hook_q/hook_k/hook_v (aliases of q/k/v.hook_out).
        shape = (*hidden_states.shape[:-1], -1, head_dim)
        query = self.q(hidden_states).view(shape).transpose(1, 2)
        key = self.k(hidden_states).view(shape).transpose(1, 2)
        value = self.v(hidden_states).view(shape).transpose(1, 2)
        return query, key, value

    def _shear(
        self, query: torch.Tensor, key: torch.Tensor, document_starts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shear ``(batch, head, pos, d_head)`` queries and keys, then fire the hook_mom hooks."""
        hf_attn: Any = self.original_component
        gamma_q = hf_attn.head_gamma().to(query.dtype)[:, None, None]
        gamma_k = hf_attn.kv_gamma().to(key.dtype)[:, None, None]
        query = momentum_shear(query, gamma_q, 2, document_starts, validate=False)
        key = momentum_shear(key, gamma_k, 2, document_starts, validate=False)
        return self.hook_mom_q(query), self.hook_mom_k(key)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute sheared causal attention; returns ``(output, pattern)``.

        The output has shape ``(batch, pos, d_model)`` and the pattern
        ``(batch, head, query_pos, key_pos)``.
        """
        hf_attn: Any = self.original_component
        if hf_attn is None:
            raise RuntimeError(f"Original component not set for {self.name}.")
        hidden_states = kwargs.pop("hidden_states", None)
        if hidden_states is None:
            if not args:
                raise ValueError(f"{self.name}: hidden_states missing from the attention call.")
            hidden_states, args = args[0], args[1:]
        position_embeddings = kwargs.pop("position_embeddings", None)
        attention_mask = kwargs.pop("attention_mask", None)
        document_starts = kwargs.pop("document_starts", None)
        for name in ("past_key_values", "layer_past", "cache"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{name} was given to {self.name}, but momentum attention keeps no "
                    f"key/value cache because the shear needs each token's predecessor; run "
                    f"the full sequence without a cache."
                )
        if position_embeddings is None:
            raise ValueError(
                f"{self.name}: position_embeddings (cos, sin) are missing; momentum attention "
                f"always uses RoPE, so call it through the model or pass them explicitly."
            )

        hidden_states = self.hook_in(hidden_states)
        batch, n_pos = hidden_states.shape[:2]
        query, key, value = self._project(hidden_states)
        cos, sin = self._apply_position_embedding_hooks(position_embeddings)

        placement = hf_attn.placement
        if placement == "pre_rope":
            query, key = self._shear(query, key, document_starts)
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        query, key = self.hook_rot_q(query), self.hook_rot_k(key)
        if placement == "post_rope":
            query, key = self._shear(query, key, document_starts)
        elif placement == "none":
            query, key = self.hook_mom_q(query), self.hook_mom_k(key)

        groups = hf_attn.num_key_value_groups
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)

        scores = torch.matmul(query, key.transpose(-2, -1)) * hf_attn.scaling
        scores = self._mask_scores(scores, attention_mask)
        scores = self.hook_attn_scores(scores)
        pattern = self._masked_softmax(scores, dtype=torch.float32).to(query.dtype)
        pattern = self._scrub_compatibility_pattern_nans(pattern)
        if self.training and hf_attn.attention_dropout > 0.0:
            pattern = torch.nn.functional.dropout(pattern, p=hf_attn.attention_dropout)
        pattern = self.hook_pattern(pattern)

        z = torch.matmul(pattern, value).transpose(1, 2).reshape(batch, n_pos, -1)
        if bool(getattr(self.config, "use_attn_result", False)):
            z = self.o.hook_in(z)
            n_heads = hf_attn.num_heads
            output = self._compute_per_head_result(
                z.view(batch, n_pos, n_heads, hf_attn.head_dim), n_heads, hf_attn.head_dim
            )
        else:
            output = self.o(z)
        return self.hook_out(output), pattern

    def _mask_scores(
        self, scores: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        # The model passes a boolean (batch, 1, query, key) mask, True = attend; masking it the
        # way MomentumAttention does keeps the bridge's logits equal to the model's.
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            if attention_mask.ndim == 4:
                fill = -torch.inf if self.compatibility_mode else torch.finfo(scores.dtype).min
                return scores.masked_fill(~attention_mask, fill)
        n_pos = scores.shape[-1]
        return self._apply_reconstruct_attention_mask(scores, attention_mask, n_pos, n_pos)


class MomentumArchitectureAdapter(ArchitectureAdapter):
    """TransformerLens adapter for ``MomentumForCausalLM`` (Llama layout, momentum attention).

    With ``attention_only=True`` in the model config the blocks have no ``ln2`` and no
    ``mlp``. The adapter drops both from the component mapping when the model is prepared.
    """

    _attention_bridge_cls = MomentumAttentionBridge

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._set_rms_rotary_defaults()
        self.weight_processing_conversions = {**self._qkvo_weight_conversions()}
        self.component_mapping = {
            "embed": EmbeddingBridge(name="model.embed_tokens"),
            "rotary_emb": RotaryEmbeddingBridge(name="model.rotary_emb"),
            "blocks": BlockBridge(
                name="model.layers",
                submodules={
                    "ln1": RMSNormalizationBridge(name="input_layernorm", config=self.cfg),
                    "ln2": RMSNormalizationBridge(name="post_attention_layernorm", config=self.cfg),
                    "attn": self._build_attention_bridge(),
                    "mlp": self._gated_mlp(),
                },
            ),
            "ln_final": RMSNormalizationBridge(name="model.norm", config=self.cfg),
            "unembed": UnembeddingBridge(name="lm_head", config=self.cfg),
        }

    def prepare_model(self, hf_model: Any) -> None:
        """Check the wrapped model and copy its RoPE and block layout onto the bridge config."""
        super().prepare_model(hf_model)
        if not isinstance(hf_model, MomentumForCausalLM):
            raise ValueError(
                f"MomentumArchitectureAdapter wraps MomentumForCausalLM, got "
                f"{type(hf_model).__name__}; use the adapter registered for that architecture."
            )
        config = hf_model.config
        if getattr(config, "smear_keys", False):
            raise ValueError(
                "This Momentum Attention model smears its keys (smear_keys=True), which the "
                "TransformerLens bridge does not reproduce; analyse it as a Hugging Face model "
                "(MomentumForCausalLM.from_pretrained) instead."
            )
        if config.placement not in PLACEMENTS:
            raise ValueError(
                f"placement={config.placement!r} is invalid; expected one of {PLACEMENTS}."
            )
        self.cfg.rotary_base = config.rope_theta
        self.cfg.rotary_dim = config.head_dim
        self.cfg.n_ctx = config.max_position_embeddings
        self.cfg.momentum_placement = config.placement
        if config.attention_only:
            self.cfg.attn_only = True
            blocks = self.components["blocks"]
            blocks.submodules.pop("ln2", None)
            blocks.submodules.pop("mlp", None)
            # Without an MLP the residual after attention is hook_resid_post itself.
            blocks.hook_aliases = {
                alias: target
                for alias, target in blocks.hook_aliases.items()
                if alias not in ("hook_resid_mid", "hook_mlp_out")
            }


def _register_with_transformer_lens() -> None:
    """Make ``"MomentumForCausalLM"`` known to both TransformerLens architecture lookups.

    The entry point registers the adapter with ``ArchitectureAdapterFactory`` when that
    factory first selects an adapter. ``TransformerBridge.boot_transformers`` (TransformerLens
    4.3.0) checks the architecture name against the built-in ``SUPPORTED_ARCHITECTURES``
    dict before that happens, so the name is added there too.
    """
    from transformer_lens.factories import architecture_adapter_factory as factory

    factory.SUPPORTED_ARCHITECTURES.setdefault(ARCHITECTURE, MomentumArchitectureAdapter)
    # Discovering first avoids the factory's warning about an entry point that overrides an
    # adapter registered at runtime. Registering covers a source tree without the entry point.
    factory.ArchitectureAdapterFactory.discover_entry_points()
    if ARCHITECTURE not in factory.ArchitectureAdapterFactory._adapters:
        factory.ArchitectureAdapterFactory.register_adapter(
            ARCHITECTURE, MomentumArchitectureAdapter
        )


_register_with_transformer_lens()


def boot_momentum_bridge(
    path: str, tokenizer: Any = None, device: str | torch.device = "cpu", **kwargs: Any
) -> Any:
    """Load a saved ``MomentumForCausalLM`` directory as a ``TransformerBridge``.

    Equivalent to ``TransformerBridge.boot_transformers(path, tokenizer=tokenizer, ...)``
    after this module registered the architecture; ``kwargs`` are passed through. Offline,
    pass a tokenizer object, because boot_transformers otherwise tries to load one by name.
    """
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(path, tokenizer=tokenizer, device=device, **kwargs)


def build_momentum_bridge(model: MomentumForCausalLM, tokenizer: Any = None) -> Any:
    """Wrap a ``MomentumForCausalLM`` in a ``TransformerBridge`` without loading anything.

    The model is modified in place (bridge components replace its submodules), as with
    ``build_bridge_from_module``.
    """
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    return build_bridge_from_module(
        model, ARCHITECTURE, hf_config=model.config, tokenizer=tokenizer
    )
