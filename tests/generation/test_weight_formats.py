"""tinystories.generation.weight_formats: float16 and int8 decoding compute what the rounded float32 model computes;
the float16
kernels (tinystories/generation/kernels/decoding.cpp) against torch's own float32 product."""
import copy

import pytest
import torch

from model.model import Model, preset
from tests.generation.reference import engine_decode
from tinystories.errors import UserError
from tinystories.generation import cpu_kernels
from tinystories.generation import weight_formats as precision
from tinystories.generation.cpu_kernels import kernels
from tinystories.generation.decoders import decoding_model
from tinystories.generation.engine import Engine
from tinystories.generation.requests import GenerationRequest
from tinystories.generation.sampling import SamplingConfig
from tinystories.generation.weight_formats import KERNEL_ROWS, int8_rows, rounded_copy

GREEDY = SamplingConfig(temperature=0.0)


@pytest.fixture(scope="module")
def model() -> Model:
    torch.manual_seed(0)
    model = Model(preset("tiny", dropout=0.0))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        model.final_norm.weight.mul_(20.0)  # clear greedy margins
    return model.eval()


def test_rows_round_to_the_nearest_of_255_levels():
    weight = torch.randn(16, 40) * torch.logspace(-3, 1, 16)[:, None]
    values, scales = int8_rows(weight)
    assert values.dtype == torch.int8 and values.abs().max() <= 127
    assert torch.equal(values.abs().amax(dim=1), torch.full((16,), 127, dtype=torch.int8))
    error = (values.float() * scales[:, None] - weight).abs()
    assert torch.all(error <= scales[:, None] / 2 + 1e-7)
    assert torch.allclose(scales, weight.abs().amax(dim=1) / 127)


def test_float16_rounding_is_to_the_nearest_float16():
    weight = torch.tensor([[1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 1e-3, -70000.0 / 2]])
    values = rounded_copy_of_one_linear(weight, "float16")
    assert values.tolist() == [[1.0, 1.0 + 2 ** -9, 0.0010004043579101562, -35008.0]]


def rounded_copy_of_one_linear(weight: torch.Tensor, precision: str) -> torch.Tensor:
    model = Model(preset("nano", n_embd=weight.shape[1], n_head=1))
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight[:1].copy_(weight)
    return rounded_copy(model, precision).blocks[0].mlp.fc.weight[:1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("rows, outputs, inputs, bias", [
    (1, 7, 3, True),  # shorter than one SIMD register: the scalar tail alone
    (3, 50, 37, False),  # whole registers and a tail
    (KERNEL_ROWS, 130, 384, True),
    (1, 5000, 64, True),  # enough output rows for both threads
])
def test_kernel_product_is_torchs_of_the_same_weights(rows, outputs, inputs, bias, dtype):
    generator = torch.Generator().manual_seed(rows * outputs)
    x = torch.randn(rows, inputs, generator=generator)
    weight = torch.randn(outputs, inputs, generator=generator).to(dtype)
    b = torch.randn(outputs, generator=generator) if bias else None
    expected = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    ours = kernels().linear(x, weight, b)
    assert ours.dtype == torch.float32 and ours.shape == (rows, outputs)
    assert torch.allclose(ours.double(), expected, rtol=0, atol=1e-5 * inputs ** 0.5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        # each output row is summed by one thread, in one order
        assert torch.equal(kernels().linear(x, weight, b), ours)
    finally:
        torch.set_num_threads(threads)


def test_kernel_product_refuses_what_it_cannot_multiply():
    weight = torch.zeros(4, 8, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="x has 6 columns but weight has 8"):
        kernels().linear(torch.zeros(1, 6), weight, None)
    with pytest.raises(RuntimeError, match="weight must be a contiguous float16 or float32"):
        kernels().linear(torch.zeros(1, 8), weight.double(), None)
    with pytest.raises(RuntimeError, match="bias must be a contiguous float32 tensor of 4 values"):
        kernels().linear(torch.zeros(1, 8), weight, torch.zeros(5))


@pytest.mark.parametrize("precision", ["float16", "int8"])
@pytest.mark.parametrize("length", [KERNEL_ROWS, 40])  # the kernel, and the float32 product of longer inputs
def test_decoder_computes_the_rounded_model(model, precision, length):
    idx = torch.randint(0, 50257, (1, length), generator=torch.Generator().manual_seed(length))
    rounded = rounded_copy(model, precision)
    with torch.no_grad():
        decoded = decoding_model(model, precision)(idx)[0]
        expected = rounded(idx)[0][:, -1:]
        exact = model(idx)[0][:, -1:]
    assert (decoded - expected).abs().max() <= 1e-4
    assert 0 < (expected - exact).abs().max() <= 0.05 * exact.abs().max()
    assert torch.equal(rounded.token_embedding.weight, model.token_embedding.weight)  # only matrices are rounded
    assert rounded.lm_head.weight is not rounded.token_embedding.weight
    assert rounded_copy(model, "float32") is model


class CountedKernels:
    """The real kernels, counting the calls of decode_step."""

    def __init__(self) -> None:
        self.steps = 0

    def __getattr__(self, name: str):
        return getattr(cpu_kernels.kernels(), name)

    def decode_step(self, *arguments):
        self.steps += 1
        return cpu_kernels.kernels().decode_step(*arguments)


@pytest.mark.parametrize("weights", ["float32", "float16"])
@pytest.mark.parametrize("activation, bias", [("gelu", True), ("gelu_new", False)])
def test_one_step_kernel_is_the_models_own_path(activation, bias, weights, monkeypatch):
    torch.manual_seed(1)
    model = Model(preset("tiny", dropout=0.0, activation=activation, bias=bias))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    decoder = decoding_model(model.eval(), weights)
    counted = CountedKernels()
    monkeypatch.setattr(precision, "kernels", lambda: counted)
    token = torch.tensor([[4321]])
    single = decoder.new_kv_cache(1)
    slots = decoder.new_slot_kv_cache(3)
    slots.plan([], [(2, 7), (0, 3)])  # two rows start: Model's path, then row 2 alone continues
    with torch.no_grad():
        decoder(torch.randint(0, 50257, (1, 9)), kv_cache=single)
        decoder.hidden_states(torch.randint(0, 50257, (1, 10)), slots)
        slots.plan([2], [])
        for cache in (single, slots):
            twin = copy.deepcopy(cache)
            steps = counted.steps
            fast = decoder.hidden_states(token, cache)
            assert counted.steps == steps + 1
            expected = Model.hidden_states(decoder, token, twin)
            assert fast.shape == expected.shape == (1, 1, model.config.n_embd)
            assert torch.allclose(fast, expected, rtol=0, atol=1e-5)
            assert torch.allclose(cache.keys, twin.keys, rtol=0, atol=1e-6)  # the new position, and nothing else
            assert torch.allclose(cache.values, twin.values, rtol=0, atol=1e-6)
    assert (single.length, slots.lengths) == (10, [3, 0, 8])


@pytest.mark.parametrize("precision", ["float16", "int8"])
def test_greedy_decoding_through_the_cache_matches_full_forwards(model, precision):
    prompt = [464, 1310, 3290]
    ours = engine_decode(decoding_model(model, precision), prompt, 24)
    rounded, ids = rounded_copy(model, precision), list(prompt)
    with torch.no_grad():
        for _ in range(24):
            ids.append(int(rounded(torch.tensor([ids]))[0][0, -1].argmax()))
    assert ours == ids[len(prompt):]


def test_unknown_precision_is_a_user_error(model):
    with pytest.raises(UserError, match="--precision must be one of float32, float16, int8"):
        decoding_model(model, "bfloat16")


def test_a_weight_beyond_float16s_range_is_refused(model):
    huge = Model(preset("nano"))
    with torch.no_grad():
        huge.blocks[0].mlp.fc.weight[0, 0] = 70000.0
    with pytest.raises(UserError, match=r"a weight exceeds float16's range \(largest 65504\); use --precision float32"):
        decoding_model(huge, "float16")


@pytest.mark.parametrize("sequences", [3, KERNEL_ROWS + 4])  # decoding rows by the kernel, and by F.linear
def test_float16_engine_decodes_each_sequence_as_alone(model, sequences):
    decoder = decoding_model(model, "float16")
    prompts = [[464 + 7 * i, 1310, 3290 + i][:1 + i % 3] for i in range(sequences)]
    lengths = [12 + i % 5 for i in range(sequences)]  # sequences end at different steps
    requests = [GenerationRequest(prompt, length, GREEDY, stop_at_eos=False)
                for prompt, length in zip(prompts, lengths)]
    batched = Engine(decoder, max_batch=sequences).generate(requests)
    for prompt, length, result in zip(prompts, lengths, batched):
        assert result.token_ids == engine_decode(decoder, prompt, length)


@pytest.mark.parametrize("mode", ["float16", "int8"])
def test_the_reduced_precisions_refuse_a_model_not_in_float32(model, mode):
    with pytest.raises(UserError, match=f"--precision {mode} needs a float32 model, not bfloat16"):
        decoding_model(copy.deepcopy(model).to(torch.bfloat16), mode)


def test_float32_without_the_kernels_decodes_by_onednn_after_one_note(model, monkeypatch, capsys):
    def cannot_build():
        raise UserError("could not build this project's CPU kernel (no compiler here)")
    monkeypatch.setattr(precision, "kernels", cannot_build)
    precision._note_once.cache_clear()
    try:
        decoders = [decoding_model(model), decoding_model(model)]
        assert capsys.readouterr().err == ("note: decoding without this project's CPU kernel, more slowly: could not "
                                           "build this project's CPU kernel (no compiler here)\n")  # once
    finally:
        precision._note_once.cache_clear()
    idx = torch.randint(0, 50257, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(idx)[0][:, -1:]
        for decoder in decoders:
            assert not isinstance(decoder, precision.StepDecoder)
            cache = decoder.new_kv_cache(1)
            decoder(idx[:, :11], kv_cache=cache)
            assert (decoder(idx[:, 11:], kv_cache=cache)[0] - expected).abs().max() <= 1e-4


def test_a_converted_decoder_steps_with_its_new_tensors(model):
    decoder = decoding_model(model, "float16")
    token = torch.tensor([[4321]])
    with torch.no_grad():
        cache = decoder.new_kv_cache(1)
        decoder(torch.tensor([[464, 1310]]), kv_cache=cache)
        decoder.hidden_states(token, copy.deepcopy(cache))  # the step's tensors are gathered
        decoder.float()  # the float16 matrices become new float32 tensors
        decoder.blocks[0].mlp.fc.weight.mul_(3.0)
        expected = Model.hidden_states(decoder, token, copy.deepcopy(cache))
        assert (decoder.hidden_states(token, cache) - expected).abs().max() <= 1e-4
