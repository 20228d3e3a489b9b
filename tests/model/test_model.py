"""The network: configuration defaults, parameter count, tying, initialisation, loss and the KV cache."""
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from model.model import PRESETS, Config, Model, preset


def test_config_defaults_are_the_seed_architecture():
    config = Config()
    assert asdict(config) == asdict(PRESETS["33M"])
    shape = (config.vocab_size, config.block_size, config.n_layer, config.n_head, config.n_embd)
    assert shape == (50257, 512, 6, 6, 384)
    assert config.dropout == 0.1 and config.ffn_size == 1536 and config.activation == "gelu"


def test_seed_model_has_the_readmes_parameter_counts_with_tied_output():
    model = Model(Config())
    assert model.lm_head.weight is model.token_embedding.weight
    assert model.num_parameters() == 30_142_848  # README: What this is
    assert model.num_parameters(include_embeddings=False) == 10_647_552
    assert model.num_parameters() == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("name", ["33M", "small", "tiny", "nano"])
def test_presets_parameter_counts_follow_the_gpt2_formula(name):
    config = PRESETS[name]
    c = config.n_embd
    # Per block: two LayerNorms (weight and bias), qkv (3C x C + 3C), attention output (C x C + C),
    # MLP up (4C x C + 4C) and down (C x 4C + C); then the final LayerNorm. The output layer is the
    # token embedding, counted once.
    blocks = config.n_layer * (12 * c * c + 13 * c) + 2 * c
    embeddings = (config.vocab_size + config.block_size) * c
    model = Model(config)
    assert model.num_parameters(include_embeddings=False) == blocks
    assert model.num_parameters() == blocks + embeddings


@pytest.mark.parametrize("bad, message", [
    (dict(n_embd=30, n_head=4), "divisible"), (dict(activation="relu"), "activation"), (dict(dropout=1.0), "dropout"),
    (dict(n_layer=0), "n_layer must be at least 1"), (dict(n_head=0), "n_head must be at least 1"),
    (dict(n_embd="64"), "n_embd must be an integer"), (dict(n_layer=2.0), "n_layer must be an integer"),
    (dict(bias="yes"), "bias must be true or false"), (dict(dropout=float("nan")), "dropout"),
    (dict(layer_norm_epsilon=float("nan")), "layer_norm_epsilon must be a positive finite number"),
    (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon"), (dict(layer_norm_epsilon="1e-5"), "layer_norm_epsilon"),
])
def test_invalid_config_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        Config(**bad)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_gpt2_initialisation_scales_residual_projections():
    config = Config(n_layer=8, n_embd=256, n_head=4, vocab_size=4096)
    model = Model(config)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, parameter in model.named_parameters():
        if name.endswith(("out_proj.weight", "mlp.proj.weight")):
            assert parameter.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif name.endswith(("qkv.weight", "fc.weight", "token_embedding.weight")):
            assert parameter.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith("bias") and "norm" not in name:
            assert torch.all(parameter == 0), name


def test_loss_is_mean_cross_entropy_over_targets_not_minus_one():
    model = Model(preset("nano", dropout=0.0)).eval()
    idx = torch.randint(0, 512, (2, 10))
    targets = torch.randint(0, 512, (2, 10))
    targets[0, :4] = -1
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 10, 512)
    kept = targets != -1
    expected = F.cross_entropy(logits[kept], targets[kept])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert model(idx)[1] is None


def test_dropout_is_active_in_training_and_off_in_eval():
    model = Model(preset("nano", dropout=0.5))
    idx = torch.randint(0, 512, (1, 16))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_prefix_then_token_by_token_decoding_matches_one_forward(activation):
    model = Model(preset("tiny", dropout=0.0, activation=activation)).eval()
    idx = torch.randint(0, 50257, (3, 24))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache(batch_size=3)
        pieces = [model(idx[:, :9], kv_cache=cache)[0], model(idx[:, 9:15], kv_cache=cache)[0]]
        pieces += [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(15, 24)]
    assert cache.length == 24
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_kv_cache_reorder_selects_batch_rows():
    model = Model(preset("nano", dropout=0.0)).eval()
    idx = torch.randint(0, 512, (2, 5))
    with torch.no_grad():
        cache = model.new_kv_cache(2)
        model(idx, kv_cache=cache)
        cache.reorder(torch.tensor([1, 1]))
        step, _ = model(torch.tensor([[7], [7]]), kv_cache=cache)
        reference, _ = model(torch.cat([idx[1:2], torch.tensor([[7]])], dim=1))
    assert torch.allclose(step[0, -1], reference[0, -1], atol=1e-5)
    assert torch.allclose(step[1, -1], reference[0, -1], atol=1e-5)


def test_sequences_longer_than_block_size_are_refused():
    model = Model(preset("nano"))
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))
    cache = model.new_kv_cache(1)
    model(torch.zeros(1, 64, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_slot_cache_rows_see_only_their_own_positions():
    """Rows of different lengths packed in one forward, a row joining, a row re-encoded from position 0 and
    a row moved: each row's logits equal a forward over that row's tokens alone (no cache)."""
    model = Model(preset("nano", dropout=0.0)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4.0)  # logits of a trained model's spread (std ~2), so a leak between rows would show
    cache = model.new_slot_kv_cache(4)
    rows: dict[int, list[int]] = {}
    largest = 0.0

    def step(decoding: dict[int, int], starting: dict[int, list[int]]) -> None:
        nonlocal largest
        for row, token in decoding.items():
            rows[row].append(token)
        rows.update(starting)
        cache.plan(list(decoding), [(row, len(tokens)) for row, tokens in starting.items()])
        idx = torch.tensor([list(decoding.values()) + [t for tokens in starting.values() for t in tokens]])
        with torch.no_grad():
            hidden = model.hidden_states(idx, cache)[0]
            last = torch.tensor([1] * len(decoding) + [len(tokens) for tokens in starting.values()]).cumsum(0) - 1
            logits = model.lm_head(hidden[last])
            for logit, row in zip(logits, list(decoding) + list(starting)):
                alone = model(torch.tensor([rows[row]]))[0][0, -1]
                largest = max(largest, (logit - alone).abs().max().item())
        assert cache.lengths[:len(rows)] == [len(rows[row]) for row in sorted(rows)]

    step({}, {0: list(range(10)), 1: list(range(100, 140))})
    step({0: 5, 1: 6}, {2: [7, 8, 9]})
    for token in range(20):
        step({0: token, 1: 50 + token, 2: 200 + token}, {})
    # Row 1 is full (64 positions): it restarts from its last 48 tokens while rows 0 and 2 decode.
    step({0: 3, 2: 4}, {1: rows[1][-47:] + [9]})
    cache.move(2, 0)  # row 0's sequence ended; row 2's sequence moves into its row
    rows[0] = rows.pop(2)
    step({0: 11, 1: 12}, {2: [1, 2]})
    step({1: 13}, {})  # row 0 idles for a step: decoding rows need not be contiguous
    step({0: 14, 1: 15, 2: 16}, {})
    assert largest < 1e-4, largest
