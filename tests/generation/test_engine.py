"""tinystories.generation.engine: batched, continuously batched decoding gives every sequence exactly the tokens that
the engine gives it alone (greedy and seeded sampling), whatever joins, ends, slides or is cancelled
around it; stop strings, logprobs (against a hand-computed log-softmax), threads and the memory check."""
import threading
import time

import pytest
import torch

import tinystories.generation.sampling as sampling_module
from model.model import Model, preset
from tests.generation.reference import engine_decode
from tinystories.errors import UserError
from tinystories.generation.decoders import decoding_model
from tinystories.generation.engine import Engine, _held_back, check_cache_fits
from tinystories.generation.requests import GenerationRequest, sequence_seed
from tinystories.generation.sampling import SamplingConfig
from tinystories.memory import kv_cache_bytes
from tinystories.tokenizer import EOT_ID, get_tokenizer

GREEDY = SamplingConfig(temperature=0.0)
SAMPLED = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
FILTERED = SamplingConfig(temperature=0.9, top_k=40, top_p=0.9)


def sharpened_model(name: str, seed: int = 0) -> Model:
    """Random weights scaled up: peaked, varied next-token distributions (a fresh initialisation's are
    nearly flat, and its greedy continuations repeat one token)."""
    torch.manual_seed(seed)
    model = Model(preset(name, dropout=0.0))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(8.0)
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nano() -> Model:
    return decoding_model(sharpened_model("nano"))


@pytest.fixture(scope="module")
def tiny() -> Model:
    return decoding_model(sharpened_model("tiny"))


def prompts(model: Model, lengths: list[int], seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.vocab_size, (n,), generator=generator).tolist() for n in lengths]


def alone(model: Model, request: GenerationRequest) -> list[int]:
    """What generating the request by itself gives: the reference every batched sequence must equal (the engine
    alone is checked against the cache-free reference decoder in test_sampling.py)."""
    return engine_decode(model, request.prompt_ids, request.max_new_tokens, request.sampling, request.seed,
                         request.stop_at_eos)


def requests_for(model, lengths, new_tokens, sampling, stop_at_eos=False):
    return [GenerationRequest(prompt, max_new_tokens=count, sampling=sampling, seed=100 + i, stop_at_eos=stop_at_eos)
            for i, (prompt, count) in enumerate(zip(prompts(model, lengths), new_tokens))]


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED, FILTERED], ids=["greedy", "sampled", "top-k-top-p"])
def test_nano_batch_equals_each_sequence_alone(nano, sampling):
    # block_size 64: prompts of 3 to 70 tokens (70 is cut to its last 64), and 150 new tokens slide the
    # window several times while 7 new tokens do not; six sequences through four slots, so two join mid-run.
    requests = requests_for(nano, [3, 17, 40, 70, 5, 60], [20, 150, 7, 100, 64, 33], sampling)
    expected = [alone(nano, request) for request in requests]
    assert len(set(expected[1])) > 30 and len(set(expected[3])) > 30, "the reference should vary"
    engine = Engine(nano, max_batch=4)
    results = engine.generate(requests)
    assert [result.token_ids for result in results] == expected
    assert [result.finish_reason for result in results] == ["length"] * 6
    assert engine.max_active_seen == 4 and engine.active == engine.waiting == 0
    assert engine.steps == 150  # the longest sequence; the others decoded beside it


@pytest.mark.parametrize("sampling", [GREEDY, FILTERED], ids=["greedy", "top-k-top-p"])
def test_tiny_batch_with_end_of_text_equals_each_sequence_alone(sampling):
    model = sharpened_model("tiny")
    with torch.no_grad():  # make <|endoftext|> likely, so sequences end on it at different steps
        model.final_norm.bias.fill_(0.5)
        model.token_embedding.weight[EOT_ID] += 0.8
    decoder = decoding_model(model)
    requests = requests_for(decoder, [4, 30, 12, 100, 1], [40, 40, 40, 150, 40], sampling, stop_at_eos=True)
    expected = [alone(decoder, request) for request in requests]
    ended = [ids[-1] == EOT_ID for ids in expected]
    assert any(ended) and len({len(ids) for ids in expected}) >= 3
    assert len(set(token for ids in expected for token in ids)) > 40
    results = Engine(decoder, max_batch=3).generate(requests)
    assert [result.token_ids for result in results] == expected
    for result, ids, eos in zip(results, expected, ended):
        assert result.finish_reason == ("stop" if eos else "length")
        assert result.text == get_tokenizer().decode(ids[:-1] if eos else ids)


def test_sequences_joining_mid_run_and_one_crossing_the_window_alone(nano):
    # One sequence starts 60 tokens into its 64-token window and slides within a few steps; the others,
    # submitted while it runs, never reach the end of their windows.
    long, *short = requests_for(nano, [60, 5, 9, 2], [90, 30, 25, 40], GREEDY)
    expected = [alone(nano, request) for request in [long, *short]]
    engine = Engine(nano, max_batch=4)
    handles = [engine.submit(long)]
    for _ in range(10):
        engine.step()
    handles += [engine.submit(request) for request in short[:2]]
    engine.step()
    handles.append(engine.submit(short[2]))
    engine.run()
    assert [handle.result().token_ids for handle in handles] == expected
    assert engine.steps == 90


def test_tiny_sampling_many_sequences_through_few_slots(tiny):
    requests = requests_for(tiny, [1, 8, 30, 3, 50, 12, 7], [12, 30, 5, 25, 18, 9, 30], FILTERED)
    expected = [alone(tiny, request) for request in requests]
    assert len(set(token for ids in expected for token in ids)) > 60
    engine = Engine(tiny, max_batch=3)
    assert [result.token_ids for result in engine.generate(requests)] == expected
    assert engine.max_active_seen == 3


def test_cancelling_frees_the_slot_and_keeps_what_was_generated(nano):
    requests = requests_for(nano, [5, 8, 11], [40, 40, 40], GREEDY)
    expected = [alone(nano, request) for request in requests]
    engine = Engine(nano, max_batch=2)
    handles = [engine.submit(request) for request in requests]
    for _ in range(5):
        engine.step()
    assert engine.active == 2 and engine.waiting == 1
    handles[0].cancel()
    engine.step()  # the cancelled sequence leaves and the waiting one takes its slot in the same step
    assert handles[0].done and engine.active == 2 and engine.waiting == 0
    engine.run()
    cancelled = handles[0].result()
    assert cancelled.finish_reason == "cancelled" and cancelled.token_ids == expected[0][:5]
    assert [handle.result().token_ids for handle in handles[1:]] == expected[1:]
    waiting = engine.submit(requests[0])
    waiting.cancel()
    engine.run()
    assert waiting.result().finish_reason == "cancelled" and waiting.result().token_ids == []


def test_stop_strings_cut_the_text_and_are_never_streamed(tiny):
    [prompt] = prompts(tiny, [6], seed=3)
    reference = GenerationRequest(prompt, 40, GREEDY, stop_at_eos=False)
    ids = alone(tiny, reference)
    tokenizer = get_tokenizer()
    full = tokenizer.decode(ids)
    stop = tokenizer.decode(ids[20:22])  # text that first appears around the 21st token
    cut = full.find(stop)
    assert 0 < cut and stop.strip()
    pieces = []
    request = GenerationRequest(prompt, 40, GREEDY, stop_at_eos=False, stop=["never appears 123", stop])
    engine = Engine(tiny, max_batch=2)
    handle = engine.submit(request, on_event=lambda event: pieces.append(event.text))
    engine.submit(GenerationRequest(prompt[:2], 30, GREEDY, stop_at_eos=False))
    engine.run()
    result = handle.result()
    assert result.finish_reason == "stop" and result.text == full[:cut]
    assert "".join(pieces) == result.text and all(stop not in piece for piece in pieces)
    assert result.token_ids == ids[:len(result.token_ids)] and len(result.token_ids) < 40


def test_a_stop_string_at_the_very_start_leaves_no_text(tiny):
    [prompt] = prompts(tiny, [6], seed=3)
    full = get_tokenizer().decode(alone(tiny, GenerationRequest(prompt, 40, GREEDY, stop_at_eos=False)))
    started = time.perf_counter()
    result = Engine(tiny, max_batch=1).generate([GenerationRequest(prompt, 40, GREEDY, stop_at_eos=False,
                                                                   stop=[full[:3]])])[0]
    assert (result.text, result.finish_reason) == ("", "stop") and 0 < len(result.token_ids) <= 3
    assert 0 < result.seconds < time.perf_counter() - started


def test_held_back_is_the_longest_end_of_the_text_that_could_start_a_stop_string():
    assert _held_back("The cat", ["tiger"]) == 1
    assert _held_back("The cat", ["dog"]) == 0
    assert _held_back("Once upon", ["on a time", "pony"]) == 3  # "pon" of "pony"; "on" of "on a time" is shorter
    assert _held_back("Once upon", ["upon a time", "on a"]) == 4
    assert _held_back("xa", ["ab"]) == 1
    assert _held_back("xab", ["ab"]) == 0  # a whole stop string is cut, not held back


def test_logprobs_match_a_hand_computed_log_softmax():
    model = sharpened_model("nano", seed=4)
    [prompt] = prompts(model, [9], seed=4)
    engine = Engine(decoding_model(model), max_batch=3)
    with_top, chosen_only, without = [], [], []
    engine.submit(GenerationRequest(prompt, 12, SAMPLED, seed=5, stop_at_eos=False, top_logprobs=3),
                  on_event=with_top.append)
    engine.submit(GenerationRequest(prompt[:4], 12, GREEDY, stop_at_eos=False, logprobs=True),
                  on_event=chosen_only.append)
    engine.submit(GenerationRequest(prompt[:6], 12, SAMPLED, seed=6, stop_at_eos=False), on_event=without.append)
    engine.run()
    assert all(event.logprob is None and event.top_logprobs == [] for event in without) and len(without) == 12
    for events, context, top in ((with_top, list(prompt), 3), (chosen_only, prompt[:4], 0)):
        assert len(events) == 12
        for event in events:
            with torch.no_grad():
                logits = model(torch.tensor([context]))[0][0, -1].double()
            logprobs = logits - logits.exp().sum().log()  # log-softmax by hand, in float64
            assert abs(event.logprob - logprobs[event.token_id].item()) < 1e-4
            best = logprobs.argsort(descending=True)[:top].tolist()
            assert [token for token, _ in event.top_logprobs] == best
            for token, logprob in event.top_logprobs:
                assert abs(logprob - logprobs[token].item()) < 1e-4
            context = context + [event.token_id]


def test_background_thread_serves_submissions_from_other_threads(nano):
    requests = requests_for(nano, [3, 9, 20, 6, 11, 2], [30, 12, 25, 40, 8, 19], FILTERED)
    expected = [alone(nano, request) for request in requests]
    engine = Engine(nano, max_batch=4)
    engine.start()
    results = [None] * len(requests)

    def client(index: int) -> None:
        handle = engine.submit(requests[index])
        results[index] = [event.token_id for event in handle.events()]

    clients = [threading.Thread(target=client, args=(index,)) for index in range(len(requests))]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=60)
    assert results == expected
    endless = engine.submit(GenerationRequest([1, 2, 3], 10_000, GREEDY, stop_at_eos=False))
    engine.shutdown()
    assert endless.result(timeout=5).finish_reason == "cancelled"


def test_on_finish_comes_after_the_last_event_with_the_result_or_the_error(nano):
    requests = requests_for(nano, [5, 9], [7, 12], FILTERED)
    engine = Engine(nano, max_batch=2)
    seen = [[], []]
    handles = [engine.submit(request, on_event=seen[i].append, on_finish=seen[i].append)
               for i, request in enumerate(requests)]

    def broken(event):
        raise RuntimeError("the caller's callback failed")

    failing = engine.submit(requests[0], on_event=broken, on_finish=seen.append)
    engine.run()
    for items, handle, request in zip(seen, handles, requests):
        *events, final = items
        assert final is handle.result() and final.token_ids == alone(nano, request)
        assert [event.token_id for event in events] == final.token_ids
    assert isinstance(seen[2], RuntimeError) and str(seen[2]) == "the caller's callback failed"
    with pytest.raises(RuntimeError):
        failing.result()


def test_events_stream_while_the_sequence_runs(nano):
    engine = Engine(nano, max_batch=1)
    engine.start()
    try:
        handle = engine.submit(GenerationRequest([1, 2, 3], 100_000, GREEDY, stop_at_eos=False))
        events = handle.events()
        next(events)
        assert not handle.done  # the first token came out long before the last
        handle.cancel()
        assert handle.result(timeout=30).finish_reason == "cancelled"
    finally:
        engine.shutdown()


def test_cancelling_a_waiting_sequence_while_every_slot_is_busy_spares_the_others(nano):
    requests = requests_for(nano, [3, 5], [20, 20], GREEDY)
    engine = Engine(nano, max_batch=1)
    running, waiting = (engine.submit(request) for request in requests)
    engine.step()  # the first holds the one slot
    waiting.cancel()  # a client that left while queued
    engine.run()
    assert running.result().token_ids == alone(nano, requests[0])
    assert waiting.result().finish_reason == "cancelled" and waiting.result().token_ids == []


def test_waiting_for_a_result_times_out_when_nothing_steps(nano):
    handle = Engine(nano, max_batch=1).submit(GenerationRequest([1, 2], 3, GREEDY))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="^the sequence has not finished$"):
        handle.result(timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 5 and not handle.done and not handle.cancel_requested


def test_shutdown_stops_the_thread_and_cancels_running_and_waiting_sequences(nano):
    engine = Engine(nano, max_batch=1)
    engine.start()
    thread = engine._thread
    running = engine.submit(GenerationRequest([1, 2, 3], 100_000, GREEDY, stop_at_eos=False))
    waiting = engine.submit(GenerationRequest([4, 5], 100_000, GREEDY, stop_at_eos=False))
    next(running.events())  # it holds the one slot now
    engine.shutdown()
    assert not thread.is_alive()
    for handle in (running, waiting):
        assert handle.result(timeout=5).finish_reason == "cancelled"
    assert running.result().token_ids and waiting.result().token_ids == []


def test_a_failed_forward_ends_every_sequence_with_the_error_and_the_thread_goes_on(nano, monkeypatch):
    engine = Engine(nano, max_batch=2)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    with monkeypatch.context() as patch:
        patch.setattr(engine.model, "hidden_states", broken)
        handles = [engine.submit(request) for request in requests_for(nano, [3, 5, 7], [4, 4, 4], GREEDY)]
        engine.start()
        for handle in handles:
            with pytest.raises(RuntimeError, match="^generation failed: out of memory, say$"):
                handle.result(timeout=30)
    try:  # the same engine serves the next request
        request = requests_for(nano, [6], [5], GREEDY)[0]
        assert engine.submit(request).result(timeout=30).token_ids == alone(nano, request)
    finally:
        engine.shutdown()


def test_generate_while_the_thread_runs_and_zero_new_tokens(nano):
    requests = requests_for(nano, [4, 7], [10, 0], GREEDY)
    engine = Engine(nano, max_batch=2)
    engine.start()
    try:
        first, empty = engine.generate(requests)
    finally:
        engine.shutdown()
    assert first.token_ids == alone(nano, requests[0]) and first.prompt_tokens == 4
    assert empty.token_ids == [] and empty.finish_reason == "length"


def test_bad_requests_are_user_errors(nano):
    engine = Engine(nano, max_batch=1)
    for request, message in [(GenerationRequest([], 5, GREEDY), "empty"),
                             (GenerationRequest([512], 5, GREEDY), "vocabulary"),
                             (GenerationRequest([-1], 5, GREEDY), "vocabulary"),
                             (GenerationRequest([1], -1, GREEDY), "max_new_tokens"),
                             (GenerationRequest([1], 5, GREEDY, top_logprobs=6), "top_logprobs"),
                             (GenerationRequest([1], 5, GREEDY, stop=[""]), "stop")]:
        with pytest.raises(UserError, match=message):
            engine.submit(request)


def test_cache_size_is_computed_and_refused_when_it_cannot_fit(nano):
    config = nano.config
    per_slot = 2 * config.n_layer * config.block_size * config.n_embd * 4  # float32 keys and values
    assert kv_cache_bytes(config, 3 * config.block_size) == 3 * per_slot
    cache = Engine(nano, max_batch=3).cache
    assert cache.keys.nbytes + cache.values.nbytes == 3 * per_slot
    with pytest.raises(UserError, match="--batch_size"):
        check_cache_fits(nano, 2**40)


def test_sequence_seed_rule_gives_different_streams():
    assert sequence_seed(7, 0) == 7 and sequence_seed(7, 3) == (7 + 3 * 2654435769) % 2**32
    assert sequence_seed(-1, 0) == 2**32 - 1
    assert len({sequence_seed(seed, k) for seed in range(50) for k in range(50)}) == 2500
    draws = [torch.rand(4, generator=torch.Generator().manual_seed(sequence_seed(3, k))) for k in range(20)]
    assert len({tuple(draw.tolist()) for draw in draws}) == 20  # a generator reads only 32 bits of its seed


TINY_SETTINGS = [SamplingConfig(1e-40, 50, 1.0), SamplingConfig(1e-45, 0, 0.9), SamplingConfig(1e-46, 40, 0.95),
                 SamplingConfig(1.0, 50, 1e-46), SamplingConfig(0.7, 0, 1e-46)]


def test_tiny_temperatures_and_top_p_decode_greedily_beside_ordinary_sequences(tiny):
    """Used to raise in torch.multinomial, and end every sequence decoding in the same step with the error."""
    lengths = [4, 9, 15, 6, 11]
    tiny_requests = requests_for(tiny, lengths, [30] * 5, GREEDY)
    for request, sampling in zip(tiny_requests, TINY_SETTINGS):
        request.sampling = sampling
    greedy = [alone(tiny, request) for request in requests_for(tiny, lengths, [30] * 5, GREEDY)]
    ordinary = requests_for(tiny, [7, 20], [30, 30], FILTERED)
    ordinary[0].prompt_ids = ordinary[0].prompt_ids[::-1]  # prompts of their own
    expected = [alone(tiny, request) for request in ordinary]
    engine = Engine(tiny, max_batch=7)
    results = engine.generate(tiny_requests + ordinary)
    assert [result.token_ids for result in results] == greedy + expected
    assert engine.max_active_seen == 7 and len({tuple(ids) for ids in greedy}) == 5


@pytest.mark.parametrize("threaded", [False, True], ids=["caller-steps", "engine-thread"])
def test_a_sequence_whose_picking_fails_ends_alone_and_the_others_finish(nano, monkeypatch, threaded):
    """A failure of one sequence's picking used to end every sequence (through _fail_all, or out of step())."""
    broken = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)  # top_k 0: picked by pick_next_token, row alone
    requests = requests_for(nano, [3, 8, 5, 12], [25, 25, 25, 25], GREEDY)
    for request, sampling in zip(requests, [broken, GREEDY, FILTERED, SAMPLED]):
        request.sampling = sampling
    expected = [alone(nano, request) for request in requests[1:]]
    calls = []
    real = sampling_module.pick_next_token

    def failing_for_one_row(logits, sampling, generator):
        if sampling is broken:
            calls.append(1)
            if len(calls) == 4:
                raise RuntimeError("this sequence's picking failed")
        return real(logits, sampling, generator)

    monkeypatch.setattr(sampling_module, "pick_next_token", failing_for_one_row)
    engine = Engine(nano, max_batch=4)
    seen = []
    handles = [engine.submit(requests[0], on_event=seen.append)] + [engine.submit(r) for r in requests[1:]]
    if threaded:
        engine.start()
        try:
            results = [handle.result(timeout=60) for handle in handles[1:]]
        finally:
            engine.shutdown()
    else:
        engine.run()
        results = [handle.result() for handle in handles[1:]]
    assert [result.token_ids for result in results] == expected  # nobody else lost a token, or drew twice
    assert [result.finish_reason for result in results] == ["length"] * 3
    with pytest.raises(RuntimeError, match="^generation failed: this sequence's picking failed$"):
        handles[0].result()
    assert [event.token_id for event in seen] == alone(nano, requests[0])[:3]  # it decoded until its failure
    assert engine.active == engine.waiting == 0
