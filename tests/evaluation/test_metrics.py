"""tinystories.evaluation.metrics: the exact stream loss against independent recomputations, stream helpers, and
hand-checked generation-quality metrics."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tinystories.evaluation.metrics as evaluation
from model.model import Model, preset
from tinystories.errors import UserError
from tinystories.evaluation.metrics import (
    ConcatenatedTokens,
    byte_count,
    count_stories,
    distinct_n,
    first_sentence,
    first_stories,
    generation_quality,
    repetition_n,
    story_texts,
    stream_loss,
    words,
)
from tinystories.evaluation.subjects import CheckpointSubject
from tinystories.interop.hf import to_hf
from tinystories.tokenizer import EOT_ID, get_tokenizer

STORIES = [
    "Once upon a time, there was a little cat named Tom. Tom liked to play in the sun.",
    "Lily had a red ball! She threw it high, and it landed in a tree. \"Oh no,\" she said.",
    "The dog was happy. He ran to the park with his friend, and they played until dark.",
    "One day, Sam found a shiny stone. He showed it to his mom. She smiled and said it was pretty.",
]


def encode(stories: list[str]) -> np.ndarray:
    tokenizer = get_tokenizer()
    return np.array([t for story in stories for t in tokenizer.encode_ordinary(story) + [EOT_ID]], dtype=np.uint16)


@pytest.fixture(scope="module")
def model() -> Model:
    torch.manual_seed(0)
    model = Model(preset("tiny", dropout=0.0, block_size=32))  # 32: the stories span several windows
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return encode(STORIES)


def loss_by_plain_loops(model: Model, tokens: np.ndarray) -> tuple[float, int]:
    """Summed cross-entropy, one token at a time: token i >= 1 sees the tokens from its window's start."""
    block_size = model.config.block_size
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(1, len(tokens)):
            start = (i - 1) // block_size * block_size
            context = torch.tensor(tokens[start:i].astype(np.int64))[None]
            log_probabilities = torch.log_softmax(model(context)[0][0, -1].double(), dim=0)
            total -= log_probabilities[int(tokens[i])].item()
            count += 1
    return total, count


def test_loss_equals_a_plain_recomputation(model, tokens):
    assert (len(tokens) - 1) % model.config.block_size != 0, "the last window should be a short one"
    result = stream_loss(CheckpointSubject(model), tokens, batch_size=2, progress=False)
    total, count = loss_by_plain_loops(model, tokens)
    assert result.tokens == count == len(tokens) - 1
    assert result.loss == pytest.approx(total / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


def test_loss_equals_the_exported_hugging_face_model(model, tokens):
    hf_model = to_hf(model)
    block_size = model.config.block_size
    ids = torch.tensor(tokens.astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, block_size):
            inputs = ids[start:start + block_size]
            targets = ids[start + 1:start + block_size + 1]
            inputs = inputs[:len(targets)]
            logits = hf_model(inputs[None]).logits[0].double()
            total += F.cross_entropy(logits, targets, reduction="sum").item()
    result = stream_loss(CheckpointSubject(model), tokens, batch_size=32, progress=False)
    assert result.loss == pytest.approx(total / (len(ids) - 1), rel=1e-5)


def test_loss_does_not_depend_on_the_batch_size(model, tokens):
    subject = CheckpointSubject(model)
    losses = {stream_loss(subject, tokens, batch_size=size, progress=False).nll for size in (1, 3, 100)}
    assert max(losses) - min(losses) < 1e-6 * max(losses)


def test_bits_per_byte_counts_the_scored_texts_bytes(model, tokens):
    result = stream_loss(CheckpointSubject(model), tokens, batch_size=4, progress=False)
    tokenizer = get_tokenizer()
    scored = tokens[1:].tolist()
    text_bytes = sum(len(tokenizer.decode_single_token_bytes(t)) for t in scored if t != EOT_ID)
    assert result.bytes == text_bytes + scored.count(EOT_ID)  # <|endoftext|> counts as one byte
    assert result.bits_per_byte == pytest.approx(result.nll / (math.log(2) * result.bytes))


def failing_above_two_windows(monkeypatch, message: str) -> None:
    """_windows_nll raises RuntimeError(message) for more than two windows at once."""
    real = evaluation._windows_nll

    def small_memory(subject, chunk, rows, length):
        if rows > 2:
            raise RuntimeError(message)
        return real(subject, chunk, rows, length)

    monkeypatch.setattr(evaluation, "_windows_nll", small_memory)


@pytest.mark.parametrize("message", [
    "CUDA out of memory. Tried to allocate 3.00 GiB",
    "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried",  # the CPU's
])
def test_running_out_of_memory_halves_the_batch(model, tokens, monkeypatch, message):
    longer = np.tile(tokens, 3)  # 8 whole windows
    expected = stream_loss(CheckpointSubject(model), longer, batch_size=8, progress=False)
    failing_above_two_windows(monkeypatch, message)
    result = stream_loss(CheckpointSubject(model), longer, batch_size=8, progress=False)
    assert result.batch_size == 2
    assert result.nll == pytest.approx(expected.nll, rel=1e-9)


def test_other_errors_are_not_taken_for_running_out_of_memory(model, tokens, monkeypatch):
    failing_above_two_windows(monkeypatch, "mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        stream_loss(CheckpointSubject(model), np.tile(tokens, 3), batch_size=8, progress=False)


def test_token_ids_beyond_the_vocabulary_and_tiny_streams_are_user_errors(tokens):
    nano = Model(preset("nano", dropout=0.0))
    with pytest.raises(UserError, match="vocabulary"):
        stream_loss(CheckpointSubject(nano), tokens, batch_size=4, progress=False)
    with pytest.raises(UserError, match="fewer than 2"):
        stream_loss(CheckpointSubject(nano), np.array([1], dtype=np.uint16), batch_size=4, progress=False)


def test_stream_helpers(tokens):
    assert count_stories(tokens) == 4
    assert count_stories(tokens[:-1]) == 4  # an unterminated last story still counts
    two = first_stories(tokens, 2)
    assert count_stories(two) == 2 and two[-1] == EOT_ID
    assert len(first_stories(tokens, 10)) == len(tokens)
    assert story_texts(tokens, 3) == STORIES[:3]
    assert byte_count(tokens) == sum(len(story.encode()) for story in STORIES) + 4


def stories_by_hand(stream: list[int]) -> list[list[int]]:
    """The stream cut after each <|endoftext|>, an unterminated tail as a last story."""
    stories, story = [], []
    for token in stream:
        story.append(token)
        if token == EOT_ID:
            stories.append(story)
            story = []
    return stories + [story] if story else stories


@pytest.mark.parametrize("scan_chunk", [1, 5, 7, 1 << 22])
def test_stream_helpers_read_stories_across_scan_chunks(tokens, scan_chunk, monkeypatch):
    # Small chunks put story ends in different chunks, and exactly at chunk edges.
    monkeypatch.setattr(evaluation, "SCAN_CHUNK", scan_chunk)
    unterminated = np.concatenate([tokens, tokens[:5]])
    for stream in (tokens, unterminated):
        stories = stories_by_hand(stream.tolist())
        assert count_stories(stream) == len(stories)
        for count in range(1, len(stories) + 2):
            expected = [token for story in stories[:count] for token in story]
            if count <= 4:  # the count-th story is terminated: it ends the result, the tail is cut off
                assert np.asarray(first_stories(stream, count)).tolist() == expected
            else:
                assert np.asarray(first_stories(stream, count)).tolist() == stream.tolist()


def test_count_stories_of_empty_and_one_token_streams():
    assert count_stories(np.array([], dtype=np.uint16)) == 0
    assert count_stories(np.array([42], dtype=np.uint16)) == 1
    assert count_stories(np.array([EOT_ID], dtype=np.uint16)) == 1


def test_broken_weights_and_foreign_token_ids_are_named_in_the_error(model, tokens):
    broken = Model(preset("tiny", dropout=0.0, block_size=32))
    with torch.no_grad():
        broken.final_norm.weight.fill_(float("nan"))
    with pytest.raises(UserError, match=r"^the model produces non-finite values \(NaN or infinity\) on this data, "
                                        r"so its loss is nan; its weights are broken"):
        stream_loss(CheckpointSubject(broken), tokens, batch_size=4, progress=False)
    nano = Model(preset("nano", dropout=0.0))
    with pytest.raises(UserError, match="^the data "):
        stream_loss(CheckpointSubject(nano), tokens, batch_size=4, progress=False)


def test_concatenated_tokens_read_as_one_stream(tokens):
    a, b = tokens[:30], tokens[30:]
    joined = ConcatenatedTokens([a, b])
    assert len(joined) == len(tokens)
    for start, stop in [(0, 10), (25, 35), (30, 31), (0, len(tokens)), (40, 1000)]:
        assert np.array_equal(joined[start:stop], tokens[start:stop])
    assert np.array_equal(np.asarray(first_stories(joined, 3)), first_stories(tokens, 3))


def test_first_sentence():
    assert first_sentence(STORIES[0]) == "Once upon a time, there was a little cat named Tom."
    assert first_sentence(STORIES[1]) == "Lily had a red ball!"
    assert first_sentence('"Look!" said Ann. Then she ran.') == '"Look!"'
    assert first_sentence("  Mr. Bo went home") == "Mr."
    assert first_sentence("no ending here at all, just words that go on and on and on") == \
        "no ending here at all, just words that go on"


def test_words_are_lowercase_runs_of_letters_digits_and_apostrophes():
    assert words("Tom's dog, Max, ran 2 miles!") == ["tom's", "dog", "max", "ran", "2", "miles"]


def test_distinct_n_by_hand():
    texts = [words("the cat sat"), words("the cat ran")]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran of 6 words
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # "the cat" twice
    assert distinct_n(texts, 3) == pytest.approx(2 / 2)
    assert distinct_n([words("one two")], 3) == 0.0


def test_repetition_4_by_hand():
    # "a b c d" occurs twice among the 5 4-grams of the first text; the second has one 4-gram.
    assert repetition_n([words("a b c d a b c d")], 4) == pytest.approx(2 / 5)
    assert repetition_n([words("a b c d a b c d"), words("e f g h")], 4) == pytest.approx(2 / 6)
    # Repeats count within one completion only.
    assert repetition_n([words("a b c d"), words("a b c d")], 4) == 0.0
    assert repetition_n([words("a a a a a a")], 4) == 1.0


def test_generation_quality_by_hand():
    quality = generation_quality(["the cat sat", "the cat ran"], new_tokens=[4, 3], ended_with_eos=[True, False])
    assert quality["distinct_1"] == pytest.approx(4 / 6)
    assert quality["mean_new_tokens"] == pytest.approx((3 + 3) / 2)  # the final <|endoftext|> is not counted
    assert quality["eos_fraction"] == 0.5
    assert quality["repetition_4"] == 0.0


def test_generation_quality_uses_the_n_of_each_metric():
    # Words a b c d a b c d and a b c: the n-gram counts differ for every n, so a wrong n changes the result.
    quality = generation_quality(["A b, c d. A b c d!", "a b c"], new_tokens=[9, 4], ended_with_eos=[False, True])
    assert quality == pytest.approx({
        "distinct_1": 4 / 11,  # a, b, c, d of 11 words
        "distinct_2": 4 / 9,  # ab, bc, cd, da of 7 + 2 bigrams
        "distinct_3": 4 / 7,  # abc, bcd, cda, dab of 6 + 1 trigrams
        "repetition_4": 2 / 5,  # abcd twice among the first text's 5 4-grams; the second has none
        "mean_new_tokens": (9 + 3) / 2,
        "eos_fraction": 0.5,
    })
    with pytest.raises(ValueError, match="^no completions to measure$"):
        generation_quality([], new_tokens=[], ended_with_eos=[])
