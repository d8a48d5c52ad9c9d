"""Momentum Attention: a Llama-style decoder whose queries and keys get the momentum shear.

Read top to bottom: configuration, γ handling, the shear inside attention, the decoder block,
the model, the causal-LM head, and the checkpoint checks. Module names follow Llama
(``model.layers[i].self_attn.q_proj`` …) so TransformerLens Llama components apply.

Per head, queries and keys are sheared along the token axis,

    x̂_t = (1 + γ) x_t - γ x_{t-1},   x̂_0 = x_0,

reset at every document start. ``placement`` chooses where:

- ``"post_rope"``: on the rotated queries and keys, so every RoPE band is filtered by the
  same high-pass ``H(z) = (1 + γ) - γ z^{-1}``;
- ``"pre_rope"``: on the queries and keys before rotation, which shifts the filter of
  band ``i`` by its rotation frequency θ_i in the rotated frame;
- ``"none"``: plain causal attention (γ is ignored).

Values are never sheared. Importing this module registers the model with
``AutoConfig`` and ``AutoModelForCausalLM`` under the model type ``"momentum"``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from spectral_forensics.momentum.operator import (
    document_starts_from_ids,
    momentum_shear,
    validate_gamma,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PLACEMENTS",
    "CheckpointMismatchError",
    "MomentumAttention",
    "MomentumConfig",
    "MomentumDecoderLayer",
    "MomentumForCausalLM",
    "MomentumModel",
    "MomentumPreTrainedModel",
    "MomentumRotaryEmbedding",
    "apply_rotary",
    "build_attention_mask",
    "expand_gamma",
    "shear_document_starts",
]

PLACEMENTS = ("post_rope", "pre_rope", "none")

# softplus(-20) ≈ 2e-9: the raw value stored for a learned γ that starts at exactly 0.
_LEARNED_GAMMA_FLOOR_RAW = -20.0


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class MomentumConfig(PretrainedConfig):
    """Configuration of a Momentum Attention decoder.

    Parameters
    ----------
    vocab_size : int
        Number of token ids.
    hidden_size : int
        Residual stream width ``d_model``.
    num_hidden_layers : int
        Number of decoder blocks.
    num_attention_heads : int
        Number of query heads; ``hidden_size`` must be divisible by it unless ``head_dim``
        is given.
    num_key_value_heads : int, optional
        Number of key/value heads (grouped-query attention). None means one per query head.
    intermediate_size : int, optional
        Width of the gated MLP; None means ``4 * hidden_size``.
    max_position_embeddings : int
        Maximum sequence length in tokens.
    rope_theta : float
        RoPE base; band ``i`` turns at ``rope_theta^(-2i / head_dim)`` radians per token
        (rotate-half pairing of dimensions ``i`` and ``i + head_dim / 2``).
    attention_only : bool
        If True, blocks have no MLP and no second norm.
    gamma : float, list of float, or list of list of float
        Momentum coupling γ >= 0: one value for all heads, one per layer, or one per layer and
        head. Under grouped-query attention the heads that share a key must share γ.
    learn_gamma : bool
        If True, γ is a trained parameter per layer and key/value head, kept > 0 as
        ``softplus(ρ)``; a start value of 0 becomes ``ρ = -20`` (γ ≈ 2e-9). If False, γ is a
        fixed buffer that is not saved with the weights (config.json stores it).
    placement : {"post_rope", "pre_rope", "none"}
        Where the shear acts: on rotated queries/keys, on unrotated ones, or nowhere.
    smear_keys : bool
        If True, each key is mixed with the previous one before RoPE,
        ``k'_t = σ(α) k_t + (1 - σ(α)) k_{t-1}`` with one learned α per key/value head
        (start value 0, an even mix), as in the smeared-key models of Olsson et al. (2022).
        The first token of a sequence or document keeps its key. It is the learned
        low-pass counterpart of the shear and is used as a baseline with ``placement="none"``.
    head_dim : int, optional
        Size of one head; None means ``hidden_size // num_attention_heads``. Must be even.
    rms_norm_eps : float
        Epsilon of the RMS norms.
    hidden_act : str
        Activation of the gated MLP (a key of ``transformers.activations.ACT2FN``).
    initializer_range : float
        Standard deviation of the normal weight initialisation.
    attention_dropout : float
        Dropout on attention probabilities during training.
    tie_word_embeddings : bool
        Share the embedding and unembedding matrices.
    """

    model_type = "momentum"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 256,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        intermediate_size: int | None = None,
        max_position_embeddings: int = 512,
        rope_theta: float = 10000.0,
        attention_only: bool = False,
        gamma: float | Sequence = 1.0,
        learn_gamma: bool = False,
        placement: str = "post_rope",
        smear_keys: bool = False,
        head_dim: int | None = None,
        rms_norm_eps: float = 1e-6,
        hidden_act: str = "silu",
        initializer_range: float = 0.02,
        attention_dropout: float = 0.0,
        tie_word_embeddings: bool = False,
        use_cache: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = (
            num_attention_heads if num_key_value_heads is None else num_key_value_heads
        )
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = float(rope_theta)
        self.attention_only = bool(attention_only)
        self.gamma = gamma
        self.learn_gamma = bool(learn_gamma)
        self.placement = placement
        self.smear_keys = bool(smear_keys)
        self.head_dim = hidden_size // num_attention_heads if head_dim is None else head_dim
        self.rms_norm_eps = rms_norm_eps
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.attention_dropout = attention_dropout
        # The shear of token t needs token t-1 before the shear, which a key/value cache does
        # not keep, so generation recomputes the prefix at every step.
        self.use_cache = False
        if use_cache:
            logger.warning("MomentumConfig: use_cache=True is not supported; using False.")
        self.attention_bias = False
        self.mlp_bias = False
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ValueError naming the field, its value and the fix."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "max_position_embeddings",
            "head_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; expected a positive integer.")
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"placement={self.placement!r} is invalid; expected one of {PLACEMENTS}."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_key_value_heads={self.num_key_value_heads} does not divide "
                f"num_attention_heads={self.num_attention_heads}; choose a divisor."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"head_dim={self.head_dim} is odd; rotary embeddings pair dimensions, so use an "
                f"even head size."
            )
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 1.0):
            raise ValueError(f"rope_theta={self.rope_theta!r} is invalid; expected a float > 1.")
        if not (0.0 <= float(self.attention_dropout) < 1.0):
            raise ValueError(
                f"attention_dropout={self.attention_dropout!r} is invalid; expected 0 <= p < 1."
            )
        self.gamma_table()

    def gamma_table(self) -> list[list[float]]:
        """Expand ``gamma`` to per-head couplings per layer (see :func:`expand_gamma`)."""
        return expand_gamma(
            self.gamma, self.num_hidden_layers, self.num_attention_heads, self.num_key_value_heads
        )


def expand_gamma(
    gamma: float | Sequence | torch.Tensor,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int | None = None,
) -> list[list[float]]:
    """Expand a momentum coupling to one value per layer and query head.

    Parameters
    ----------
    gamma : float, list of float, or list of list of float
        γ >= 0 (dimensionless): one value for everything, one per layer (``n_layers``
        entries), or per layer and head (``n_layers`` lists of ``n_heads`` values). A per-layer
        list may mix floats and per-head lists.
    n_layers, n_heads : int
        Number of layers and of query heads.
    n_kv_heads : int, optional
        Number of key/value heads; None means ``n_heads``. Query heads that share a key must
        share γ, because the key of the group is sheared once.

    Returns
    -------
    list of list of float
        ``table[layer][head]``.

    Raises
    ------
    ValueError
        If γ is negative, NaN or infinite, has the wrong nesting or lengths, or differs
        between query heads that share a key/value head.
    """
    validate_gamma(gamma)
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.tolist()
    if isinstance(gamma, (int, float)):
        table = [[float(gamma)] * n_heads for _ in range(n_layers)]
    elif isinstance(gamma, Sequence) and len(gamma) == n_layers:
        table = []
        for layer, entry in enumerate(gamma):
            if isinstance(entry, (int, float)):
                table.append([float(entry)] * n_heads)
            elif isinstance(entry, Sequence) and len(entry) == n_heads:
                table.append([float(value) for value in entry])
            else:
                raise ValueError(
                    f"gamma[{layer}]={entry!r} is invalid; expected a float or a list of "
                    f"{n_heads} floats (one per attention head)."
                )
    else:
        raise ValueError(
            f"gamma={gamma!r} is invalid; expected a float, a list of {n_layers} floats "
            f"(one per layer) or {n_layers} lists of {n_heads} floats (per layer and head)."
        )
    group = n_heads // (n_kv_heads or n_heads)
    for layer, row in enumerate(table):
        for start in range(0, n_heads, group):
            if len(set(row[start : start + group])) > 1:
                raise ValueError(
                    f"gamma[{layer}] = {row} differs within the query heads "
                    f"{start}..{start + group - 1}, which share key/value head "
                    f"{start // group}; give those heads one value."
                )
    return table


# --------------------------------------------------------------------------------------------
# Rotary embedding, masks and document starts
# --------------------------------------------------------------------------------------------


class MomentumRotaryEmbedding(nn.Module):
    """Rotate-half RoPE tables: ``cos`` and ``sin`` of shape ``(batch, pos, head_dim)``.

    Band ``i`` (dimensions ``i`` and ``i + head_dim / 2``) turns at
    ``θ_i = rope_theta^(-2i / head_dim)`` radians per token.
    """

    def __init__(self, config: MomentumConfig) -> None:
        super().__init__()
        self.config = config
        self.rope_type = "default"
        self.attention_scaling = 1.0
        self.register_buffer("inv_freq", self.compute_inv_freq(config), persistent=False)

    @staticmethod
    def compute_inv_freq(config: MomentumConfig) -> torch.Tensor:
        """Return the band frequencies θ_i in radians per token, shape ``(head_dim / 2,)``."""
        exponents = torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim
        return (1.0 / config.rope_theta**exponents).to(torch.float32)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        angles = position_ids[..., None].float() * self.inv_freq.to(x.device)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(batch, head, pos, head_dim)`` by RoPE tables ``(batch, pos, head_dim)``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


def shear_document_starts(
    batch: int,
    n_pos: int,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mark the tokens where the momentum restarts at 0, shape ``(batch, pos)``.

    A token is a start at position 0, where its document id differs from the previous
    token's, and where a real token follows padding (``attention_mask`` 0 before 1).
    """
    starts = torch.zeros(batch, n_pos, dtype=torch.bool, device=device)
    starts[:, 0] = True
    if document_ids is not None:
        if document_ids.shape != (batch, n_pos):
            raise ValueError(
                f"document_ids has shape {tuple(document_ids.shape)}; expected (batch, pos) = "
                f"{(batch, n_pos)} like input_ids."
            )
        starts |= document_starts_from_ids(document_ids.to(device))
    if attention_mask is not None:
        real = attention_mask.to(device).bool()
        starts[:, 1:] |= real[:, 1:] & ~real[:, :-1]
    return starts


def build_attention_mask(
    batch: int,
    n_pos: int,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Build the boolean attention mask ``(batch, 1, query_pos, key_pos)``, True = attend.

    Combines the causal mask, key padding (``attention_mask`` of shape ``(batch, pos)``, 1 for
    real tokens) and, when ``document_ids`` is given, the block-diagonal mask that keeps
    every token inside its own document.
    """
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=device).tril()
    mask = causal.expand(batch, 1, n_pos, n_pos)
    if attention_mask is not None:
        if attention_mask.shape != (batch, n_pos):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, pos) "
                f"= {(batch, n_pos)}."
            )
        mask = mask & attention_mask.to(device).bool()[:, None, None, :]
    if document_ids is not None:
        ids = document_ids.to(device)
        mask = mask & (ids[:, None, :, None] == ids[:, None, None, :])
    return mask


# --------------------------------------------------------------------------------------------
# Attention with the momentum shear
# --------------------------------------------------------------------------------------------


class MomentumAttention(nn.Module):
    """Multi-head causal attention whose queries and keys are sheared along the tokens.

    γ is stored per key/value head (one value per group of query heads that share a key):
    as the buffer ``gamma`` when fixed, or as the parameter ``gamma_raw`` with
    ``γ = softplus(gamma_raw)`` when learned. Softplus keeps γ > 0 with a nonzero gradient
    everywhere, whereas clamping at 0 would stop the gradient of a head that reaches 0.
    """

    def __init__(self, config: MomentumConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.placement = config.placement
        self.is_causal = True

        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

        initial = self.initial_gamma()
        if config.learn_gamma:
            self.gamma_raw = nn.Parameter(_inverse_softplus(initial))
        else:
            self.register_buffer("gamma", initial, persistent=False)
        if config.smear_keys:
            self.smear_alpha = nn.Parameter(torch.zeros(self.num_key_value_heads))

    def smear(self, key: torch.Tensor, document_starts: torch.Tensor | None) -> torch.Tensor:
        """Mix each ``(batch, kv_head, pos, head_dim)`` key with the previous one."""
        keep = torch.sigmoid(self.smear_alpha).to(key.dtype)[:, None, None]
        previous = torch.cat([key[:, :, :1], key[:, :, :-1]], dim=2)
        if document_starts is not None:
            starts = document_starts.to(key.device)[:, None, :, None]
            previous = torch.where(starts, key, previous)
        return keep * key + (1 - keep) * previous

    def initial_gamma(self) -> torch.Tensor:
        """Return the configured γ of this layer per key/value head, shape ``(kv_head,)``."""
        row = self.config.gamma_table()[self.layer_idx]
        return torch.tensor(row[:: self.num_key_value_groups], dtype=torch.float32)

    def kv_gamma(self) -> torch.Tensor:
        """Return the current γ per key/value head, shape ``(kv_head,)``."""
        if self.config.learn_gamma:
            return F.softplus(self.gamma_raw)
        return self.gamma

    def head_gamma(self) -> torch.Tensor:
        """Return the current γ per query head, shape ``(head,)``."""
        return self.kv_gamma().repeat_interleave(self.num_key_value_groups)

    def shear(
        self, query: torch.Tensor, key: torch.Tensor, document_starts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shear ``(batch, head, pos, head_dim)`` queries and keys along ``pos``."""
        gamma_q = self.head_gamma().to(query.dtype)[:, None, None]
        gamma_k = self.kv_gamma().to(key.dtype)[:, None, None]
        # γ was validated by the config, and softplus keeps a learned γ positive.
        query = momentum_shear(query, gamma_q, 2, document_starts, validate=False)
        key = momentum_shear(key, gamma_k, 2, document_starts, validate=False)
        return query, key

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        document_starts: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, n_pos, _ = hidden_states.shape
        shape = (batch, n_pos, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)

        cos, sin = position_embeddings
        if self.config.smear_keys:
            key = self.smear(key, document_starts)
        if self.placement == "pre_rope":
            query, key = self.shear(query, key, document_starts)
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if self.placement == "post_rope":
            query, key = self.shear(query, key, document_starts)

        # Grouped-query attention: every query head of a group reads its group's key/value.
        key = key.repeat_interleave(self.num_key_value_groups, dim=1)
        value = value.repeat_interleave(self.num_key_value_groups, dim=1)

        scores = torch.matmul(query, key.transpose(-2, -1)) * self.scaling
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = F.dropout(weights, p=self.attention_dropout, training=self.training)
        output = torch.matmul(weights, value).transpose(1, 2).reshape(batch, n_pos, -1)
        return self.o_proj(output), weights


def _inverse_softplus(gamma: torch.Tensor) -> torch.Tensor:
    # ρ = γ + log(1 - exp(-γ)) solves softplus(ρ) = γ; γ = 0 maps to a large negative ρ.
    safe = gamma.clamp(min=1e-12)
    raw = safe + torch.log(-torch.expm1(-safe))
    return torch.where(gamma > 0, raw, torch.full_like(gamma, _LEARNED_GAMMA_FLOOR_RAW))


# --------------------------------------------------------------------------------------------
# Block and model
# --------------------------------------------------------------------------------------------


class MomentumRMSNorm(nn.Module):
    """Root-mean-square norm ``w * x / sqrt(mean(x^2) + eps)`` computed in float32."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


class MomentumMLP(nn.Module):
    """Gated MLP ``down(act(gate(x)) * up(x))``."""

    def __init__(self, config: MomentumConfig) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MomentumDecoderLayer(nn.Module):
    """Pre-norm block: attention, then (unless ``attention_only``) a gated MLP."""

    def __init__(self, config: MomentumConfig, layer_idx: int) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.input_layernorm = MomentumRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MomentumAttention(config, layer_idx)
        self.attention_only = config.attention_only
        if not config.attention_only:
            self.post_attention_layernorm = MomentumRMSNorm(config.hidden_size, config.rms_norm_eps)
            self.mlp = MomentumMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        document_starts: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            document_starts=document_starts,
        )
        hidden_states = hidden_states + attn_output
        if not self.attention_only:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class MomentumPreTrainedModel(PreTrainedModel):
    """Weight initialisation and checkpoint plumbing shared by the momentum models."""

    config_class = MomentumConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["MomentumDecoderLayer"]
    _supports_sdpa = False
    _supports_flash_attn = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MomentumRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq(module.config))
        elif isinstance(module, MomentumAttention):
            initial = module.initial_gamma()
            if module.config.learn_gamma:
                init.copy_(module.gamma_raw, _inverse_softplus(initial))
            else:
                init.copy_(module.gamma, initial)
            if module.config.smear_keys:
                init.zeros_(module.smear_alpha)


class MomentumModel(MomentumPreTrainedModel):
    """Embedding, decoder blocks and final norm; returns the last hidden states."""

    def __init__(self, config: MomentumConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            MomentumDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)
        )
        self.norm = MomentumRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = MomentumRotaryEmbedding(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        document_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, n_pos, _ = inputs_embeds.shape
        if n_pos > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {n_pos} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}; shorten the input or raise the limit."
            )
        _reject_cache(kwargs)
        device = inputs_embeds.device
        if attention_mask is not None and attention_mask.ndim != 2:
            raise ValueError(
                f"attention_mask has {attention_mask.ndim} dimensions; expected a (batch, pos) "
                f"padding mask with 1 for real tokens."
            )
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0).to(device)
            else:
                position_ids = torch.arange(n_pos, device=device).expand(batch, n_pos)

        mask = build_attention_mask(batch, n_pos, device, attention_mask, document_ids)
        starts = shear_document_starts(batch, n_pos, device, attention_mask, document_ids)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=mask,
                document_starts=starts,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states))


def _reject_cache(kwargs: dict[str, Any]) -> None:
    for name in ("past_key_values", "cache"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"{name} was given, but MomentumForCausalLM keeps no key/value cache because "
                f"the shear needs each token's predecessor before the shear; pass the full "
                f"sequence instead (generate() does so with use_cache=False)."
            )


# --------------------------------------------------------------------------------------------
# Causal language model
# --------------------------------------------------------------------------------------------


class CheckpointMismatchError(ValueError):
    """A saved checkpoint does not match its config.json or cannot be read."""


class MomentumForCausalLM(MomentumPreTrainedModel, GenerationMixin):
    """Momentum Attention decoder with a language-modelling head.

    ``forward(input_ids, labels=None, attention_mask=None, document_ids=None)`` returns
    ``CausalLMOutputWithPast`` with ``logits`` of shape ``(batch, pos, vocab)`` and, when
    ``labels`` is given, the mean next-token cross-entropy in ``loss`` (labels are shifted
    inside; -100 is ignored). ``document_ids`` of shape ``(batch, pos)`` marks packed
    documents: attention stays inside a document and the momentum restarts at its first token.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MomentumConfig) -> None:
        super().__init__(config)
        self.model = MomentumModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        document_ids: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        kwargs.pop("use_cache", None)
        kwargs.pop("return_dict", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            document_ids=document_ids,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Feed the whole prefix at every generation step (the model keeps no cache)."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def momentum_gammas(self) -> torch.Tensor:
        """Return the current γ per layer and query head, shape ``(layer, head)``."""
        return torch.stack([layer.self_attn.head_gamma().detach() for layer in self.model.layers])

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any):
        """Save ``config.json`` and ``model.safetensors``; a learned γ is written to the config.

        The config's ``gamma`` is set to the current per-layer, per-head values first, so
        the saved config.json states the couplings the weights were trained with.
        """
        if self.config.learn_gamma:
            self.config.gamma = self.momentum_gammas().tolist()
        kwargs.setdefault("safe_serialization", True)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ):
        """Load a saved model; raise :class:`CheckpointMismatchError` on any weight mismatch.

        Missing, unexpected or differently shaped tensors, and unreadable safetensors files,
        are errors here. transformers 5.25 raises only for shape mismatches and merely reports
        missing or unexpected tensors, which would leave layers randomly initialised.
        """
        directory = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(directory):
            _check_local_checkpoint(cls, directory, kwargs.get("config"))
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        _raise_on_loading_info(directory, info)
        return (model, info) if want_info else model


# --------------------------------------------------------------------------------------------
# Checkpoint checks
# --------------------------------------------------------------------------------------------


def _check_local_checkpoint(
    model_class: type[MomentumForCausalLM], directory: str, config: MomentumConfig | None
) -> None:
    """Compare the tensor names and shapes of a saved directory with its configuration."""
    from safetensors import SafetensorError, safe_open

    config_path = os.path.join(directory, "config.json")
    config_label = config_path
    if config is not None:
        config_label = "the config passed to from_pretrained"
    else:
        try:
            with open(config_path, encoding="utf-8") as handle:
                config_dict = json.load(handle)
        except FileNotFoundError:
            return  # transformers reports the missing config itself
        except json.JSONDecodeError as error:
            raise CheckpointMismatchError(
                f"{config_path} is not valid JSON ({error}); restore it from the run that saved "
                f"the checkpoint or save the model again."
            ) from error
        if config_dict.get("model_type") != MomentumConfig.model_type:
            return  # another model class; nothing to compare here
        config = MomentumConfig.from_dict(config_dict)

    weight_files = sorted(
        name for name in os.listdir(directory) if name.endswith(".safetensors")
    )
    if not weight_files:
        return  # transformers raises its own "no file named ..." error

    saved: dict[str, tuple[int, ...]] = {}
    for name in weight_files:
        path = os.path.join(directory, name)
        try:
            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():
                    saved[key] = tuple(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointMismatchError(
                f"{path} cannot be read as safetensors ({error}); the file is truncated or "
                f"corrupted. Copy it again or re-save the model with save_pretrained."
            ) from error

    with torch.device("meta"):
        reference = model_class(config)
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        saved.pop("lm_head.weight", None)

    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    mismatched = sorted(
        f"{key}: saved {saved[key]}, config expects {expected[key]}"
        for key in set(saved) & set(expected)
        if saved[key] != expected[key]
    )
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:6]}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:6]}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched[:6]}")
    if problems:
        files = ", ".join(os.path.join(directory, name) for name in weight_files)
        raise CheckpointMismatchError(
            f"{files} does not match {config_label}: "
            f"{'; '.join(problems)}. Restore the config.json saved with these weights "
            f"(fields such as hidden_size, num_key_value_heads, attention_only, learn_gamma "
            f"decide the tensors), or save the model again."
        )


def _raise_on_loading_info(location: str, info: dict[str, Any]) -> None:
    problems = []
    for field in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        entries = list(info.get(field) or [])
        if entries:
            problems.append(f"{field.replace('_', ' ')}: {entries[:6]}")
    if problems:
        raise CheckpointMismatchError(
            f"loading {location} left {'; '.join(problems)}. Use the config.json saved with "
            f"these weights, or save the model again."
        )


# --------------------------------------------------------------------------------------------
# Registration with the transformers Auto classes
# --------------------------------------------------------------------------------------------


def _register_auto_classes() -> None:
    try:
        AutoConfig.register(MomentumConfig.model_type, MomentumConfig)
    except ValueError:
        logger.debug("AutoConfig already maps %r", MomentumConfig.model_type)
    try:
        AutoModelForCausalLM.register(MomentumConfig, MomentumForCausalLM)
    except ValueError:
        logger.debug("AutoModelForCausalLM already maps MomentumConfig")


_register_auto_classes()
