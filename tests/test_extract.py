"""Streaming extraction on real TransformerLens bridges over tiny Llama models with planted weights."""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from spectral_forensics.extract import (
    HookNotFiredError,
    NonFiniteActivationError,
    StreamingExtractor,
    check_rope_pairing,
)
from spectral_forensics.models import bridge_from_hf
from spectral_forensics.rope import ADJACENT_PAIRS, ROTATE_HALF, rope_spec_from_config

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 64, 4, 2, 16
HALF = HEAD_DIM // 2
# kv head 0 (query heads 0, 1) carries band 3 only; kv head 1 (query heads 2, 3) band 5 only.
PLANTED_BAND = {0: 3, 1: 5}


def planted_llama(layers=2, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        rope_theta=10000.0,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            q_weight = torch.zeros_like(attn.q_proj.weight)
            k_weight = torch.zeros_like(attn.k_proj.weight)
            for kv in range(KV_HEADS):
                band = PLANTED_BAND[kv]
                k_weight[kv * HEAD_DIM + band] = torch.randn(HIDDEN)
                k_weight[kv * HEAD_DIM + band + HALF] = torch.randn(HIDDEN)
                for h in range(kv * 2, kv * 2 + 2):
                    q_weight[h * HEAD_DIM + band] = torch.randn(HIDDEN)
                    q_weight[h * HEAD_DIM + band + HALF] = torch.randn(HIDDEN)
            attn.q_proj.weight.copy_(q_weight)
            attn.k_proj.weight.copy_(k_weight)
    return model


def random_windows(n=3, length=64, vocab=97, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=generator)


def test_planted_band_peaks_per_head():
    model = planted_llama()
    rope = rope_spec_from_config(model.config)
    bridge = bridge_from_hf(model)
    extractor = StreamingExtractor(bridge, rope, [0, 1], [0, 1, 2, 3], nperseg=32)
    stats = extractor.run(random_windows(), batch_size=2, progress=False)
    magnitude = np.abs(stats.cross_mean)
    assert magnitude.shape == (2, 4, HALF)
    for head in range(HEADS):
        expected = PLANTED_BAND[head // 2]
        assert np.argmax(magnitude[0, head]) == expected
        assert np.argmax(stats.q_energy[1, head]) == expected
        others = np.delete(magnitude[:, head], expected, axis=-1)
        assert others.max() < 1e-6 * magnitude[:, head, expected].min()


def test_band_cross_matches_brute_force():
    model = planted_llama(layers=1)
    rope = rope_spec_from_config(model.config)
    bridge = bridge_from_hf(model)
    windows = random_windows(n=2, length=40)
    captured = {}

    def keep(name):
        def hook(x, hook):
            captured[name] = x.detach().double()
            return x

        return hook

    bridge.run_with_hooks(
        windows,
        fwd_hooks=[("blocks.0.attn.hook_q", keep("q")), ("blocks.0.attn.hook_k", keep("k"))],
    )
    q = captured["q"][..., :HALF] + 1j * captured["q"][..., HALF:]
    k = captured["k"][..., :HALF] + 1j * captured["k"][..., HALF:]
    head, kv = 3, 1
    total, pairs = 0, 0
    for b in range(2):
        for t in range(40):
            for s in range(t + 1):
                total = total + q[b, t, head] * k[b, s, kv].conj()
                pairs += 1
    extractor = StreamingExtractor(bridge, rope, [0], [head], temporal_stages=(), nperseg=16)
    stats = extractor.run(windows, batch_size=2, progress=False)
    np.testing.assert_allclose(stats.cross_mean[0, 0], (total / pairs).numpy(), rtol=1e-4, atol=1e-7)


def test_temporal_psd_key_stage_maps_kv_heads():
    model = planted_llama(layers=1)
    rope = rope_spec_from_config(model.config)
    bridge = bridge_from_hf(model)
    extractor = StreamingExtractor(
        bridge, rope, [0], [0, 1, 2, 3], bands=False, temporal_stages=("rot_k", "q"), nperseg=32
    )
    stats = extractor.run(random_windows(), progress=False)
    psd_k = stats.psd("rot_k")[0]
    assert psd_k.shape == (4, 17)
    np.testing.assert_array_equal(psd_k[0], psd_k[1])
    np.testing.assert_array_equal(psd_k[2], psd_k[3])
    assert not np.allclose(psd_k[0], psd_k[2])
    assert np.all(np.isfinite(stats.psd("q")))


def test_pairing_check_uses_rot_q():
    model = planted_llama(layers=1)
    rope = rope_spec_from_config(model.config)
    bridge = bridge_from_hf(model)
    captured = {}

    def keep(name):
        def hook(x, hook):
            captured[name] = x.detach()
            return x

        return hook

    bridge.run_with_hooks(
        random_windows(n=1),
        fwd_hooks=[("blocks.0.attn.hook_q", keep("q")), ("blocks.0.attn.hook_rot_q", keep("rot_q"))],
    )
    from dataclasses import replace

    assert check_rope_pairing(captured["q"], captured["rot_q"], rope).pairing == ROTATE_HALF
    wrong = replace(rope, pairing=ADJACENT_PAIRS)
    assert check_rope_pairing(captured["q"], captured["rot_q"], wrong).pairing == ROTATE_HALF


def test_non_finite_activation_names_layer_and_head():
    model = planted_llama(layers=2)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[2 * HEAD_DIM + 3, 0] = float("nan")
    rope = rope_spec_from_config(model.config)
    bridge = bridge_from_hf(model)
    extractor = StreamingExtractor(bridge, rope, [0, 1], [0, 1, 2, 3], nperseg=32)
    with pytest.raises(NonFiniteActivationError, match=r"layer 1, head\(s\) \[2\]"):
        extractor.run(random_windows(), progress=False)


def test_unknown_stage_is_rejected_before_running():
    model = planted_llama(layers=1)
    bridge = bridge_from_hf(model)
    rope = rope_spec_from_config(model.config)
    with pytest.raises(ValueError, match="mom_k"):
        StreamingExtractor(bridge, rope, [0], [0], temporal_stages=("mom_k",))


def test_silent_hook_is_reported():
    model = planted_llama(layers=1)
    bridge = bridge_from_hf(model)
    rope = rope_spec_from_config(model.config)
    extractor = StreamingExtractor(bridge, rope, [0], [0], bands=False, temporal_stages=("q",), nperseg=16)
    # hook_hidden_states is listed for Llama attention but never runs in TransformerLens 4.3.
    extractor.temporal_stages = ("hidden_states",)
    with pytest.raises(HookNotFiredError, match="did not fire"):
        extractor.run(random_windows(n=1), progress=False)


def test_no_rope_model_bands_rejected_temporal_works():
    config = GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2, n_positions=128)
    model = GPT2LMHeadModel(config).eval()
    bridge = bridge_from_hf(model)
    rope = rope_spec_from_config(config)
    with pytest.raises(ValueError, match="rotary position embeddings"):
        StreamingExtractor(bridge, rope, [0], [0, 1], bands=True)
    extractor = StreamingExtractor(bridge, rope, [0], [0, 1], bands=False, temporal_stages=("q", "k"), nperseg=16)
    stats = extractor.run(random_windows(n=2, length=32), progress=False)
    assert stats.psd("q").shape == (1, 2, 9)
    assert np.all(np.isfinite(stats.psd("k")))


def test_window_shorter_than_segment_rejected():
    model = planted_llama(layers=1)
    bridge = bridge_from_hf(model)
    rope = rope_spec_from_config(model.config)
    extractor = StreamingExtractor(bridge, rope, [0], [0], bands=False, temporal_stages=("q",), nperseg=64)
    with pytest.raises(ValueError, match="nperseg=64"):
        extractor.run(random_windows(n=1, length=32), progress=False)
