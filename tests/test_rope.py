"""RoPE layout read from real transformers configurations, checked against the models' own buffers."""

import numpy as np
import pytest
import torch
from transformers import (
    GPT2Config,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from spectral_forensics.rope import (
    ADJACENT_PAIRS,
    ROTATE_HALF,
    band_dimensions,
    rope_spec_from_config,
    rotate,
)


def tiny_llama_config(**overrides):
    params = dict(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=5000.0,
    )
    params.update(overrides)
    return LlamaConfig(**params)


def test_llama_theta_matches_inv_freq_buffer():
    config = tiny_llama_config()
    model = LlamaForCausalLM(config)
    spec = rope_spec_from_config(config)
    assert spec.has_rope
    assert spec.pairing == ROTATE_HALF
    assert spec.base == 5000.0
    assert spec.rotary_dim == 16
    assert spec.n_kv_heads == 2
    np.testing.assert_allclose(spec.theta, model.model.rotary_emb.inv_freq.double().numpy(), rtol=1e-6)


def test_llama3_scaled_theta_matches_inv_freq_buffer():
    config = tiny_llama_config(
        max_position_embeddings=4096,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
    )
    model = LlamaForCausalLM(config)
    spec = rope_spec_from_config(config)
    assert spec.rope_type == "llama3"
    expected = model.model.rotary_emb.inv_freq.double().numpy()
    unscaled = 5000.0 ** (-np.arange(0, 16, 2) / 16)
    assert not np.allclose(expected, unscaled), "scaling should change the slow bands"
    np.testing.assert_allclose(spec.theta, expected, rtol=1e-6)


def test_gptj_adjacent_pairs_partial_rotary():
    config = GPTJConfig(vocab_size=64, n_embd=64, n_layer=1, n_head=4, rotary_dim=8, n_positions=64)
    spec = rope_spec_from_config(config)
    assert spec.pairing == ADJACENT_PAIRS
    assert spec.rotary_dim == 8
    assert spec.head_dim == 16
    np.testing.assert_allclose(spec.theta, 10000.0 ** (-np.arange(0, 8, 2) / 8))
    model = GPTJForCausalLM(config)
    sincos = model.transformer.rotary_emb.embed_positions  # (positions, rotary_dim): [sin | cos]
    angle_at_1 = np.arcsin(sincos[1, : spec.n_bands].double().numpy())
    np.testing.assert_allclose(angle_at_1, spec.theta, rtol=1e-5)


def test_neox_partial_rotary_pct():
    config = GPTNeoXConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        rotary_pct=0.25,
        rotary_emb_base=10000,
    )
    spec = rope_spec_from_config(config)
    assert spec.pairing == ROTATE_HALF
    assert spec.head_dim == 32
    assert spec.rotary_dim == 8
    model = GPTNeoXForCausalLM(config)
    np.testing.assert_allclose(spec.theta, model.gpt_neox.rotary_emb.inv_freq.double().numpy(), rtol=1e-6)


def test_gpt2_has_no_rope():
    spec = rope_spec_from_config(GPT2Config(n_layer=2, n_head=4, n_embd=32))
    assert not spec.has_rope
    assert spec.n_bands == 0
    with pytest.raises(ValueError, match="rotary position embeddings"):
        spec.require_rope("The RoPE-band spectrum")


def test_band_dimensions_pairings():
    re, im = band_dimensions(8, ROTATE_HALF)
    assert re.tolist() == [0, 1, 2, 3]
    assert im.tolist() == [4, 5, 6, 7]
    re, im = band_dimensions(8, ADJACENT_PAIRS)
    assert re.tolist() == [0, 2, 4, 6]
    assert im.tolist() == [1, 3, 5, 7]
    with pytest.raises(ValueError, match="pairing"):
        band_dimensions(8, "interleaved")


def test_rotate_matches_transformers_llama_rotation():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    config = tiny_llama_config()
    model = LlamaForCausalLM(config)
    spec = rope_spec_from_config(config)
    x = torch.randn(1, 2, 10, 16)  # (batch, head, pos, d_head) as transformers lays it out
    positions = torch.arange(10)[None]
    cos, sin = model.model.rotary_emb(x, positions)
    expected, _ = apply_rotary_pos_emb(x, x, cos, sin)
    ours = rotate(x.numpy(), np.arange(10), spec)
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-5)
