"""Induction metrics on real TransformerLens bridges over tiny Hugging Face models.

The planted model is a two-layer GPT-2 whose weights are set by hand in ``_planted_gpt2``.
Layer 0 head 0 is a previous-token head. Layer 0 head 1 attends a fixed number of tokens back
by position alone. Layer 1 head 1 is an induction head built by K-composition with layer 0
head 0.
"""

import doctest

import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import spectral_forensics.metrics.induction as induction_module
from spectral_forensics.metrics.induction import (
    HeadScores,
    copying_scores,
    induction_scores,
    repeated_token_batch,
)
from spectral_forensics.models import bridge_from_hf

# Residual-stream layout of the planted GPT-2: one-hot token, one-hot position, the previous
# token written by layer 0 head 0, and a sink dimension that nothing writes to.
VOCAB, N_CTX, D_MODEL, D_HEAD = 16, 24, 64, 32
TOKEN_DIMS, POSITION_DIMS, PREVIOUS_DIMS, SINK_DIM = 0, 16, 40, 63
POSITIONAL_LAG = 6  # layer 0 head 1 attends this many tokens back
BOS = 0


def _set_head(attn, head, query=None, key=None, value=None, output=None):
    """Write one head's (d_model, d_head) read matrices and (d_head, d_model) write matrix.

    Every read matrix gets its sink row set to minus the sum of its other rows, so it maps the
    all-ones vector to 0 and LayerNorm's mean subtraction does not change q, k or v.
    """
    for index, matrix in enumerate((query, key, value)):
        if matrix is None:
            continue
        matrix = matrix.clone()
        matrix[SINK_DIM] = -matrix.sum(dim=0)
        columns = slice(index * D_MODEL + head * D_HEAD, index * D_MODEL + (head + 1) * D_HEAD)
        attn.c_attn.weight[:, columns] = matrix
    if output is not None:
        attn.c_proj.weight[head * D_HEAD : (head + 1) * D_HEAD] = output


def _planted_gpt2():
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=N_CTX,
        n_embd=D_MODEL,
        n_layer=2,
        n_head=2,
        bos_token_id=BOS,
        eos_token_id=BOS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config).eval()
    body = model.transformer
    sharpness = 3.0  # q·k of a matching pair is about 40 after LayerNorm and 1/sqrt(d_head)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # MLPs and biases stay 0, so MLPs add nothing
        body.wte.weight[:, TOKEN_DIMS : TOKEN_DIMS + VOCAB] = torch.eye(VOCAB)
        body.wpe.weight[:, POSITION_DIMS : POSITION_DIMS + N_CTX] = torch.eye(N_CTX)
        norms = [body.ln_f] + [block.ln_1 for block in body.h] + [block.ln_2 for block in body.h]
        for norm in norms:
            norm.weight.fill_(1.0)

        # Layer 0 head 0: query at position p matches the key at p - 1; it copies that
        # token into PREVIOUS_DIMS.
        query, key = torch.zeros(D_MODEL, D_HEAD), torch.zeros(D_MODEL, D_HEAD)
        value, output = torch.zeros(D_MODEL, D_HEAD), torch.zeros(D_HEAD, D_MODEL)
        for position in range(N_CTX):
            query[POSITION_DIMS + position, position] = sharpness
            if position + 1 < N_CTX:
                key[POSITION_DIMS + position, position + 1] = sharpness
        for token in range(VOCAB):
            value[TOKEN_DIMS + token, token] = 1.0
            output[token, PREVIOUS_DIMS + token] = 0.18
        _set_head(body.h[0].attn, 0, query, key, value, output)

        # Layer 0 head 1: attends POSITIONAL_LAG tokens back and writes nothing.
        query, key = torch.zeros(D_MODEL, D_HEAD), torch.zeros(D_MODEL, D_HEAD)
        for position in range(N_CTX):
            query[POSITION_DIMS + position, position] = sharpness
            if position + POSITIONAL_LAG < N_CTX:
                key[POSITION_DIMS + position, position + POSITIONAL_LAG] = sharpness
        _set_head(body.h[0].attn, 1, query, key)

        # Layer 1 head 1: the current token matches the previous-token record of a key, and
        # the head copies the attended token back into TOKEN_DIMS.
        query, key = torch.zeros(D_MODEL, D_HEAD), torch.zeros(D_MODEL, D_HEAD)
        value, output = torch.zeros(D_MODEL, D_HEAD), torch.zeros(D_HEAD, D_MODEL)
        for token in range(VOCAB):
            query[TOKEN_DIMS + token, token] = sharpness
            key[PREVIOUS_DIMS + token, token] = sharpness
            value[TOKEN_DIMS + token, token] = 1.0
            output[token, TOKEN_DIMS + token] = 0.2
        _set_head(body.h[1].attn, 1, query, key, value, output)

        # Layer 1 head 0: small random weights.
        generator = torch.Generator().manual_seed(1)
        small = [0.02 * torch.randn(D_MODEL, D_HEAD, generator=generator) for _ in range(3)]
        small_output = 0.02 * torch.randn(D_HEAD, D_MODEL, generator=generator)
        _set_head(body.h[1].attn, 0, *small, small_output)
    return model


def _word_tokenizer(directory):
    """Build a word-level tokenizer ("<bos>", "t1" … "t15" for ids 0 … 15), saved and reloaded.

    TransformerLens rebuilds the tokenizer from its ``name_or_path``, so it must come from a
    directory.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = {"<bos>": BOS, **{f"t{i}": i for i in range(1, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<bos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {name: "<bos>" for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    PreTrainedTokenizerFast(tokenizer_object=backend, **special).save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def planted():
    return bridge_from_hf(_planted_gpt2())


@pytest.fixture(scope="module")
def llama_gqa():
    """A random two-layer Llama with grouped-query attention and non-trivial RMSNorm gains."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    return bridge_from_hf(model)


def test_doctests_pass():
    result = doctest.testmod(induction_module)
    assert result.attempted > 0
    assert result.failed == 0


def test_repeated_batch_layout():
    rows = repeated_token_batch(
        40, batch=24, min_len=3, max_len=9, seed=5, bos_id=0, exclude_ids=[1, 2]
    )
    lengths = rows.repeat_lengths.tolist()
    assert rows.tokens.shape == (24, 1 + 2 * max(lengths))
    assert rows.first_start == 1
    assert len(set(lengths)) >= 4  # the repeat length varies within the batch
    assert min(lengths) >= 3
    assert max(lengths) <= 9
    for row, n in zip(rows.tokens, lengths):
        assert row[0] == 0
        first, second = row[1 : 1 + n], row[1 + n : 1 + 2 * n]
        assert torch.equal(first, second)
        assert len(set(first.tolist())) == n
        assert not set(row[1:].tolist()) & {0, 1, 2}
    assert rows.second_copy_mask.sum(dim=1).tolist() == lengths
    assert not rows.previous_token_mask[:, 0].any()
    assert rows.previous_token_mask[:, 1:].all()


def test_repeated_batch_targets_point_at_repeat():
    rows = repeated_token_batch(50, batch=8, min_len=3, max_len=12, seed=2, bos_id=7)
    duplicate = rows.target_positions(0)
    induction = rows.target_positions(1)
    for b in range(8):
        n = int(rows.repeat_lengths[b])
        second_copy = torch.nonzero(rows.second_copy_mask[b]).flatten().tolist()
        assert second_copy == list(range(1 + n, 1 + 2 * n))
        for t in second_copy:
            assert int(duplicate[b, t]) == t - n
            assert rows.tokens[b, duplicate[b, t]] == rows.tokens[b, t]
            assert int(induction[b, t]) == t - n + 1
            # The token after the previous occurrence is the one that follows t.
            if t + 1 < 1 + 2 * n:
                assert rows.tokens[b, induction[b, t]] == rows.tokens[b, t + 1]


def test_repeated_batch_seeded():
    first = repeated_token_batch(100, batch=4, min_len=3, max_len=6, seed=11)
    again = repeated_token_batch(100, batch=4, min_len=3, max_len=6, seed=11)
    other = repeated_token_batch(100, batch=4, min_len=3, max_len=6, seed=12)
    assert first.first_start == 0
    assert first.bos_id is None
    assert torch.equal(first.tokens, again.tokens)
    assert not torch.equal(first.tokens, other.tokens) or not torch.equal(
        first.repeat_lengths, other.repeat_lengths
    )


def test_small_vocabulary_raises():
    with pytest.raises(ValueError, match=r"vocab_size=8 leaves 7 token ids.*max_len=10"):
        repeated_token_batch(8, batch=2, min_len=4, max_len=10, bos_id=0)
    with pytest.raises(ValueError, match=r"vocab_size=12 leaves 9 token ids"):
        repeated_token_batch(12, batch=2, min_len=4, max_len=10, bos_id=0, exclude_ids=[1, 2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_len": 2, "max_len": 5}, "min_len=2"),
        ({"min_len": 6, "max_len": 5}, "max_len=5 is smaller"),
        ({"min_len": 3, "max_len": 5, "batch": 0}, "batch=0"),
        ({"min_len": 3, "max_len": 5, "bos_id": 64}, "bos_id=64"),
    ],
)
def test_repeated_batch_rejects_bad_arguments(kwargs, message):
    arguments = {"batch": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        repeated_token_batch(64, **arguments)


def test_planted_heads_singled_out(planted):
    scores = induction_scores(planted, batch=32, min_len=4, max_len=11, seed=0)
    assert isinstance(scores, HeadScores)
    assert scores.layers == (0, 1)
    assert scores.induction.shape == (2, 2)
    assert len(scores.settings["distinct_repeat_lengths"]) >= 5

    assert scores.induction[1, 1] > 0.95
    others = np.delete(scores.induction.ravel(), 3)
    assert others.max() < 0.3

    assert scores.previous_token[0, 0] > 0.95
    assert np.delete(scores.previous_token.ravel(), 0).max() < 0.3

    # No head of the planted model attends to the previous occurrence itself.
    assert scores.duplicate_token.max() < 0.3

    # The induction head copies tokens (OV circuit ≈ identity on token space); layer 0
    # head 1 has a zero OV circuit.
    assert scores.copying[1, 1] > 0.99
    assert np.isnan(scores.copying[0, 1])


def test_fixed_repeat_length_rewards_positional_head(planted):
    fixed = induction_scores(planted, batch=16, min_len=7, max_len=7, seed=0)
    varying = induction_scores(planted, batch=32, min_len=4, max_len=11, seed=0)
    assert fixed.settings["distinct_repeat_lengths"] == [7]
    # With n = 7 everywhere, attending 6 tokens back by position hits every induction target.
    assert fixed.induction[0, 1] > 0.95
    assert varying.induction[0, 1] < 0.3
    assert fixed.induction[1, 1] > 0.95
    assert varying.induction[1, 1] > 0.95


def test_records_one_per_head(planted):
    scores = induction_scores(planted, layers=[1], batch=4, min_len=3, max_len=5)
    records = scores.records()
    assert [(r["layer"], r["head"]) for r in records] == [(1, 0), (1, 1)]
    kinds = {"induction", "duplicate_token", "previous_token", "copying"}
    assert set(records[0]) == {"layer", "head"} | kinds
    assert records[1]["induction"] == pytest.approx(scores.induction[0, 1])


def test_invalid_requests_raise(planted, llama_gqa):
    with pytest.raises(ValueError, match="layers contains 2"):
        induction_scores(planted, layers=[2], batch=2, min_len=3, max_len=4)
    with pytest.raises(ValueError, match=r"max_len=12 allows rows of 25 tokens.*n_ctx=24"):
        induction_scores(planted, batch=2, min_len=3, max_len=12)
    too_long = repeated_token_batch(VOCAB, batch=1, min_len=12, max_len=12, bos_id=BOS)
    with pytest.raises(ValueError, match="at most 11"):
        induction_scores(planted, token_batch=too_long)
    with pytest.raises(ValueError, match="vocab_size=16 leaves 10"):
        induction_scores(
            planted, batch=2, min_len=3, max_len=11, bos_id=None, exclude_ids=range(6)
        )
    # The Llama config's special ids 0, 1, 2 are excluded from the random tokens, and 1 is BOS.
    rows = induction_scores(llama_gqa, batch=2, min_len=3, max_len=4).settings
    assert rows["bos_id"] == 1


def test_hook_pattern_silent_raises():
    # The GPT-J attention bridge of TransformerLens 4.3.0 never fires hook_pattern.
    config = GPTJConfig(vocab_size=64, n_embd=32, n_layer=1, n_head=2, rotary_dim=8, n_positions=64)
    bridge = bridge_from_hf(GPTJForCausalLM(config).eval())
    with pytest.raises(RuntimeError, match=r"blocks\.0\.attn\.hook_pattern did not fire"):
        induction_scores(bridge, batch=2, min_len=3, max_len=4, bos_id=None)


def test_scores_match_tl_head_detector(tmp_path):
    """detect_head(error_measure="mul") divides by all L query rows, not by the scored ones."""
    from transformer_lens.head_detector import detect_head
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    model = _planted_gpt2()
    bridge = build_bridge_from_module(
        model, "GPT2LMHeadModel", hf_config=model.config, tokenizer=_word_tokenizer(tmp_path)
    )
    n = 7
    rows = repeated_token_batch(VOCAB, batch=3, min_len=n, max_len=n, seed=3, bos_id=BOS)
    texts = [" ".join(f"t{token}" for token in row[1:].tolist()) for row in rows.tokens]
    assert torch.equal(bridge.to_tokens(texts).cpu(), rows.tokens)

    ours = induction_scores(bridge, token_batch=rows)
    length = rows.tokens.shape[1]
    comparisons = {
        "induction_head": (ours.induction, n / length),
        "duplicate_token_head": (ours.duplicate_token, n / length),
        "previous_token_head": (ours.previous_token, (length - 1) / length),
    }
    for head_name, (score, factor) in comparisons.items():
        theirs = detect_head(bridge, texts, head_name).double().numpy()
        np.testing.assert_allclose(theirs, score * factor, rtol=1e-5, atol=1e-7, err_msg=head_name)
    # The planted heads are found by both at the rescaled maxima.
    assert ours.induction[1, 1] * n / length == pytest.approx(n / length, abs=1e-3)


def _full_ov_copying(w_e, first_norm, w_v, w_o, final_norm, w_u):
    """Copying score from every eigenvalue of the (d_vocab, d_vocab) OV circuit."""
    full = w_e @ first_norm @ w_v @ w_o @ final_norm @ w_u
    eigenvalues = np.linalg.eigvals(full)
    return eigenvalues.real.sum() / np.abs(eigenvalues).sum()


def _norm_matrix(norm, d_model, centre):
    gain = np.diag(norm.weight.detach().double().numpy())
    if centre:
        return (np.eye(d_model) - 1.0 / d_model) @ gain
    return gain


@pytest.mark.parametrize("model_name", ["llama_gqa", "planted"])
def test_copying_matches_full_ov_eigenvalues(model_name, request):
    bridge = request.getfixturevalue(model_name)
    centre = model_name == "planted"  # GPT-2 uses LayerNorm, Llama RMSNorm
    ours = copying_scores(bridge)
    w_e = bridge.W_E.detach().double().numpy()
    w_u = bridge.W_U.detach().double().numpy()
    d_model = w_e.shape[1]
    final_norm = _norm_matrix(bridge.ln_final, d_model, centre)
    n_heads = bridge.cfg.n_heads
    for layer in range(bridge.cfg.n_layers):
        attn = bridge.blocks[layer].attn
        w_v = attn.W_V.detach().double().numpy()
        w_o = attn.W_O.detach().double().numpy()
        first_norm = _norm_matrix(bridge.blocks[layer].ln1, d_model, centre)
        group = n_heads // w_v.shape[0]
        for head in range(n_heads):
            if np.isnan(ours[layer, head]):
                assert np.abs(w_o[head]).max() == 0
                continue
            expected = _full_ov_copying(
                w_e, first_norm, w_v[head // group], w_o[head], final_norm, w_u
            )
            assert ours[layer, head] == pytest.approx(expected, abs=1e-6), (layer, head)


def test_copying_without_norms_matches_tl_factored_matrix(llama_gqa):
    ours = copying_scores(llama_gqa, include_norms=False)
    circuit = llama_gqa.W_E @ llama_gqa.OV @ llama_gqa.W_U  # FactoredMatrix, GQA heads expanded
    eigenvalues = circuit.eigenvalues
    theirs = (eigenvalues.real.sum(-1) / eigenvalues.abs().sum(-1)).detach().double().numpy()
    assert theirs.shape == ours.shape == (2, 4)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # The norm gains change the circuit, so the default scores differ.
    assert np.abs(copying_scores(llama_gqa) - ours).max() > 1e-3
