"""Seeded tasks: determinism per (seed, step), documented layouts and input errors."""

from __future__ import annotations

import pytest
import torch

from spectral_forensics.data.tasks import (
    BOS_TOKEN,
    IGNORE_INDEX,
    TASKS,
    ChainTask,
    InductionTask,
    MQARTask,
    make_task,
)
from spectral_forensics.data.text import default_text_path, read_text


def _text_file(tmp_path, text="abcdefghij" * 50):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["induction", "mqar", "chain"])
def test_batches_depend_only_on_seed_and_step(name):
    task = make_task(name, seed=3)
    first = task.batch(5, 8)
    task.batch(0, 8)  # another call in between must not change batch 5
    again = make_task(name, seed=3).batch(5, 8)
    assert torch.equal(first[0], again[0])
    assert torch.equal(first[1], again[1])
    assert not torch.equal(first[0], task.batch(6, 8)[0])
    assert not torch.equal(first[0], make_task(name, seed=4).batch(5, 8)[0])
    assert not torch.equal(first[0], task.batch(5, 8, "eval")[0])


@pytest.mark.parametrize("name", ["induction", "mqar", "chain"])
def test_batch_shapes_and_token_range(name):
    task = make_task(name)
    input_ids, labels = task.batch(0, 4)
    assert input_ids.shape == labels.shape == (4, task.seq_len)
    assert input_ids.dtype == labels.dtype == torch.long
    assert int(input_ids.min()) >= 0
    assert int(input_ids.max()) < task.vocab_size
    scored = labels != IGNORE_INDEX
    assert scored.any()
    assert not scored[:, 0].any()
    assert torch.equal(labels[scored], input_ids[scored])


def test_induction_copy_repeats_segment_at_random_lag():
    task = InductionTask(seq_len=40, vocab_size=50, copy_len=6, seed=1)
    input_ids, labels = task.batch(0, 64)
    m, dest = 6, 40 - 6
    lags = []
    for row in input_ids:
        segment = row[dest:]
        assert len(set(segment.tolist())) == m
        matches = [s for s in range(1, dest - m + 1) if torch.equal(row[s : s + m], segment)]
        assert len(matches) == 1
        lag = dest - matches[0]
        assert task.min_lag <= lag <= task.max_lag
        lags.append(lag)
        # Every segment token occurs exactly twice: in the source and in the copy.
        for token in segment.tolist():
            assert int((row == token).sum()) == 2
        assert int(row[0]) == BOS_TOKEN
    assert len(set(lags)) > 5
    expected = torch.full_like(labels, IGNORE_INDEX)
    expected[:, dest + 1 :] = input_ids[:, dest + 1 :]
    assert torch.equal(labels, expected)


def test_induction_fixed_lag():
    task = InductionTask(seq_len=32, vocab_size=40, copy_len=4, min_lag=10, max_lag=10)
    input_ids, _ = task.batch(2, 16)
    assert torch.equal(input_ids[:, 18:22], input_ids[:, 28:32])


def test_mqar_answers_are_values_of_queried_keys():
    task = MQARTask(seq_len=30, vocab_size=40, num_pairs=6, num_queries=4, seed=2)
    input_ids, labels = task.batch(0, 32)
    for row, row_labels in zip(input_ids, labels):
        keys = row[1:13:2].tolist()
        values = row[2:13:2].tolist()
        assert len(set(keys)) == 6
        assert all(1 <= k < 20 for k in keys)
        assert all(20 <= v < 40 for v in values)
        mapping = dict(zip(keys, values))
        queries = row[13:21:2].tolist()
        answers = row[14:21:2].tolist()
        assert len(set(queries)) == 4
        assert answers == [mapping[q] for q in queries]
        assert row_labels[14:21:2].tolist() == answers
        assert int((row_labels != IGNORE_INDEX).sum()) == 4
        assert row[21:].tolist() == [BOS_TOKEN] * 9
    assert task.chance_accuracy == pytest.approx(1 / 20)


def _follow(row: torch.Tensor, start: int, hops: int, num_edges: int) -> int:
    edges = dict(zip(row[1 : 1 + 2 * num_edges : 2].tolist(), row[2 : 2 + 2 * num_edges : 2].tolist()))
    node = start
    for _ in range(hops):
        node = edges[node]
    return node


@pytest.mark.parametrize("depth", [1, 5, 30])
def test_chain_answer_is_depth_hops_away(depth):
    task = ChainTask(depth=depth, num_chains=2, seed=4)
    assert task.seq_len == 4 * depth + 4
    input_ids, labels = task.batch(0, 16)
    query = 1 + 4 * depth
    for row, row_labels in zip(input_ids, labels):
        assert int(row[query]) == ChainTask.QUERY_TOKEN
        start, answer = int(row[query + 1]), int(row[query + 2])
        assert _follow(row, start, depth, 2 * depth) == answer
        # The answer ends its chain: it is never the source of an edge.
        assert answer not in row[1:query:2].tolist()
        assert int(row_labels[query + 2]) == answer
        assert int((row_labels != IGNORE_INDEX).sum()) == 1
    assert task.chance_accuracy == 0.5


def test_chain_nodes_are_distinct():
    task = ChainTask(depth=6, num_chains=3)
    input_ids, _ = task.batch(1, 8)
    for row in input_ids:
        edges = row[1 : 1 + 2 * 18].view(-1, 2)
        assert len(set(edges[:, 0].tolist())) == 18
        assert len(set(edges[:, 1].tolist())) == 18
        assert int(edges.min()) >= 2


def test_text_crops_come_from_their_split(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    task = make_task("text", text=str(_text_file(tmp_path, text)), seq_len=20)
    assert task.vocab_size == 256
    raw = text.encode()
    for split, part in (("train", raw[:900]), ("eval", raw[900:])):
        input_ids, labels = task.batch(0, 8, split)
        assert torch.equal(input_ids, labels)
        for row in input_ids:
            assert bytes(row.tolist()) in part


def test_text_default_corpus_skips_metadata():
    directory = default_text_path()
    assert (directory / "metadata.txt").exists()
    text = read_text()
    assert "THE TRAGEDY OF KING LEAR" in text
    assert "[lear_gut]" not in text


def test_read_text_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="missing.txt.*not found"):
        read_text(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.txt.*not valid UTF-8"):
        read_text(latin)
    with pytest.raises(ValueError, match="is a directory"):
        read_text(tmp_path)


def test_text_shorter_than_window_raises(tmp_path):
    with pytest.raises(ValueError, match="seq_len=64"):
        make_task("text", text=str(_text_file(tmp_path, "short text" * 5)), seq_len=64)


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="chain, induction, mqar, text"):
        make_task("copying")
    assert sorted(TASKS) == ["chain", "induction", "mqar", "text"]


def test_unknown_parameter_raises():
    with pytest.raises(ValueError, match="depth.*not valid for task 'induction'"):
        make_task("induction", depth=3)


@pytest.mark.parametrize("name", ["induction", "mqar", "chain", "text"])
def test_sequence_length_below_two_raises(name, tmp_path):
    extra = {"text": str(_text_file(tmp_path))} if name == "text" else {}
    with pytest.raises(ValueError, match="seq_len=1"):
        make_task(name, seq_len=1, **extra)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("induction", {"seq_len": 16, "vocab_size": 4}, "vocab_size=4 is too small"),
        ("induction", {"seq_len": 16, "copy_len": 1}, "copy_len=1"),
        ("induction", {"seq_len": 16, "copy_len": 4, "min_lag": 2}, "min_lag=2"),
        ("mqar", {"seq_len": 16, "num_pairs": 5}, "seq_len=16 is too short"),
        ("mqar", {"seq_len": 64, "vocab_size": 10}, "vocab_size=10"),
        ("mqar", {"num_pairs": 2, "num_queries": 3}, "num_queries=3"),
        ("chain", {"depth": 30, "seq_len": 100}, "seq_len=100 is too short"),
        ("chain", {"depth": 30, "vocab_size": 40}, "vocab_size=40 is too small"),
        ("chain", {"depth": 0}, "depth=0"),
    ],
)
def test_inconsistent_parameters_raise(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_task(name, **params)


def test_negative_step_and_bad_split_raise():
    task = make_task("induction")
    with pytest.raises(ValueError, match="step=-1"):
        task.batch(-1, 2)
    with pytest.raises(ValueError, match="split='test'"):
        task.batch(0, 2, "test")
    with pytest.raises(ValueError, match="batch_size=0"):
        task.batch(0, 0)
