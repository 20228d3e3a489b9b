"""tinystories.generation: filtering on hand-made distributions (sampling), seeded sampling, the KV-cache loop and
its sliding window checked against the cache-free reference decoder (engine, window), beam search, streaming UTF-8,
and token-for-token agreement with Hugging Face's greedy and beam search."""
import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from model.model import Model, preset
from tests.generation.reference import GREEDY, engine_decode, reference_decode
from tests.scripts import run_script
from tinystories.checkpoint import model_checkpoint, save_checkpoint
from tinystories.errors import UserError
from tinystories.generation.beams import beam_complete, beam_search
from tinystories.generation.decoders import decoding_model
from tinystories.generation.engine import Engine
from tinystories.generation.requests import GenerationRequest
from tinystories.generation.sampling import SamplingConfig, next_token_distribution, pick_next_token, pick_next_tokens
from tinystories.generation.text_stream import Utf8Stream
from tinystories.interop.hf import to_hf
from tinystories.tokenizer import EOT_ID, get_tokenizer

PROMPT = [7454, 2402, 257, 640]  # "Once upon a time"


def random_model(name: str = "tiny", noise: float = 0.05, **overrides) -> Model:
    """Perturbed weights: sharper, more varied distributions than a fresh initialisation."""
    model = Model(preset(name, dropout=0.0, **overrides))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * noise)
    return model.eval()


def varied_nano(seed: int) -> Model:
    """A nano model (block_size 64) whose greedy and beam continuations keep changing token: with the
    default noise they repeat one or two tokens, so a wrong context or hypothesis order would go unseen."""
    torch.manual_seed(seed)
    return random_model("nano", noise=0.2)


@pytest.fixture(scope="module")
def model() -> Model:
    torch.manual_seed(0)
    return random_model()


def kept(logits, **settings) -> dict[int, float]:
    ids, probabilities = next_token_distribution(torch.tensor(logits).log(), SamplingConfig(**settings))
    assert math.isclose(probabilities.sum().item(), 1.0, rel_tol=1e-6)
    return {int(i): round(float(p), 6) for i, p in zip(ids, probabilities)}


# Token 1 is the most likely, then 3, then 0; tokens 2 and 4 are tied last.
PROBABILITIES = [0.125, 0.5, 0.0625, 0.25, 0.0625]
ALL = {1: 0.5, 3: 0.25, 0: 0.125, 2: 0.0625, 4: 0.0625}
TOP_THREE = {1: 0.571429, 3: 0.285714, 0: 0.142857}  # 4/7, 2/7, 1/7


def test_temperature_one_and_no_filters_keep_the_distribution():
    assert kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=1.0) == ALL


def test_temperature_divides_the_logits():
    # p ** (1 / T) renormalised: T = 0.5 squares the probabilities.
    squares = [p * p for p in PROBABILITIES]
    expected = {i: round(s / sum(squares), 6) for i, s in enumerate(squares)}
    assert kept(PROBABILITIES, temperature=0.5, top_k=0, top_p=1.0) == expected


def test_top_k_keeps_the_k_most_likely_and_ties_with_the_kth():
    assert kept(PROBABILITIES, temperature=1.0, top_k=1, top_p=1.0) == {1: 1.0}
    assert kept(PROBABILITIES, temperature=1.0, top_k=2, top_p=1.0) == {1: 0.666667, 3: 0.333333}
    assert kept(PROBABILITIES, temperature=1.0, top_k=3, top_p=1.0) == TOP_THREE
    assert kept(PROBABILITIES, temperature=1.0, top_k=4, top_p=1.0) == ALL  # token 4 ties with token 2


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=0.3) == {1: 1.0}
    assert kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=0.74) == {1: 0.666667, 3: 0.333333}
    assert kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=0.76) == TOP_THREE


def test_top_p_exactly_at_a_boundary_stops_at_the_token_that_reaches_it():
    # These probabilities are exact in float32, so the cumulative mass hits 0.5, 0.75 and 0.875 exactly:
    # the tokens "until their probability reaches top_p" are those before the boundary, and no more.
    assert kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=0.5) == {1: 1.0}
    assert kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=0.75) == {1: 0.666667, 3: 0.333333}
    assert kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=0.875) == TOP_THREE
    from transformers.generation.logits_process import TopPLogitsWarper
    for top_p in (0.5, 0.75, 0.875):
        theirs = TopPLogitsWarper(top_p)(None, torch.tensor([PROBABILITIES]).log())[0]
        ours = kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=top_p)
        assert set(ours) == set(torch.nonzero(theirs > -math.inf).squeeze(1).tolist())


def test_top_k_comes_before_top_p():
    # top-p measures mass within the top k: token 1 holds 0.5 / 0.75 of it, enough for p = 0.6 alone,
    # where on the whole distribution (0.5 of the mass) it needs token 3 too.
    assert kept(PROBABILITIES, temperature=1.0, top_k=2, top_p=0.6) == {1: 1.0}
    assert kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=0.6) == {1: 0.666667, 3: 0.333333}


def test_temperature_comes_before_top_p():
    # After T = 0.5 token 1 holds 0.25 / 0.336 = 0.74 of the mass, so top_p = 0.7 keeps it alone, where
    # top-p before the temperature would have kept tokens 1 and 3.
    assert kept(PROBABILITIES, temperature=0.5, top_k=0, top_p=0.7) == {1: 1.0}
    assert kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=0.7) == {1: 0.666667, 3: 0.333333}


def test_filters_match_hugging_face_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
    generator = torch.Generator().manual_seed(1)
    for temperature, top_k, top_p in [(0.8, 50, 0.95), (1.3, 0, 0.5), (0.5, 10, 1.0), (1.0, 200, 0.9)]:
        logits = torch.randn(1, 1000, generator=generator) * 3
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        theirs = torch.softmax(scores[0], dim=0)
        ids, probabilities = next_token_distribution(logits[0], SamplingConfig(temperature, top_k, top_p))
        assert set(ids.tolist()) == set(torch.nonzero(theirs).squeeze(1).tolist())
        assert torch.allclose(probabilities, theirs[ids], atol=1e-6)


@pytest.mark.parametrize("settings, flag", [(dict(temperature=-0.1), "--temperature"),
                                            (dict(temperature=2.5), "--temperature"), (dict(top_k=-1), "--top_k"),
                                            (dict(top_p=0.0), "--top_p"), (dict(top_p=1.5), "--top_p")])
def test_out_of_range_settings_are_user_errors_naming_the_flag(settings, flag):
    with pytest.raises(UserError, match=flag):
        SamplingConfig(**settings)


def test_the_ranges_include_their_closed_ends():
    for settings in (dict(temperature=0.0), dict(temperature=2.0), dict(top_k=0), dict(top_p=1.0)):
        SamplingConfig(**settings)


def test_top_p_one_keeps_even_tokens_whose_mass_rounds_away():
    # In float32 the first token's probability is 1.0, so the mass before the second one is already 1.0:
    # top_p = 1 must disable the filter, not compare against it.
    ids, probabilities = next_token_distribution(torch.tensor([0.0, -30.0, -31.0]),
                                                 SamplingConfig(temperature=1.0, top_k=0, top_p=1.0))
    assert sorted(ids.tolist()) == [0, 1, 2] and probabilities[0] == 1.0


def test_draws_follow_the_filtered_distribution():
    logits = torch.tensor(PROBABILITIES).log()
    generator = torch.Generator().manual_seed(0)
    sampling = SamplingConfig(temperature=1.0, top_k=0, top_p=0.76)  # {1: 4/7, 3: 2/7, 0: 1/7}
    draws = [pick_next_token(logits, sampling, generator) for _ in range(4000)]
    assert 2 not in draws and 4 not in draws
    for token, probability in {1: 4 / 7, 3: 2 / 7, 0: 1 / 7}.items():
        assert abs(draws.count(token) / len(draws) - probability) < 0.03
    assert pick_next_token(logits, GREEDY, None) == 1


def test_picking_for_many_rows_at_once_equals_row_by_row():
    logits = torch.randn(40, 1000, generator=torch.Generator().manual_seed(2)) * 3
    logits[5, :10] = logits[5].max() + 1  # ten tokens tied first
    for row in (8, 13):  # top_k 10 rows: tokens tied across the 10th place, all of which must stay candidates
        logits[row, 100:108] = logits[row].max() + 1
        logits[row, 200:206] = logits[row].max() + 2  # 6 best, then 8 tied for places 7 to 14
    settings = [SamplingConfig(), GREEDY, SamplingConfig(1.3, 0, 0.5), SamplingConfig(0.7, 10, 1.0),
                SamplingConfig(temperature=1.0, top_k=1000)]
    samplings = [settings[row % len(settings)] for row in range(40)]
    for seed in range(5):
        together = pick_next_tokens(logits, samplings, [torch.Generator().manual_seed(seed + r) for r in range(40)])
        alone = [pick_next_token(logits[row], samplings[row], torch.Generator().manual_seed(seed + row))
                 for row in range(40)]
        assert together == alone
    assert len(set(together)) > 20


def test_same_seed_gives_the_same_tokens(model):
    def draw(seed):
        return engine_decode(model, PROMPT, 30, SamplingConfig(temperature=1.0), seed)
    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_decoding_model_gives_the_models_last_logits(model):
    decoder = decoding_model(model)
    idx = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        expected = model(idx)[0][:, -1:]
        logits = decoder(idx)[0]
    assert logits.shape == (2, 1, 50257)
    assert torch.allclose(logits, expected, atol=1e-4)
    assert decoder.lm_head is not model.lm_head and model(idx)[0].shape == (2, 9, 50257)


@pytest.mark.parametrize("prompt_length, steps", [(5, 40), (10, 150), (100, 30)])
def test_cached_decoding_and_its_sliding_window_match_recomputation(prompt_length, steps):
    nano = varied_nano(1)  # block_size 64: 150 new tokens slide the window several times
    prompt = torch.randint(0, 512, (prompt_length,)).tolist()
    expected = reference_decode(nano, prompt, steps)
    assert len(set(expected)) >= steps // 5, "the reference must vary for the comparison to mean anything"
    assert engine_decode(nano, prompt, steps) == expected
    assert engine_decode(decoding_model(nano), prompt, steps) == expected


def test_sampled_decoding_past_the_window_matches_recomputation():
    nano = varied_nano(3)
    sampling = SamplingConfig(temperature=1.0, top_k=20, top_p=0.9)
    prompt = [5, 6, 7]
    expected = reference_decode(nano, prompt, 150, sampling, torch.Generator().manual_seed(5))
    assert len(set(expected)) >= 30
    assert engine_decode(decoding_model(nano), prompt, 150, sampling, seed=5) == expected


def reference_beam_search(model: Model, prompt: list[int], steps: int, num_beams: int) -> list[list[int]]:
    """Beam search with <|endoftext|> ignored and no cache: every hypothesis's window (the same sliding rule
    as greedy decoding) is encoded again at each step. Returns the best hypothesis after each step."""
    block_size = model.config.block_size
    keep = block_size - block_size // 4
    beams: list[tuple[float, list[int]]] = [(0.0, [])]
    start = max(0, len(prompt) - block_size)
    best = []
    for _ in range(steps):
        if len(prompt) + len(beams[0][1]) - start > block_size:
            start = len(prompt) + len(beams[0][1]) - keep
        candidates = []
        for score, new in beams:
            with torch.no_grad():
                logits = model(torch.tensor([(prompt + new)[start:]]))[0][0, -1]
            log_probabilities = torch.log_softmax(logits.double(), dim=0)
            top = torch.topk(log_probabilities, num_beams)
            candidates += [(score + float(p), new + [int(t)]) for p, t in zip(top.values, top.indices)]
        beams = sorted(candidates, key=lambda candidate: candidate[0], reverse=True)[:num_beams]
        best.append(beams[0][1])
    return best


def test_beam_search_slides_its_window_too():
    nano = varied_nano(4)
    prompt = [1, 2, 3]
    best = reference_beam_search(nano, prompt, 130, num_beams=3)
    assert len(set(best[-1])) >= 15, "the reference must vary for the comparison to mean anything"
    decoder = decoding_model(nano)
    for steps in (30, 61, 62, 80, 100, 130):  # the window (64 tokens) first slides at the 62nd new token
        assert beam_search(decoder, prompt, steps, num_beams=3, stop_at_eos=False) == best[steps - 1], steps
    # One beam is greedy decoding.
    assert beam_search(nano, prompt, 100, num_beams=1, stop_at_eos=False) == reference_decode(nano, prompt, 100)


def hf_new_tokens(hf_model, prompt: list[int], **settings) -> list[int]:
    output = hf_model.generate(torch.tensor([prompt]), max_new_tokens=settings.pop("max_new_tokens"),
                               do_sample=False, pad_token_id=EOT_ID, **settings)
    tokens = output[0, len(prompt):].tolist()
    return tokens[:tokens.index(EOT_ID) + 1] if EOT_ID in tokens else tokens


def test_greedy_equals_hugging_face_generate(model):
    hf_model = to_hf(model)
    ours = engine_decode(decoding_model(model), PROMPT, 64, stop_at_eos=True)
    assert len(ours) == 64
    assert ours == hf_new_tokens(hf_model, PROMPT, max_new_tokens=64)


def test_beam_search_equals_hugging_face_with_eos_ignored(model):
    hf_model = to_hf(model)
    hf_model.generation_config.eos_token_id = None
    decoder = decoding_model(model)
    for prompt in (PROMPT, [40, 588, 11, 257]):
        ours = beam_search(decoder, prompt, 48, num_beams=4, stop_at_eos=False)
        assert ours == hf_new_tokens(hf_model, prompt, max_new_tokens=48, num_beams=4)


def test_beam_search_equals_hugging_face_when_hypotheses_end(model):
    # Move <|endoftext|>'s embedding (which is also its output row) towards the final norm's scale, so
    # hypotheses end after a few tokens and the finished-hypothesis bookkeeping is exercised.
    eager = copy.deepcopy(model)
    with torch.no_grad():
        eager.token_embedding.weight[EOT_ID] += 2.0 * eager.final_norm.weight
    hf_model = to_hf(eager)
    decoder = decoding_model(eager)
    lengths = set()
    for prompt in (PROMPT, [40, 588, 11]):
        for num_beams in (3, 4):
            ours = beam_search(decoder, prompt, 30, num_beams=num_beams)
            assert ours == hf_new_tokens(hf_model, prompt, max_new_tokens=30, num_beams=num_beams)
            lengths.add(len(ours))
            assert ours[-1] == EOT_ID
    assert any(length > 1 for length in lengths)


def test_utf8_stream_never_splits_a_character():
    text = "Tom said: \"café, 🐈 and 日本語!\""
    tokenizer = get_tokenizer()
    ids = tokenizer.encode(text)
    partial = [i for i in ids if not _is_utf8(tokenizer.decode_single_token_bytes(i))]
    assert partial, "the text should have tokens holding part of a character"
    stream = Utf8Stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert "" in pieces and all("\ufffd" not in piece for piece in pieces)


def test_utf8_stream_flushes_an_unfinished_character_as_a_replacement():
    ids = get_tokenizer().encode("🐈")
    assert len(ids) > 1  # the cat's four bytes span several tokens
    stream = Utf8Stream()
    assert stream.push(ids[0]) == "" and stream.flush() == "\ufffd"


def test_beam_complete_gives_beam_searchs_tokens_and_their_text(model):
    assert get_tokenizer().encode_ordinary("Once upon a time") == PROMPT
    beams = beam_complete(model, "Once upon a time", 12, num_beams=3, stop_at_eos=False)
    assert beams.token_ids == beam_search(model, PROMPT, 12, num_beams=3, stop_at_eos=False)
    assert beams.text == get_tokenizer().decode(beams.token_ids) and beams.prompt == "Once upon a time"
    assert beams.finish_reason == "length" and beams.prompt_tokens == len(PROMPT)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_streamed_text_stops_at_end_of_text(model):
    eager = copy.deepcopy(model)
    with torch.no_grad():
        eager.token_embedding.weight[EOT_ID] += 3.0 * eager.final_norm.weight
    engine = Engine(eager, max_batch=2)
    stopping = engine.submit(GenerationRequest(PROMPT, 40, GREEDY))
    ignoring = engine.submit(GenerationRequest(PROMPT, 40, GREEDY, stop_at_eos=False))
    engine.run()
    completion = stopping.result()
    assert completion.ended_with_eos and completion.token_ids[-1] == EOT_ID
    assert "".join(event.text for event in stopping.events()) == completion.text
    assert "<|endoftext|>" not in completion.text
    assert completion.text == get_tokenizer().decode(completion.token_ids[:-1])
    kept_going = ignoring.result()
    assert len(kept_going.token_ids) == 40 and not kept_going.ended_with_eos
    assert kept_going.token_ids[:len(completion.token_ids)] == completion.token_ids
    beams = beam_complete(eager, "Once upon a time", 40, num_beams=2)
    assert beams.ended_with_eos and "<|endoftext|>" not in beams.text


def test_empty_prompt_and_ids_beyond_the_vocabulary_are_user_errors(model):
    with pytest.raises(UserError, match="empty"):
        beam_complete(model, "", 5, num_beams=2)
    with pytest.raises(UserError, match="vocabulary"):
        beam_complete(random_model("nano"), "Once upon a time", 5, num_beams=2)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_are_a_user_error(temperature, bad):
    """Every decoder (the engine, beam_search) picks tokens through pick_next_token or checks its logits."""
    logits = torch.zeros(10)
    logits[3] = bad
    with pytest.raises(UserError, match="the model produces non-finite values"):
        pick_next_token(logits, SamplingConfig(temperature=temperature), None)


# ---- settings at the very ends of their ranges (issue 25) ---------------------------------------------------------

TINY_TEMPERATURES = [1e-38, 1e-40, 1e-45, 1e-46, 5e-324]  # the division overflows float32, or rounds to 0


@pytest.mark.parametrize("temperature", TINY_TEMPERATURES)
def test_a_tiny_temperature_is_greedy_among_the_tied_best(temperature):
    """Used to divide the best logits to infinity, and softmax to NaN: torch.multinomial raised."""
    logits = torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0, 2.9999])
    third = round(1 / 3, 6)
    for top_k in (0, 2, 4):  # no filter, a top k that the ties cross, one that holds them all
        for sign in (1.0, -1.0):  # best logits far above 0, and all logits below 0 (the best is -0.0 after the max)
            ids, probabilities = next_token_distribution(sign * logits + (0 if sign > 0 else 10.0),
                                                         SamplingConfig(temperature, top_k, 1.0))
            best = {1: third, 2: third, 4: third} if sign > 0 else {3: 1.0}
            shown = {int(i): round(float(p), 6) for i, p in zip(ids, probabilities) if p > 0}
            assert shown == best, (top_k, sign)
    generator = torch.Generator().manual_seed(0)
    draws = {pick_next_token(logits, SamplingConfig(temperature, 0, 1.0), generator) for _ in range(60)}
    assert draws == {1, 2, 4}  # every tied best is drawn, and nothing else
    random_logits = torch.randn(50257, generator=torch.Generator().manual_seed(1)) * 4
    assert pick_next_token(random_logits, SamplingConfig(temperature, 50, 0.9), None) == int(random_logits.argmax())


@pytest.mark.parametrize("top_p", [1e-46, 1e-300, 1e-40])  # 1e-46 and 1e-300 round to 0 in float32
def test_a_tiny_top_p_keeps_only_the_most_likely_token(top_p):
    assert kept(PROBABILITIES, temperature=1.0, top_k=0, top_p=top_p) == {1: 1.0}
    assert kept(PROBABILITIES, temperature=0.5, top_k=3, top_p=top_p) == {1: 1.0}
    random_logits = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    assert pick_next_token(random_logits, SamplingConfig(1.0, 0, top_p), None) == int(random_logits.argmax())


def test_ordinary_temperatures_divide_exactly_as_before():
    """The guard for tiny temperatures must not move a single bit of an ordinary one's distribution (the same
    seed gives the same tokens as it always has): the probabilities are softmax(logits / T), computed as before."""
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(3)) * 5
    for temperature in (2.0, 1.3, 1.0, 0.8, 0.1, 1e-3, 1e-10, 1e-30):
        ids, probabilities = next_token_distribution(logits, SamplingConfig(temperature, 0, 1.0))
        scores, order = (logits / temperature).sort(descending=True)
        assert torch.equal(ids, order) and torch.equal(probabilities, torch.softmax(scores, dim=0)), temperature


def test_picking_many_rows_with_tiny_settings_equals_row_by_row_and_is_greedy():
    logits = torch.randn(12, 1000, generator=torch.Generator().manual_seed(4)) * 3
    samplings = [SamplingConfig(1e-40, 50, 1.0), SamplingConfig(0.8, 50, 0.95), SamplingConfig(1e-46, 0, 1.0),
                 SamplingConfig(1.0, 50, 1e-46), SamplingConfig(1.0, 0, 1e-46), GREEDY] * 2

    def generators():
        return [torch.Generator().manual_seed(10 + row) for row in range(12)]

    together = pick_next_tokens(logits, samplings, generators())
    alone = [pick_next_token(logits[row], samplings[row], generator) for row, generator in enumerate(generators())]
    assert together == alone
    greedy = logits.argmax(dim=1).tolist()
    assert [token for row, token in enumerate(together) if row % 6 != 1] == [
        token for row, token in enumerate(greedy) if row % 6 != 1]


def test_one_rows_failure_gives_that_row_the_error_and_the_others_their_tokens(monkeypatch):
    """A row with non-finite logits, or whose own draw raises, used to raise for the whole batch."""
    logits = torch.randn(6, 1000, generator=torch.Generator().manual_seed(5)) * 3
    samplings = [SamplingConfig(0.8, 50, 0.95), GREEDY, SamplingConfig(1.0, 0, 1.0)] * 2

    def generators():
        return [torch.Generator().manual_seed(20 + row) for row in range(6)]

    alone = [pick_next_token(logits[row], samplings[row], generator) for row, generator in enumerate(generators())]
    for broken in (0, 1, 2):  # a batched top-k row, a greedy row and a single-row-path row
        bad = logits.clone()
        bad[broken + 3, 7] = float("nan")
        picked = pick_next_tokens(bad, samplings, generators())
        assert isinstance(picked[broken + 3], UserError) and "non-finite" in str(picked[broken + 3])
        others = [row for row in range(6) if row != broken + 3]
        assert [picked[row] for row in others] == [alone[row] for row in others]
    drawing = generators()
    real_multinomial = torch.multinomial

    def multinomial(probabilities, count, generator=None):
        if generator is drawing[3]:
            raise RuntimeError("this row's draw failed")
        return real_multinomial(probabilities, count, generator=generator)

    monkeypatch.setattr(torch, "multinomial", multinomial)
    picked = pick_next_tokens(logits, samplings, drawing)
    assert isinstance(picked[3], RuntimeError) and str(picked[3]) == "this row's draw failed"
    assert picked[:3] + picked[4:] == alone[:3] + alone[4:]  # nobody drew twice, or lost a token


def generate_script():
    """generate.py, loaded by path under a name of its own (test_generate_script.py loads it as well)."""
    name = "generate_script_for_sampling"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "generate.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sampling") / "model.pth"
    save_checkpoint(path, model_checkpoint(model, step=0))
    return path


@pytest.mark.parametrize("settings", [["--temperature", "1e-45"], ["--temperature", "1e-40", "--top_k", "0"],
                                      ["--temperature", "1e-46", "--num_samples", "3", "--top_k", "7"],
                                      ["--top_p", "1e-46", "--num_samples", "2"]])
def test_generate_py_decodes_tiny_settings_greedily(checkpoint, monkeypatch, capsys, settings):
    """generate.py used to end with a traceback ("generation failed: ...", from inside torch.multinomial)."""
    def token_ids(*args: str) -> list[list[int]]:
        status, out, err = run_script(monkeypatch, capsys, generate_script(), "--model", str(checkpoint),
                                      "--max_tokens", "15", "--ignore_eos", "true", "--json", "true", "--seed", "4",
                                      *args)
        assert status == 0 and "Traceback" not in err, err
        return [sample["token_ids"] for sample in json.loads(out)["samples"]]

    samples = token_ids(*settings)
    [greedy] = token_ids("--temperature", "0")
    assert len(samples) >= 1 and all(ids == greedy for ids in samples) and len(set(greedy)) > 3
