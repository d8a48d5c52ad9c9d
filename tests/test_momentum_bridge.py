"""Tests of the TransformerLens bridge of MomentumForCausalLM: parity, hooks, loading."""

import copy

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from spectral_forensics.momentum.adapter import (
    MomentumArchitectureAdapter,
    MomentumAttentionBridge,
    build_momentum_bridge,
)
from spectral_forensics.momentum.modeling import MomentumConfig, MomentumForCausalLM, apply_rotary
from spectral_forensics.momentum.operator import momentum_shear

VOCAB = 40
GAMMA = [[0.5, 0.5, 3.0, 3.0], 1.0]  # per head in layer 0, one value in layer 1


def tiny_model(seed=0, **overrides):
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
        initializer_range=0.2,
        gamma=GAMMA,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return MomentumForCausalLM(MomentumConfig(**settings)).eval()


def tokens(batch=2, n_pos=10, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, n_pos), generator=generator)


def bridge_and_reference(**overrides):
    """Return a bridge and an untouched copy of the same Hugging Face model."""
    model = tiny_model(**overrides)
    reference = copy.deepcopy(model)
    bridge = build_bridge_from_module(model, "MomentumForCausalLM", hf_config=model.config)
    return bridge, reference


def word_tokenizer(directory):
    """Save and reload a word-level tokenizer over the names t0 … t{VOCAB-1}, offline."""
    vocab = {f"t{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t3"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="t3", bos_token="t0", eos_token="t1", pad_token="t2"
    )
    tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def test_adapter_selected_for_architecture():
    bridge, _ = bridge_and_reference()
    assert isinstance(bridge.adapter, MomentumArchitectureAdapter)
    assert isinstance(bridge.blocks[0].attn, MomentumAttentionBridge)
    assert bridge.cfg.rotary_base == 10000.0
    assert bridge.cfg.momentum_placement == "post_rope"


@pytest.mark.parametrize("placement", ["post_rope", "pre_rope", "none"])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("attention_only", [False, True])
def test_bridge_logits_match_model(placement, kv_heads, attention_only):
    gamma = GAMMA if kv_heads == 2 else [[0.5, 1.0, 2.0, 4.0], 1.0]
    bridge, reference = bridge_and_reference(
        placement=placement,
        num_key_value_heads=kv_heads,
        attention_only=attention_only,
        gamma=gamma,
    )
    ids = tokens()
    with torch.no_grad():
        expected = reference(ids).logits
        logits = bridge(ids)
    assert logits.dtype == torch.float32
    assert (logits - expected).abs().max().item() <= 1e-5


def test_bridge_document_ids_match_model():
    bridge, reference = bridge_and_reference(gamma=2.0)
    ids = tokens(2, 10)
    document_ids = torch.tensor([[0] * 4 + [1] * 6, [0] * 7 + [1] * 3])
    with torch.no_grad():
        expected = reference(ids, document_ids=document_ids).logits
        logits = bridge(ids, document_ids=document_ids)
        undivided = bridge(ids)
    assert (logits - expected).abs().max().item() <= 1e-5
    assert (undivided - expected).abs().max().item() > 1e-3


ATTENTION_HOOKS = {
    "hook_in": (2, 10, 32),
    "hook_q": (2, 10, 4, 8),
    "hook_k": (2, 10, 2, 8),
    "hook_v": (2, 10, 2, 8),
    "hook_cos": (2, 10, 8),
    "hook_sin": (2, 10, 8),
    "hook_rot_q": (2, 10, 4, 8),
    "hook_rot_k": (2, 10, 2, 8),
    "hook_mom_q": (2, 10, 4, 8),
    "hook_mom_k": (2, 10, 2, 8),
    "hook_attn_scores": (2, 4, 10, 10),
    "hook_pattern": (2, 4, 10, 10),
    "hook_z": (2, 10, 4, 8),
    "hook_out": (2, 10, 32),
}
BLOCK_HOOKS = {
    "hook_resid_pre": (2, 10, 32),
    "ln1.hook_normalized": (2, 10, 32),
    "hook_attn_out": (2, 10, 32),
    "hook_resid_post": (2, 10, 32),
}
MLP_HOOKS = {
    "ln2.hook_normalized": (2, 10, 32),
    "mlp.hook_pre": (2, 10, 48),
    "mlp.hook_out": (2, 10, 32),
    "hook_mlp_out": (2, 10, 32),
}


@pytest.mark.parametrize("placement", ["post_rope", "pre_rope", "none"])
def test_named_hooks_fire_with_shapes(placement):
    bridge, _ = bridge_and_reference(placement=placement)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens())
    for layer in range(2):
        for name, shape in ATTENTION_HOOKS.items():
            key = f"blocks.{layer}.attn.{name}"
            assert key in cache, f"{key} did not fire"
            assert tuple(cache[key].shape) == shape, key
        for name, shape in {**BLOCK_HOOKS, **MLP_HOOKS}.items():
            key = f"blocks.{layer}.{name}"
            assert key in cache, f"{key} did not fire"
            assert tuple(cache[key].shape) == shape, key
    assert tuple(cache["hook_embed"].shape) == (2, 10, 32)
    assert tuple(cache["ln_final.hook_normalized"].shape) == (2, 10, 32)


def test_attention_only_has_no_mlp_hooks():
    bridge, _ = bridge_and_reference(attention_only=True)
    assert bridge.cfg.attn_only is True
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens())
    assert "blocks.0.attn.hook_mom_k" in cache
    assert not any(".mlp." in key or "ln2" in key for key in cache.keys())


def test_post_rope_hooks_hold_shear_of_rotation():
    bridge, _ = bridge_and_reference(placement="post_rope")
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens())
    gamma_q = torch.tensor([0.5, 0.5, 3.0, 3.0])[:, None]
    gamma_k = torch.tensor([0.5, 3.0])[:, None]
    expected_q = momentum_shear(cache["blocks.0.attn.hook_rot_q"], gamma_q, dim=1)
    expected_k = momentum_shear(cache["blocks.0.attn.hook_rot_k"], gamma_k, dim=1)
    assert torch.allclose(cache["blocks.0.attn.hook_mom_q"], expected_q, atol=1e-6)
    assert torch.allclose(cache["blocks.0.attn.hook_mom_k"], expected_k, atol=1e-6)


def test_pre_rope_hooks_hold_rotation_of_shear():
    bridge, _ = bridge_and_reference(placement="pre_rope")
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens())
    gamma_k = torch.tensor([0.5, 3.0])[:, None]
    sheared = momentum_shear(cache["blocks.0.attn.hook_k"], gamma_k, dim=1)
    assert torch.allclose(cache["blocks.0.attn.hook_mom_k"], sheared, atol=1e-6)
    cos, sin = cache["blocks.0.attn.hook_cos"], cache["blocks.0.attn.hook_sin"]
    rotated = apply_rotary(sheared.transpose(1, 2), cos, sin).transpose(1, 2)
    assert torch.allclose(cache["blocks.0.attn.hook_rot_k"], rotated, atol=1e-6)


def test_editing_hook_mom_k_changes_output():
    bridge, _ = bridge_and_reference()
    ids = tokens()
    with torch.no_grad():
        baseline = bridge(ids)
        unchanged = bridge.run_with_hooks(
            ids, fwd_hooks=[("blocks.0.attn.hook_mom_k", lambda k, hook: k.clone())]
        )
        edited = bridge.run_with_hooks(
            ids, fwd_hooks=[("blocks.0.attn.hook_mom_k", lambda k, hook: torch.zeros_like(k))]
        )
    assert torch.equal(unchanged, baseline)
    assert (edited - baseline).abs().max().item() > 1e-3


def test_zeroed_keys_give_uniform_pattern():
    bridge, _ = bridge_and_reference()
    captured = {}

    def store_pattern(pattern, hook):
        captured["pattern"] = pattern.detach().clone()

    with torch.no_grad():
        bridge.run_with_hooks(
            tokens(),
            fwd_hooks=[
                ("blocks.0.attn.hook_mom_k", lambda k, hook: torch.zeros_like(k)),
                ("blocks.0.attn.hook_pattern", store_pattern),
            ],
        )
    # All scores are 0, so query t spreads 1/(t+1) over the keys 0..t.
    expected = torch.ones(10, 10).tril() / torch.arange(1, 11)[:, None]
    assert torch.allclose(captured["pattern"][0, 0], expected, atol=1e-6)


def test_gamma_zero_bridge_equals_no_momentum():
    ids = tokens()
    without, _ = bridge_and_reference(placement="none", gamma=0.0)
    for placement in ("post_rope", "pre_rope"):
        with_zero, _ = bridge_and_reference(placement=placement, gamma=0.0)
        with torch.no_grad():
            assert torch.equal(with_zero(ids), without(ids))


def test_learned_gamma_live_in_bridge():
    model = tiny_model(learn_gamma=True, gamma=1.0)
    bridge = build_momentum_bridge(model)
    ids = tokens()
    with torch.no_grad():
        before = bridge(ids)
        model.model.layers[0].self_attn.gamma_raw.add_(2.0)
        after = bridge(ids)
    assert (after - before).abs().max().item() > 1e-3


def test_boot_transformers_round_trip(tmp_path):
    model = tiny_model(placement="pre_rope", learn_gamma=True)
    ids = tokens()
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    tokenizer = word_tokenizer(tmp_path)
    bridge = TransformerBridge.boot_transformers(str(tmp_path), tokenizer=tokenizer, device="cpu")
    assert isinstance(bridge.original_model, MomentumForCausalLM)
    with torch.no_grad():
        logits = bridge(ids)
        text_logits = bridge("t4 t5 t6")
    assert (logits - expected).abs().max().item() <= 1e-5
    assert text_logits.shape[-1] == VOCAB


def test_bridge_rejects_kv_cache():
    bridge, _ = bridge_and_reference()
    attention = bridge.blocks[0].attn
    hidden = torch.randn(1, 4, 32)
    cos = torch.ones(1, 4, 8)
    sin = torch.zeros(1, 4, 8)
    with pytest.raises(ValueError, match="no\\s+key/value cache"):
        attention(hidden_states=hidden, position_embeddings=(cos, sin), past_key_values=object())
