"""tinystories.interop.hf and export.py: our Model and transformers' GPT2LMHeadModel compute the same function."""
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import pytest
import torch
import transformers

import tinystories.interop.hf
import tinystories.interop.hf_folders
from model.model import Model, preset
from tests.scripts import refusal
from tests.test_checkpoint import _Payload, full_disk
from tinystories.errors import UserError
from tinystories.interop.hf import from_hf, to_hf
from tinystories.interop.hf_folders import load_hf, save_hf

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5  # fp32 max abs logit difference


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Random noise on every parameter: non-zero biases and non-unit norms catch more mapping mistakes."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return module.eval()


def random_model(activation: str = "gelu") -> Model:
    return perturbed(Model(preset("tiny", dropout=0.0, activation=activation)))


def max_logit_difference(model: Model, hf_model, vocab_size: int = 50257) -> float:
    idx = torch.randint(0, vocab_size, (2, model.config.block_size))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf_model(idx).logits
    return (ours - theirs).abs().max().item()


def greedy_ours(model: Model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    cache = model.new_kv_cache(batch_size=1, max_len=prompt.shape[1] + steps)
    ids, new = prompt, prompt
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(new, kv_cache=cache)
            new = logits[:, -1].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, new], dim=1)
    return ids


def run_export(*args: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "export.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)


def refused_export(monkeypatch, capsys, *args: str) -> str:
    """export.py's main in this process, for a refusal (no process of its own needed): exit status 2 and one
    `error:` line on stderr, which is returned."""
    import export as export_script

    return refusal(monkeypatch, capsys, export_script, *args)


@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_exported_model_gives_the_same_logits(activation):
    model = random_model(activation)
    difference = max_logit_difference(model, to_hf(model))
    print(f"ours -> HF, {activation}: max abs logit difference {difference:.3g}")
    assert difference <= TOLERANCE


@pytest.mark.parametrize("hf_activation", ["gelu", "gelu_new", "gelu_pytorch_tanh"])
def test_imported_model_gives_the_same_logits(hf_activation):
    hf_config = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=64, n_layer=2, n_head=2,
                                        activation_function=hf_activation, resid_pdrop=0.0, embd_pdrop=0.0,
                                        attn_pdrop=0.0)
    hf_model = perturbed(transformers.GPT2LMHeadModel(hf_config))
    model = from_hf(hf_model)
    difference = max_logit_difference(model, hf_model)
    print(f"HF -> ours, {hf_activation}: max abs logit difference {difference:.3g}")
    assert difference <= TOLERANCE
    assert model.config.activation == ("gelu" if hf_activation == "gelu" else "gelu_new")


def test_bias_free_model_exports_with_zero_biases():
    model = perturbed(Model(preset("nano", dropout=0.0, bias=False)))
    assert max_logit_difference(model, to_hf(model), vocab_size=model.config.vocab_size) <= TOLERANCE


@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_greedy_decoding_gives_the_same_tokens(activation):
    model = random_model(activation)
    hf_model = to_hf(model)
    hf_model.generation_config.eos_token_id = None  # stopping at <|endoftext|> would shorten HF's output only
    hf_model.generation_config.bos_token_id = None
    prompt = torch.randint(0, 50257, (1, 8))
    theirs = hf_model.generate(prompt, max_new_tokens=32, do_sample=False)
    assert torch.equal(greedy_ours(model, prompt, 32), theirs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A checkpoint written the plain way, and the Hugging Face folder the library makes of it (in process, so
    that mutation testing sees save_hf; export.py's own folder is compared with it below)."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = random_model()
    checkpoint = folder / "model.pth"
    torch.save({"model": model.state_dict(), "config": asdict(model.config)}, checkpoint)
    written = save_hf(model, folder / "hf_model")
    assert written == sorted((folder / "hf_model").iterdir())
    return model, checkpoint, folder / "hf_model"


def test_export_py_writes_the_librarys_folder(exported, tmp_path):
    _, checkpoint, hf_folder = exported
    result = run_export("--model", str(checkpoint), "--out", str(tmp_path / "hf_model"))
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "hf_model") in result.stdout
    for path in hf_folder.iterdir():
        assert (tmp_path / "hf_model" / path.name).read_bytes() == path.read_bytes(), path.name
    written = sorted(path.name for path in (tmp_path / "hf_model").iterdir())
    assert written == sorted(p.name for p in hf_folder.iterdir())


def test_exported_folder_loads_with_transformers(exported):
    model, _, hf_folder = exported
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    assert max_logit_difference(model, hf_model) <= TOLERANCE
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_folder)
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert len(tokenizer) == 50257
    assert tokenizer.eos_token_id == 50256
    assert tokenizer.decode([15496, 995]) == "Hello world"


def test_round_trip_through_hf_keeps_every_weight(exported, tmp_path):
    model, _, hf_folder = exported
    result = run_export("--from_hf", str(hf_folder), "--out", str(tmp_path / "back.pth"))
    assert result.returncode == 0, result.stderr
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert back["config"] == asdict(model.config)
    original = model.state_dict()
    assert back["model"].keys() == original.keys()
    assert all(torch.equal(back["model"][name], original[name]) for name in original)


def edited_config(source: Path, destination: Path, **changes) -> Path:
    shutil.copytree(source, destination)
    config = json.loads((destination / "config.json").read_text())
    (destination / "config.json").write_text(json.dumps({**config, **changes}))
    return destination


def test_export_reports_bad_input_in_one_line(exported, tmp_path, monkeypatch, capsys):
    _, checkpoint, hf_folder = exported
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    wrong_size = edited_config(hf_folder, tmp_path / "wrong_size", n_embd=32)
    for args in (["--model", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "a")],
                 ["--model", str(corrupt), "--out", str(tmp_path / "b")],
                 ["--from_hf", str(wrong_size), "--out", str(tmp_path / "c.pth")]):
        refused_export(monkeypatch, capsys, *args)


@pytest.mark.parametrize("changes, message", [
    ({"n_inner": 100}, "n_inner is 100"),
    ({"activation_function": "relu"}, "activation 'relu'"),
    ({"model_type": "llama"}, "'llama' model"),
    ({"n_embd": 32}, "has shape"),
])
def test_unconvertible_hf_models_are_refused(exported, tmp_path, changes, message):
    folder = edited_config(exported[2], tmp_path / "edited", **changes)
    with pytest.raises(UserError, match=message):
        load_hf(str(folder))


def test_corrupt_or_missing_hf_weights_are_refused(exported, tmp_path):
    folder = edited_config(exported[2], tmp_path / "corrupt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="weights could not be loaded"):
        load_hf(str(folder))


def test_missing_folder_with_an_unreachable_hub_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(tinystories.interop.hf_folders, "hub_resolves", lambda: False)
    with pytest.raises(UserError, match="neither a model folder nor in the Hugging Face cache, and the Hub is"):
        load_hf(str(tmp_path / "no_such_folder"))


def test_from_hf_downloads_a_hub_repo_into_its_cache_once(exported, fake_hub, tmp_path):
    model, _, hf_folder = exported
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        fake_hub.add("someone/tiny-gpt2", name, (hf_folder / name).read_bytes())
    result = run_export("--from_hf", "someone/tiny-gpt2", "--out", str(tmp_path / "hub.pth"), env=fake_hub.env)
    assert result.returncode == 0, result.stderr
    back = torch.load(tmp_path / "hub.pth", weights_only=True)
    assert all(torch.equal(back["model"][name], tensor) for name, tensor in model.state_dict().items())
    downloaded = {path for method, path in fake_hub.requests if method == "GET"}
    assert {"someone/tiny-gpt2/config.json", "someone/tiny-gpt2/model.safetensors"} <= downloaded
    assert (fake_hub.cache / "models--someone--tiny-gpt2" / "snapshots").is_dir()
    missing = run_export("--from_hf", "someone/missing", "--out", str(tmp_path / "missing.pth"), env=fake_hub.env)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.startswith("error: someone/missing is neither a model folder nor a loadable Hugging Face")
    fake_hub.stop()  # the second conversion is served by the cache alone
    again = run_export("--from_hf", "someone/tiny-gpt2", "--out", str(tmp_path / "again.pth"),
                       env={**fake_hub.env, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr


def test_untied_output_layer_is_refused():
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_positions=16, n_embd=8, n_layer=1, n_head=2, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None))
    with torch.no_grad():
        hf_model.lm_head.weight.copy_(hf_model.transformer.wte.weight)
    assert torch.equal(from_hf(hf_model).lm_head.weight, hf_model.lm_head.weight)  # untied but equal: converts
    with torch.no_grad():
        hf_model.lm_head.weight.add_(1.0)
    with pytest.raises(UserError) as refused:
        from_hf(hf_model)
    assert str(refused.value) == ("this GPT-2 model cannot be converted: its output layer is not tied to the token "
                                  "embedding")


def test_load_hf_in_process_gives_back_every_weight(exported):
    model, _, hf_folder = exported
    loaded = load_hf(str(hf_folder))
    assert loaded.config == model.config
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in model.state_dict().items())


def test_a_folder_whose_config_names_no_model_type_is_refused(exported, tmp_path):
    folder = edited_config(exported[2], tmp_path / "untyped")
    config = json.loads((folder / "config.json").read_text())
    del config["model_type"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as refused:
        load_hf(str(folder))
    assert str(refused.value) == f"{folder} has no Hugging Face model config (config.json)"


def test_only_the_cache_is_asked_for_a_repo_id_when_the_hub_is_unreachable(monkeypatch, tmp_path):
    monkeypatch.setattr(tinystories.interop.hf_folders, "hub_resolves", lambda: False)
    assert tinystories.interop.hf_folders._offline_options("someone/tiny-gpt2") == {"local_files_only": True}
    assert tinystories.interop.hf_folders._offline_options(str(tmp_path)) == {}  # a folder needs no Hub
    monkeypatch.setattr(tinystories.interop.hf_folders, "hub_resolves", lambda: True)
    assert tinystories.interop.hf_folders._offline_options("someone/tiny-gpt2") == {}


def test_unwritable_out_is_refused_before_converting(exported, tmp_path, read_only_folder, monkeypatch, capsys):
    _, checkpoint, hf_folder = exported
    (tmp_path / "a_file").write_text("x")
    for args, message in [(["--model", str(checkpoint), "--out", str(read_only_folder)], "cannot write in"),
                          (["--model", str(checkpoint), "--out", str(tmp_path / "a_file")], "is a file, not a folder"),
                          (["--from_hf", str(hf_folder), "--out", str(read_only_folder / "model.pth")],
                           "cannot write in"),
                          (["--from_hf", str(hf_folder), "--out", str(tmp_path)], "is a folder")]:
        assert message in refused_export(monkeypatch, capsys, *args)


def replaced_config(source: Path, destination: Path, text: str) -> Path:
    shutil.copytree(source, destination)
    (destination / "config.json").write_text(text)
    return destination


@pytest.mark.parametrize("changes, message", [
    ({"n_embd": "64"}, "config.json is invalid: TypeError: Field 'n_embd' expected int, got str"),
    ({"n_head": 0}, "n_head must be at least 1"),
    ({"n_layer": -1}, "n_layer must be at least 1"),
    ({"layer_norm_epsilon": float("nan")}, "layer_norm_epsilon must be a positive finite number"),
    ({"layer_norm_epsilon": "small"}, "Field 'layer_norm_epsilon' expected float"),
    ({"vocab_size": None}, "Field 'vocab_size' expected int"),
    ({"n_layer": 1}, "weights its config.json does not use: transformer.h.1."),
    ({"n_layer": 3}, "weights are missing: transformer.h.2."),
])
def test_wrong_config_json_is_refused_in_one_line(exported, tmp_path, changes, message):
    """export.py --from_hf used to give tracebacks here, or (n_layer 1 over 2 layers) drop a layer silently."""
    folder = edited_config(exported[2], tmp_path / "edited", **changes)
    with pytest.raises(UserError, match=re.escape(message)) as raised:
        load_hf(str(folder))
    assert "\n" not in str(raised.value)


def test_export_of_a_wrong_config_json_is_one_line(exported, tmp_path, monkeypatch, capsys):
    folder = edited_config(exported[2], tmp_path / "edited", n_layer=1)
    assert "does not use" in refused_export(monkeypatch, capsys, "--from_hf", str(folder), "--out",
                                            str(tmp_path / "model.pth"))
    assert not (tmp_path / "model.pth").exists()


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "config.json must hold a JSON object"),
    ('"gpt2"', "config.json must hold a JSON object"),
    ("{not json", "config.json"),
    ("", "config.json"),
])
def test_config_json_that_is_not_an_object_is_refused(exported, tmp_path, text, message):
    folder = replaced_config(exported[2], tmp_path / "edited", text)
    with pytest.raises(UserError, match=message):
        load_hf(str(folder))


def test_weights_that_do_not_fit_their_config_are_named(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = edited_config(exported[2], tmp_path / "narrow", n_embd=32)
    with pytest.raises(UserError) as refused:  # the first mismatched weight by name
        load_hf(str(folder))
    assert str(refused.value) == f"{folder}: transformer.h.0.attn.c_attn.bias has shape (192,) but its config.json " \
                                 "implies (96,)"
    folder = edited_config(exported[2], tmp_path / "missing")
    weights = load_file(folder / "model.safetensors")
    for name in sorted(weights)[:4]:
        del weights[name]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError) as refused:  # the first three missing weights by name
        load_hf(str(folder))
    assert str(refused.value) == f"{folder}: weights are missing: transformer.h.0.attn.c_attn.bias, " \
                                 "transformer.h.0.attn.c_attn.weight, transformer.h.0.attn.c_proj.bias"
    folder = edited_config(exported[2], tmp_path / "corrupt")
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(UserError, match=r": weights could not be loaded: Error while deserializing header"):
        load_hf(str(folder))


def test_an_errors_last_line_or_its_type_is_what_the_user_sees():
    assert tinystories.interop.hf_folders._last_line(ValueError("first\n  second  \n last one ")) == "last one"
    assert tinystories.interop.hf_folders._last_line(ValueError("  ")) == "ValueError"


GPT2_VARIANTS = {
    "relu": ({"activation_function": "relu"},
             "activation 'relu' is not one of gelu, gelu_new, gelu_pytorch_tanh"),
    "a wider MLP": ({"n_inner": 300}, "n_inner is 300, but the MLP must be 4 * n_embd = 256 wide"),
    "cross-attention": ({"add_cross_attention": True}, "it has cross-attention layers"),
    "unscaled attention": ({"scale_attn_weights": False}, "its attention scores are not scaled by 1/sqrt(head size)"),
    "attention scaled by layer": ({"scale_attn_by_inverse_layer_idx": True},
                                  "its attention scores are not scaled by 1/sqrt(head size)"),
}


@pytest.mark.parametrize("changes, reason", GPT2_VARIANTS.values(), ids=GPT2_VARIANTS.keys())
def test_gpt2_variants_our_model_cannot_compute_are_refused_with_the_reason(changes, reason):
    hf_config = transformers.GPT2Config(vocab_size=100, n_positions=16, n_embd=64, n_layer=1, n_head=2,
                                        bos_token_id=None, eos_token_id=None, **changes)
    with pytest.raises(UserError) as refused:
        tinystories.interop.hf.config_from_gpt2(hf_config)
    assert str(refused.value) == f"this GPT-2 model cannot be converted: {reason}"


def test_gpt2_settings_that_change_nothing_convert():
    hf_config = transformers.GPT2Config(vocab_size=100, n_positions=16, n_embd=64, n_layer=3, n_head=4, n_inner=256,
                                        activation_function="gelu_pytorch_tanh", scale_attn_weights=True,
                                        layer_norm_epsilon=1e-6, resid_pdrop=0.2, bos_token_id=None, eos_token_id=None)
    assert tinystories.interop.hf.config_from_gpt2(hf_config) == preset(
        "tiny", vocab_size=100, block_size=16, n_layer=3, n_head=4, activation="gelu_new", layer_norm_epsilon=1e-6,
        dropout=0.2)


def test_a_gpt2_model_without_one_of_its_parameters_is_refused():
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_positions=16, n_embd=8, n_layer=1, n_head=2, bos_token_id=None, eos_token_id=None))
    del hf_model.transformer.h[0].ln_1.bias
    hf_model.transformer.h[0].ln_1.bias = None
    with pytest.raises(UserError) as refused:
        from_hf(hf_model)
    assert str(refused.value) == "this GPT-2 model cannot be converted: it has no parameter transformer.h.0.ln_1.bias"


def test_a_tokenizer_with_one_token_more_than_gpt2s_is_not_gpt2s():
    tokenizer = tinystories.interop.hf_folders.gpt2_tokenizer(model_max_length=128)
    assert tinystories.interop.hf_folders.encodes_like_gpt2(tokenizer)
    tokenizer.add_tokens(["<|pad|>"])  # the sample text's ids and <|endoftext|>'s id are unchanged
    assert not tinystories.interop.hf_folders.encodes_like_gpt2(tokenizer)


def test_save_hf_writes_the_readmes_files_and_gpt2s_original_tokenizer_files(tmp_path):
    from tinystories.tokenizer import bpe_file_paths

    model = random_model()
    folder = tmp_path / "hf_model"
    assert [path.name for path in save_hf(model, folder)] == sorted([
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "vocab.json", "merges.txt"])
    paths = bpe_file_paths()
    assert (folder / "vocab.json").read_bytes() == paths["encoder.json"].read_bytes()
    assert (folder / "merges.txt").read_bytes() == paths["vocab.bpe"].read_bytes()
    assert transformers.AutoTokenizer.from_pretrained(folder).model_max_length == model.config.block_size


def test_a_full_disk_while_writing_the_folder_is_one_line_and_leaves_nothing(tmp_path):
    """The folder is written beside its target and renamed into place: config.json alone was left before."""
    with full_disk(tmp_path) as small:
        with pytest.raises(UserError) as refused:
            save_hf(random_model(), small / "new" / "hf_model")
        assert sorted(small.iterdir()) == []  # no partial folder, no temporary one, not even the parent made
        existing = small / "existing"
        existing.mkdir()
        (existing / "config.json").write_text("previous")
        (existing / "notes.txt").write_text("mine")
        with pytest.raises(UserError) as refused_again:
            save_hf(random_model(), existing)
        assert sorted(path.name for path in existing.iterdir()) == ["config.json", "notes.txt"]
        assert (existing / "config.json").read_text() == "previous"
    message = str(refused.value)  # safetensors words it "... I/O error: No space left on device (os error 28)"
    assert message.startswith(f"could not write the model folder {small / 'new' / 'hf_model'}: ")
    assert "\n" not in message and "No space left on device" in message
    assert message.endswith("; nothing was written (the checkpoint is unchanged)")
    assert str(refused_again.value).endswith(f"; the previous files in {existing} are kept (the checkpoint is "
                                             "unchanged)")


@pytest.mark.parametrize("direction", ["--model", "--from_hf"])
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(exported, tmp_path, monkeypatch, capsys, direction):
    """--from_hf was torch.save's traceback; --model left config.json and a progress bar's lines on stderr."""
    _, checkpoint, hf_folder = exported
    with full_disk(tmp_path) as small:
        source, out = (checkpoint, small / "hf_model") if direction == "--model" else (hf_folder, small / "model.pth")
        message = refused_export(monkeypatch, capsys, direction, str(source), "--out", str(out))
        assert "No space left on device" in message
        assert sorted(small.iterdir()) == []


def test_an_existing_folder_gets_the_export_and_keeps_its_other_files(exported, tmp_path):
    model, _, hf_folder = exported
    folder = tmp_path / "hf_model"
    folder.mkdir()
    (folder / "README.md").write_text("my notes")
    (folder / "config.json").write_text("stale")
    written = save_hf(model, folder)
    assert [path.name for path in written] == sorted(path.name for path in hf_folder.iterdir())
    assert all(path.read_bytes() == (hf_folder / path.name).read_bytes() for path in written)
    assert (folder / "README.md").read_text() == "my notes"
    assert sorted(path.name for path in folder.iterdir()) == sorted([path.name for path in written] + ["README.md"])


def test_the_folder_and_its_files_have_ordinary_permissions(exported):
    """mkdtemp's folder and transformers' model.safetensors are owner-only; others could not read the export."""
    umask = os.umask(0)
    os.umask(umask)
    hf_folder = exported[2]
    assert hf_folder.stat().st_mode & 0o777 == 0o777 & ~umask
    assert {path.name: path.stat().st_mode & 0o777 for path in hf_folder.iterdir()} == {
        path.name: 0o666 & ~umask for path in hf_folder.iterdir()}


def copy_of(path: Path, destination: Path) -> Path:
    if path.is_dir():
        shutil.copytree(path, destination)
    else:
        shutil.copyfile(path, destination)
    return destination


def contents(path: Path) -> dict[str, bytes]:
    """The bytes of a file, or of every file in a folder, by name."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(file.relative_to(path.parent)): file.read_bytes() for file in files if file.is_file()}


OUTPUTS_THAT_ARE_INPUTS = {  # (the input to copy: "checkpoint" or "hf folder", arguments), in a folder of copies
    "gguf over the checkpoint": ("checkpoint", ["--model", "u.pth", "--format", "gguf", "--out", "u.pth"]),
    "gguf over it through ..": ("checkpoint", ["--model", "u.pth", "--format", "gguf", "--out", "sub/../u.pth"]),
    "gguf over it through a link": ("checkpoint", ["--model", "link.pth", "--format", "gguf", "--out", "u.pth"]),
    "hf over the checkpoint": ("checkpoint", ["--model", "u.pth", "--out", "u.pth"]),
    "hf into the checkpoint's folder": ("checkpoint", ["--model", "sub/u.pth", "--out", "sub"]),
    "hf into it through ..": ("checkpoint", ["--model", "sub/u.pth", "--out", "sub/../sub/"]),
    "hf into it through a link": ("checkpoint", ["--model", "sub/u.pth", "--out", "linked_sub"]),
    "pth into the hf folder": ("hf folder", ["--from_hf", "hf", "--out", "hf/model.safetensors"]),
    "pth into it through ..": ("hf folder", ["--from_hf", "hf", "--out", "sub/../hf/model.safetensors"]),
    "pth into it through a link": ("hf folder", ["--from_hf", "linked_hf", "--out", "hf/model.safetensors"]),
    "pth over the hf folder": ("hf folder", ["--from_hf", "hf", "--out", "hf"]),
}


@pytest.mark.parametrize("source, args", OUTPUTS_THAT_ARE_INPUTS.values(), ids=OUTPUTS_THAT_ARE_INPUTS.keys())
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(exported, tmp_path, monkeypatch, capsys, source,
                                                                   args):
    """Writing the output used to delete or overwrite the input, with exit status 0."""
    _, checkpoint, hf_folder = exported
    (tmp_path / "sub").mkdir()
    copy_of(checkpoint, tmp_path / "u.pth")
    copy_of(checkpoint, tmp_path / "sub" / "u.pth")
    copy_of(hf_folder, tmp_path / "hf")
    (tmp_path / "link.pth").symlink_to(tmp_path / "u.pth")
    (tmp_path / "linked_sub").symlink_to(tmp_path / "sub", target_is_directory=True)
    (tmp_path / "linked_hf").symlink_to(tmp_path / "hf", target_is_directory=True)
    before = {**contents(tmp_path / "u.pth"), **contents(tmp_path / "sub"), **contents(tmp_path / "hf")}
    monkeypatch.chdir(tmp_path)
    message = refused_export(monkeypatch, capsys, *args)
    assert " the input " in message and "choose another" in message
    assert {**contents(tmp_path / "u.pth"), **contents(tmp_path / "sub"), **contents(tmp_path / "hf")} == before


def test_an_output_beside_the_input_is_written(exported, tmp_path, monkeypatch, capsys):
    """Not every shared folder is refused: a checkpoint beside the HF folder it came from, a folder beside the
    checkpoint."""
    import export as export_script
    from tests.scripts import run_script

    _, checkpoint, hf_folder = exported
    copy_of(hf_folder, tmp_path / "hf")
    copy_of(checkpoint, tmp_path / "u.pth")
    for args in (["--from_hf", str(tmp_path / "hf"), "--out", str(tmp_path / "hf.pth")],
                 ["--model", str(tmp_path / "u.pth"), "--out", str(tmp_path / "hf_beside")]):
        status, _, stderr = run_script(monkeypatch, capsys, export_script, *args)
        assert status == 0, stderr
    assert (tmp_path / "hf.pth").is_file() and (tmp_path / "hf_beside" / "model.safetensors").is_file()


def limited_run(*command: str, memory_gb: int = 8) -> tuple[subprocess.CompletedProcess, float]:
    """A script run with its address space limited, so that a model built too big fails at once instead of
    exhausting this machine's memory; (result, seconds)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_gb << 30, memory_gb << 30))

    start = time.monotonic()
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            preexec_fn=limit)
    return result, time.monotonic() - start


def test_a_llama_config_over_gpt2_weights_is_refused_before_a_model_is_built(exported, tmp_path):
    """AutoModelForCausalLM built a 6.7-billion-parameter Llama from its defaults first: killed for memory."""
    folder = edited_config(exported[2], tmp_path / "llama", model_type="llama")
    result, seconds = limited_run("generate.py", "--model", str(folder), "--prompt", "Once")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"error: {folder}: config.json describes a 'llama' model of 6,682,124,288 parameters, "
                             "far more than its 13.3 MB of weights hold; check its model_type and sizes\n")
    assert seconds < 60


def test_a_gpt2_config_far_larger_than_its_weights_is_refused_before_a_model_is_built(exported, tmp_path):
    folder = edited_config(exported[2], tmp_path / "deep", n_layer=1000)  # 1,000 layers of 50,000 parameters
    result, _ = limited_run("export.py", "--from_hf", str(folder), "--out", str(tmp_path / "model.pth"),
                            memory_gb=4)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {folder}: config.json describes a 'gpt2' model of ")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "model.pth").exists()


def test_an_unknown_model_type_is_named_in_one_short_line(exported, tmp_path):
    from tinystories.interop.hf_folders import load_causal_lm

    folder = edited_config(exported[2], tmp_path / "unknown", model_type="no_such_type")
    with pytest.raises(UserError) as refused:
        load_causal_lm(str(folder))
    assert str(refused.value) == (f"{folder}: transformers {transformers.__version__} does not know the model_type "
                                  "'no_such_type' of its config.json")


def pickled_folder(hf_folder: Path, destination: Path, extra: dict) -> Path:
    """The folder with its weights as a pickled pytorch_model.bin (no safetensors), plus `extra` entries."""
    shutil.copytree(hf_folder, destination)
    state = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).state_dict()
    (destination / "model.safetensors").unlink()
    # Protocol 4 (which torch's safe loader may not read) makes torch warn before its error.
    torch.save({**state, **extra}, destination / "pytorch_model.bin", pickle_protocol=4 if extra else 2)
    return destination


def test_a_pickled_pytorch_model_bin_of_tensors_loads(exported, tmp_path):
    model, _, hf_folder = exported
    loaded = load_hf(str(pickled_folder(hf_folder, tmp_path / "pickled", {})))
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize("script", ["export.py", "generate.py"])
def test_a_pickle_with_code_is_one_line_without_torch_warnings_or_advice(exported, tmp_path, script):
    """torch printed two lines of UserWarning, then the error advised loading it with weights_only=False, which
    would run the file's code."""
    marker = tmp_path / "code_ran"
    folder = pickled_folder(exported[2], tmp_path / "evil", {"extra": _Payload(marker)})
    args = ["--from_hf", str(folder), "--out", str(tmp_path / "model.pth")] if script == "export.py" else \
        ["--model", str(folder), "--prompt", "Once"]
    result, _ = limited_run(script, *args)
    assert result.returncode == 2
    assert result.stderr == (f"error: {folder}: weights could not be loaded: its pickled weights (pytorch_model.bin) "
                             "hold something other than tensors and plain values, which are never loaded, for "
                             "safety\n")
    assert "weights_only" not in result.stderr and not marker.exists()


def test_gpt2_config_names_end_of_text_only_within_the_vocabulary():
    for vocab_size, end_of_text in ((50257, 50256), (50256, None), (512, None)):
        hf_config = tinystories.interop.hf.gpt2_config(preset("tiny", vocab_size=vocab_size))
        assert (hf_config.bos_token_id, hf_config.eos_token_id) == (end_of_text, end_of_text)
        assert hf_config.n_positions == hf_config.n_ctx == 128
    hf_config = tinystories.interop.hf.gpt2_config(preset("tiny", dropout=0.2, layer_norm_epsilon=1e-6,
                                                          activation="gelu_new"))
    assert (hf_config.n_embd, hf_config.n_layer, hf_config.n_head, hf_config.n_inner) == (64, 2, 2, None)
    assert (hf_config.activation_function, hf_config.layer_norm_epsilon) == ("gelu_new", 1e-6)
    assert (hf_config.resid_pdrop, hf_config.embd_pdrop, hf_config.attn_pdrop) == (0.2, 0.2, 0.2)
    assert hf_config.tie_word_embeddings is True


def test_copying_parameters_checks_names_and_shapes():
    model = Model(preset("nano", dropout=0.0))
    values = {name: torch.zeros_like(parameter) for name, parameter in model.named_parameters()}
    for name in sorted(values)[:4]:
        values[f"extra.{name}"] = values.pop(name)
    with pytest.raises(ValueError) as refused:  # a mapping mistake of ours, not the user's
        tinystories.interop.hf._copy_parameters(model, values)
    missing = sorted(name for name, _ in model.named_parameters())[:3]
    assert str(refused.value) == (f"parameter names differ: missing {missing}, "
                                  f"unexpected {['extra.' + name for name in missing]}")
    values = {name: torch.zeros_like(parameter) for name, parameter in model.named_parameters()}
    values["final_norm.weight"] = torch.zeros(5)
    with pytest.raises(UserError) as refused:
        tinystories.interop.hf._copy_parameters(model, values)
    assert str(refused.value) == "final_norm.weight has shape (5,), expected (32,)"


def test_without_transformers_the_interop_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ModuleNotFoundError
    with pytest.raises(UserError) as refused:
        to_hf(Model(preset("nano", dropout=0.0)))
    assert str(refused.value) == "Hugging Face interop needs transformers: pip install -r requirements-dev.txt"


def test_weights_beyond_what_the_config_uses_are_named(exported, tmp_path):
    folder = edited_config(exported[2], tmp_path / "one_layer", n_layer=1)  # the weights hold two layers
    with pytest.raises(UserError) as refused:
        load_hf(str(folder))
    prefix = f"{folder} holds weights its config.json does not use: "
    assert str(refused.value).startswith(prefix)
    names = str(refused.value)[len(prefix):].split(", ")  # the first three by name, all of the second layer
    assert len(names) == 3 and names == sorted(names) and all(name.startswith("transformer.h.1.") for name in names)
