"""tinystories.precision: int8 weight-only decoding computes what the rounded float32 model computes."""
import pytest
import torch

from model.model import Model, preset
from tinystories.errors import UserError
from tinystories.precision import int8_rows, rounded_copy
from tinystories.sampling import SamplingConfig, decoding_model, sample_tokens

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


def test_int8_decoder_computes_the_rounded_model(model):
    idx = torch.randint(0, 50257, (2, 40))
    rounded = rounded_copy(model, "int8")
    with torch.no_grad():
        int8 = decoding_model(model, "int8")(idx)[0]
        expected = rounded(idx)[0][:, -1:]
        exact = model(idx)[0][:, -1:]
    assert (int8 - expected).abs().max() <= 1e-4
    assert 0 < (expected - exact).abs().max() <= 0.05 * exact.abs().max()
    assert torch.equal(rounded.token_embedding.weight, model.token_embedding.weight)  # only matrices are rounded
    assert rounded.lm_head.weight is not rounded.token_embedding.weight
    assert rounded_copy(model, "float32") is model


def test_int8_greedy_decoding_through_the_cache_matches_full_forwards(model):
    prompt = [464, 1310, 3290]
    ours = list(sample_tokens(decoding_model(model, "int8"), prompt, 24, GREEDY, stop_at_eos=False))
    rounded, ids = rounded_copy(model, "int8"), list(prompt)
    with torch.no_grad():
        for _ in range(24):
            ids.append(int(rounded(torch.tensor([ids]))[0][0, -1].argmax()))
    assert ours == ids[len(prompt):]


def test_unknown_precision_is_a_user_error(model):
    with pytest.raises(UserError, match="--precision must be one of float32, int8"):
        decoding_model(model, "bfloat16")
