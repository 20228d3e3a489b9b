"""tinystories.evaluation.subjects: Hugging Face causal LMs (GPT-Neo with local attention, our export.py folders)
scored and
sampled like our checkpoints, checked against transformers itself."""
import copy
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

import tinystories.interop.hf_folders
from model.model import Model, preset
from tinystories.checkpoint import model_checkpoint, save_checkpoint
from tinystories.data import load_tokens
from tinystories.errors import UserError
from tinystories.evaluation.metrics import stream_loss
from tinystories.evaluation.subjects import CheckpointSubject, HuggingFaceSubject, load_subject
from tinystories.generation.sampling import SamplingConfig
from tinystories.interop.hf_folders import gpt2_tokenizer, save_hf

WINDOW = 32  # scoring windows in these tests: longer than GPT-Neo's local attention window below
PROMPTS = ["Once upon a time, there was a", "Lily saw a big dog. The dog", "Tom"]


@pytest.fixture(scope="module")
def neo_folder(tmp_path_factory):
    """A random GPTNeoForCausalLM (a global and a local attention layer, local window 8) with GPT-2's tokenizer."""
    torch.manual_seed(0)
    config = transformers.GPTNeoConfig(vocab_size=50257, max_position_embeddings=64, hidden_size=32, num_layers=2,
                                       num_heads=2, attention_types=[[["global", "local"], 1]], window_size=8,
                                       bos_token_id=50256, eos_token_id=50256)
    model = transformers.GPTNeoForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the init's make differences in attention visible in the loss
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    folder = tmp_path_factory.mktemp("neo")
    model.save_pretrained(folder)
    gpt2_tokenizer(64).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint_and_export(tmp_path_factory):
    torch.manual_seed(1)
    model = Model(preset("tiny", dropout=0.0, block_size=64)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    folder = tmp_path_factory.mktemp("ours")
    save_checkpoint(folder / "model.pth", model_checkpoint(model, step=7))
    save_hf(model, folder / "hf")
    return folder / "model.pth", folder / "hf"


def windows_loss_with_transformers(hf_model, tokens: np.ndarray, window: int) -> float:
    """Mean cross-entropy of every token after the first, each window of `window` inputs on its own."""
    ids = torch.tensor(tokens.astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            targets = ids[start + 1:start + window + 1]
            logits = hf_model(ids[start:start + len(targets)][None]).logits[0].double()
            total += F.cross_entropy(logits, targets, reduction="sum").item()
    return total / (len(ids) - 1)


def test_gpt_neo_loss_equals_transformers(neo_folder, synthetic_data_dir):
    tokens = np.asarray(load_tokens(synthetic_data_dir, "test")[:700])
    subject = load_subject(str(neo_folder), torch.device("cpu"), block_size=WINDOW)
    assert isinstance(subject, HuggingFaceSubject) and subject.block_size == WINDOW and subject.step is None
    result = stream_loss(subject, tokens, batch_size=5, progress=False)
    reference = transformers.GPTNeoForCausalLM.from_pretrained(neo_folder).eval()
    expected = windows_loss_with_transformers(reference, tokens, WINDOW)
    assert result.tokens == len(tokens) - 1
    assert result.loss == pytest.approx(expected, abs=1e-5)
    # The local layer matters at this window length: a model with both layers global scores differently.
    reference.config.attention_layers = ["global", "global"]
    everywhere_global = transformers.GPTNeoForCausalLM(reference.config)
    everywhere_global.load_state_dict(reference.state_dict())
    assert abs(windows_loss_with_transformers(everywhere_global.eval(), tokens, WINDOW) - expected) > 1e-4


def test_the_windows_are_the_models_context_when_shorter(neo_folder):
    assert load_subject(str(neo_folder), torch.device("cpu")).block_size == 64  # 512 requested, 64 positions


def test_checkpoint_and_its_export_give_the_same_loss(checkpoint_and_export, synthetic_data_dir):
    checkpoint, folder = checkpoint_and_export
    tokens = np.asarray(load_tokens(synthetic_data_dir, "test")[:900])
    ours = load_subject(str(checkpoint), torch.device("cpu"))
    theirs = load_subject(str(folder), torch.device("cpu"))
    assert isinstance(ours, CheckpointSubject) and ours.step == 7 and isinstance(theirs, HuggingFaceSubject)
    assert ours.block_size == theirs.block_size == 64
    ours_loss = stream_loss(ours, tokens, batch_size=4, progress=False).loss
    assert ours_loss == pytest.approx(stream_loss(theirs, tokens, batch_size=3, progress=False).loss, abs=1e-5)



def int8_by_hand(weight: torch.Tensor) -> torch.Tensor:
    """Every row rounded to 127 steps of max|row| / 127."""
    steps = weight.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(weight / steps) * steps


@pytest.mark.parametrize("precision, by_hand", [("int8", int8_by_hand),
                                                ("float16", lambda weight: weight.half().float())])
def test_a_precision_scores_the_rounded_weights_of_checkpoints_only(checkpoint_and_export, synthetic_data_dir,
                                                                     precision, by_hand):
    checkpoint, folder = checkpoint_and_export
    tokens = np.asarray(load_tokens(synthetic_data_dir, "test")[:500])
    subject = load_subject(str(checkpoint), torch.device("cpu"), weight_format=precision)
    plain = load_subject(str(checkpoint), torch.device("cpu"))
    # Every linear layer's weight rounded; the embedding stays float32.
    rounded = copy.deepcopy(plain.model)
    with torch.no_grad():
        rounded.lm_head.weight = torch.nn.Parameter(rounded.lm_head.weight.clone())
        for module in rounded.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(by_hand(module.weight))
    loss = stream_loss(subject, tokens, batch_size=4, progress=False).loss
    expected = stream_loss(CheckpointSubject(rounded), tokens, batch_size=4, progress=False).loss
    assert loss == pytest.approx(expected, abs=1e-6)
    assert loss != stream_loss(plain, tokens, batch_size=4, progress=False).loss
    with pytest.raises(UserError, match=f"--precision {precision} applies to this project's checkpoints only"):
        load_subject(str(folder), torch.device("cpu"), weight_format=precision)


def test_completions_run_on_both_and_agree_when_greedy(checkpoint_and_export):
    checkpoint, folder = checkpoint_and_export
    ours = load_subject(str(checkpoint), torch.device("cpu"))
    theirs = load_subject(str(folder), torch.device("cpu"))
    greedy = SamplingConfig(temperature=0.0)
    ours_greedy = ours.complete(PROMPTS, 12, greedy, seed=0, batch_size=2)
    theirs_greedy = theirs.complete(PROMPTS, 12, greedy, seed=0, batch_size=2)
    # The same function decoded greedily: the same tokens, whether our sampler or transformers' generate().
    assert [c.token_ids for c in ours_greedy] == [c.token_ids for c in theirs_greedy]
    assert all(len(c.token_ids) == 12 or c.ended_with_eos for c in theirs_greedy)
    sampled = theirs.complete(PROMPTS, 12, SamplingConfig(), seed=5, batch_size=3)
    assert sampled[0].prompt == PROMPTS[0] and all(c.token_ids for c in sampled)
    assert [c.token_ids for c in theirs.complete(PROMPTS, 12, SamplingConfig(), seed=5, batch_size=3)] == \
        [c.token_ids for c in sampled]  # the same seed, the same completions


def test_completions_stop_at_a_hugging_face_models_context(neo_folder):
    subject = load_subject(str(neo_folder), torch.device("cpu"))
    [completion] = subject.complete(["Once upon a time"], 500, SamplingConfig(temperature=0.0), seed=0,
                                    batch_size=1)
    assert 0 < len(completion.token_ids) <= 64 - 4  # 4 prompt tokens; transformers cannot slide the window


def test_a_tokenizer_that_encodes_differently_is_refused(tmp_path, neo_folder):
    folder = tmp_path / "other_tokenizer"
    transformers.GPTNeoForCausalLM.from_pretrained(neo_folder).save_pretrained(folder)
    vocab = {"<|endoftext|>": 0, **{chr(c): c - 96 for c in range(97, 123)}}
    transformers.GPT2Tokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    with pytest.raises(UserError, match="does not encode like GPT-2"):
        load_subject(str(folder), torch.device("cpu"))


def test_a_vocabulary_smaller_than_gpt2s_is_refused(tmp_path):
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=512, n_positions=32, n_embd=16,
                                                                 n_layer=1, n_head=2))
    model.save_pretrained(tmp_path)
    gpt2_tokenizer(32).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="does not cover"):
        load_subject(str(tmp_path), torch.device("cpu"))


@pytest.mark.parametrize("name, message", [
    ("missing.pth", "not found"),
    ("no_such_model_folder", "not found"),
    ("roneneldan/TinyStories-33M", "roneneldan/TinyStories-33M"),  # Hub unreachable: one line, no download
])
def test_unloadable_names_are_one_line_errors(name, message, monkeypatch):
    # The suite never looks up the Hub.
    monkeypatch.setattr(tinystories.interop.hf_folders, "hub_resolves", lambda: False)
    with pytest.raises(UserError, match=message) as error:
        load_subject(name, torch.device("cpu"))
    assert "\n" not in str(error.value)


def test_a_missing_transformers_is_one_line(neo_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an uninstalled package looks like to import
    with pytest.raises(UserError, match="needs transformers"):
        load_subject(str(neo_folder), torch.device("cpu"))
