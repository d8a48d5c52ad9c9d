"""Tests of attach_momentum on plain Llama bridges against MomentumForCausalLM."""

import pytest
import torch
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from spectral_forensics.momentum.attach import MomentumHandle, attach_momentum
from spectral_forensics.momentum.modeling import MomentumConfig, MomentumForCausalLM
from spectral_forensics.momentum.operator import momentum_shear

VOCAB = 40
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=32,
    initializer_range=0.2,
    rms_norm_eps=1e-6,
)


def tokens(batch=2, n_pos=10, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, n_pos), generator=generator)


def llama_pair(kv_heads, placement, gamma, seed=0):
    """Return a Llama bridge and a MomentumForCausalLM with the same weights."""
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(
        LlamaConfig(**SIZES, num_key_value_heads=kv_heads, rope_theta=10000.0)
    ).eval()
    momentum = MomentumForCausalLM(
        MomentumConfig(
            **SIZES, num_key_value_heads=kv_heads, gamma=gamma, placement=placement
        )
    ).eval()
    momentum.load_state_dict(llama.state_dict(), strict=True)
    bridge = build_bridge_from_module(llama, "LlamaForCausalLM", hf_config=llama.config)
    return bridge, momentum


@pytest.mark.parametrize("placement", ["post_rope", "pre_rope"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attached_llama_equals_momentum_model(placement, kv_heads):
    gamma = [[0.5, 0.5, 3.0, 3.0], 1.5]
    bridge, momentum = llama_pair(kv_heads, placement, gamma)
    ids = tokens()
    with torch.no_grad():
        expected = momentum(ids).logits
        baseline = bridge(ids)
        handle = attach_momentum(bridge, gamma, placement=placement)
        attached = bridge(ids)
        handle.detach()
        restored = bridge(ids)
    assert (attached - expected).abs().max().item() <= 1e-5
    assert (attached - baseline).abs().max().item() > 1e-3
    assert torch.equal(restored, baseline)


def test_attached_plain_equals_placement_none():
    bridge, momentum = llama_pair(2, "none", 2.0)
    ids = tokens()
    with torch.no_grad():
        difference = (bridge(ids) - momentum(ids).logits).abs().max().item()
    assert difference <= 1e-5


def test_context_manager_detaches():
    bridge, _ = llama_pair(4, "post_rope", 1.0)
    ids = tokens()
    with torch.no_grad():
        baseline = bridge(ids)
        with attach_momentum(bridge, 2.0) as handle:
            assert isinstance(handle, MomentumHandle)
            assert handle.attached
            inside = bridge(ids)
        assert not handle.attached
        after = bridge(ids)
    assert (inside - baseline).abs().max().item() > 1e-3
    assert torch.equal(after, baseline)


def test_layer_subset_equals_per_layer_gamma():
    bridge, momentum = llama_pair(4, "post_rope", [0.0, 2.5])
    ids = tokens()
    with torch.no_grad():
        with attach_momentum(bridge, 2.5, layers=[-1]) as handle:
            attached = bridge(ids)
        expected = momentum(ids).logits
    assert handle.layers == (1,)
    assert (attached - expected).abs().max().item() <= 1e-5


def test_reset_hooks_keeps_attachment():
    bridge, momentum = llama_pair(4, "pre_rope", 1.0)
    ids = tokens()
    with torch.no_grad():
        handle = attach_momentum(bridge, 1.0, placement="pre_rope")
        bridge.reset_hooks()
        attached = bridge(ids)
        handle.detach()
        handle.detach()  # a second call is a no-op
    assert (attached - momentum(ids).logits).abs().max().item() <= 1e-5


def test_detach_leaves_user_hooks():
    bridge, _ = llama_pair(4, "post_rope", 1.0)
    calls = []
    hook_point = bridge.hook_dict["blocks.0.attn.hook_rot_q"]
    hook_point.add_hook(lambda q, hook: calls.append(q.shape))
    handle = attach_momentum(bridge, 1.0)
    handle.detach()
    calls.clear()
    with torch.no_grad():
        bridge(tokens())
    assert calls == [torch.Size([2, 10, 4, 8])]
    bridge.reset_hooks()


def test_cache_records_sheared_rotation():
    bridge, _ = llama_pair(2, "post_rope", 1.0)
    ids = tokens()
    with torch.no_grad():
        _, plain = bridge.run_with_cache(ids)
        starts = torch.zeros(2, 10, dtype=torch.bool)
        starts[:, 0] = True
        starts[0, 6] = True
        with attach_momentum(bridge, 2.0, document_starts=starts):
            _, sheared = bridge.run_with_cache(ids)
    expected = momentum_shear(plain["blocks.0.attn.hook_rot_k"], 2.0, dim=1, document_starts=starts)
    assert torch.allclose(sheared["blocks.0.attn.hook_rot_k"], expected, atol=1e-6)
    # The momentum restarts at the document start, so that key is unchanged there.
    assert torch.equal(
        sheared["blocks.0.attn.hook_rot_k"][0, 6], plain["blocks.0.attn.hook_rot_k"][0, 6]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": 1.0, "placement": "none"}, "placement"),
        ({"gamma": 1.0, "placement": "middle"}, "placement"),
        ({"gamma": -1.0}, "finite and >= 0"),
        ({"gamma": [1.0, 2.0, 3.0]}, "one per layer"),
        ({"gamma": [[1.0, 2.0, 1.0, 1.0], 1.0]}, "share key/value head"),
        ({"gamma": 1.0, "layers": [2]}, "out of range"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    bridge, _ = llama_pair(2, "post_rope", 1.0)
    with pytest.raises(ValueError, match=message):
        attach_momentum(bridge, **kwargs)
    assert not bridge.hook_dict["blocks.0.attn.hook_rot_q"].fwd_hooks


@pytest.mark.parametrize("placement", ["pre_rope", "post_rope"])
def test_bridge_without_rotary_raises(placement):
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    ).eval()
    bridge = build_bridge_from_module(gpt2, "GPT2LMHeadModel", hf_config=gpt2.config)
    with pytest.raises(ValueError, match="needs rotary position embeddings"):
        attach_momentum(bridge, 1.0, placement=placement)


def test_silent_hook_points_raise():
    neox = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=32,
            rotary_pct=0.25,
        )
    ).eval()
    bridge = build_bridge_from_module(neox, "GPTNeoXForCausalLM", hf_config=neox.config)
    with pytest.raises(RuntimeError, match="did not fire"):
        attach_momentum(bridge, 1.0, placement="post_rope")
    assert not bridge.hook_dict["blocks.0.attn.hook_rot_q"].fwd_hooks
