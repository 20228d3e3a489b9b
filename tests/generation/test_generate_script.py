"""generate.py end to end: streaming text, seeds, --json, prompt files, beams, one-line user errors, --output never
over an input, and the CPU kernel's cache (a damaged library rebuilt, nothing of torch's printed)."""
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.model import Model, preset
from tests.scripts import run_script
from tinystories.checkpoint import model_checkpoint, save_checkpoint
from tinystories.generation.weight_formats import rounded_copy
from tinystories.tokenizer import EOT_ID, get_tokenizer

ROOT = Path(__file__).resolve().parents[2]
# Loaded by path: a module named "generate" (or "evaluate") could be another package's.
spec = importlib.util.spec_from_file_location("generate_script", ROOT / "generate.py")
generate_script = sys.modules["generate_script"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate_script)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("generate") / "model.pth"
    save_checkpoint(path, model_checkpoint(Model(preset("tiny")), step=0))
    return path


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run generate.py's main in this process: (exit status, stdout, stderr)."""
    return run_script(monkeypatch, capsys, generate_script, *args)


def test_streams_a_continuation_of_the_prompt(checkpoint):
    result = subprocess.run([sys.executable, "generate.py", "--model", str(checkpoint), "--max_tokens", "12",
                             "--seed", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon a time") and len(result.stdout) > len("Once upon a time\n")
    assert "tokens/s" in result.stderr


def test_same_seed_gives_the_same_text(checkpoint, monkeypatch, capsys):
    first = run(monkeypatch, capsys, "--model", str(checkpoint), "--max_tokens", "20", "--seed", "7")
    second = run(monkeypatch, capsys, "--model", str(checkpoint), "--max_tokens", "20", "--seed", "7")
    other = run(monkeypatch, capsys, "--model", str(checkpoint), "--max_tokens", "20", "--seed", "8")
    assert first[0] == 0 and first[1] == second[1] != other[1]


def test_json_reports_text_ids_and_speed_per_sample(checkpoint, tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n\nLily saw a big dog\n")
    status, out, _ = run(monkeypatch, capsys, "--model", str(checkpoint), "--prompt_file", str(prompts),
                         "--num_samples", "2", "--max_tokens", "15", "--seed", "3", "--json", "true")
    assert status == 0
    document = json.loads(out)
    assert document["seed"] == 3 and document["sampling"] == {"temperature": 0.8, "top_k": 50, "top_p": 0.95}
    samples = document["samples"]
    assert [(s["prompt"], s["sample"]) for s in samples] == [
        ("Once upon a time", 1), ("Once upon a time", 2), ("Lily saw a big dog", 1), ("Lily saw a big dog", 2)]
    for sample in samples:
        assert 1 <= sample["new_tokens"] == len(sample["token_ids"]) <= 15
        assert sample["tokens_per_second"] > 0
        ids = sample["token_ids"][:-1] if sample["ended_with_eos"] else sample["token_ids"]
        assert sample["text"] == get_tokenizer().decode(ids)


def test_json_reports_the_chosen_seed_and_that_seed_repeats_the_text(checkpoint, monkeypatch, capsys):
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--max_tokens", "15", "--json", "true")
    assert status == 0, err
    chosen = json.loads(out)
    assert isinstance(chosen["seed"], int)
    again = json.loads(run(monkeypatch, capsys, "--model", str(checkpoint), "--max_tokens", "15", "--json", "true",
                           "--seed", str(chosen["seed"]))[1])
    assert again["samples"][0]["token_ids"] == chosen["samples"][0]["token_ids"]


@pytest.fixture(scope="module")
def eager_checkpoint(tmp_path_factory) -> Path:
    """A model that greedily ends its story after a few tokens: perturbed weights, and <|endoftext|>'s
    embedding, which is also its output row, moved towards the final norm's scale."""
    torch.manual_seed(0)
    model = Model(preset("tiny", dropout=0.0))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        model.token_embedding.weight[EOT_ID] += 3.0 * model.final_norm.weight
    path = tmp_path_factory.mktemp("eager") / "model.pth"
    save_checkpoint(path, model_checkpoint(model, step=0))
    return path


def test_ignore_eos_keeps_going_and_shows_the_end_of_text(eager_checkpoint, monkeypatch, capsys):
    greedy = ["--model", str(eager_checkpoint), "--temperature", "0", "--max_tokens", "20"]
    status, out, err = run(monkeypatch, capsys, *greedy, "--json", "true")
    assert status == 0, err
    stopped = json.loads(out)["samples"][0]
    assert stopped["ended_with_eos"] and stopped["token_ids"][-1] == EOT_ID and len(stopped["token_ids"]) < 20
    assert "<|endoftext|>" not in stopped["text"]
    status, out, err = run(monkeypatch, capsys, *greedy, "--json", "true", "--ignore_eos", "true")
    kept_going = json.loads(out)["samples"][0]
    assert len(kept_going["token_ids"]) == 20 and not kept_going["ended_with_eos"]
    assert kept_going["token_ids"][:len(stopped["token_ids"])] == stopped["token_ids"]
    assert "<|endoftext|>" in kept_going["text"]
    assert kept_going["text"] == get_tokenizer().decode(kept_going["token_ids"])
    status, out, err = run(monkeypatch, capsys, *greedy, "--ignore_eos", "true")
    assert status == 0 and out.startswith("Once upon a time") and "<|endoftext|>" in out


def test_labels_several_samples_in_text_mode(checkpoint, monkeypatch, capsys):
    status, out, _ = run(monkeypatch, capsys, "--model", str(checkpoint), "--num_samples", "2", "--max_tokens", "5")
    assert status == 0
    assert "=== prompt 1/1, sample 1/2 ===\nOnce upon a time" in out and "sample 2/2" in out


def test_beam_search_and_windows_longer_than_the_block(checkpoint, monkeypatch, capsys):
    def ids(*args):
        status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--json", "true", *args)
        assert status == 0, err
        return json.loads(out)["samples"][0]["token_ids"]

    assert len(ids("--num_beams", "3", "--max_tokens", "10", "--ignore_eos", "true")) == 10
    assert ids("--num_beams", "1", "--temperature", "0", "--max_tokens", "10") == \
        ids("--num_beams", "1", "--temperature", "0", "--max_tokens", "10", "--seed", "99")
    # block_size is 128: 200 new tokens slide the window.
    assert len(ids("--max_tokens", "200", "--ignore_eos", "true", "--seed", "1")) == 200


@pytest.mark.parametrize("args, message", [
    (["--temperature", "2.5"], "--temperature"),
    (["--top_p", "0"], "--top_p"),
    (["--top_p", "1.5"], "--top_p"),
    (["--top_k", "-1"], "--top_k"),
    (["--max_tokens", "0"], "--max_tokens"),
    (["--prompt", ""], "prompt is empty"),
    (["--num_beams", "2", "--num_samples", "2"], "--num_samples"),
    (["--prompt_file", "no_such_prompts.txt"], "not found"),
    (["--temperature", "hot"], "expected float"),
    (["--batch_size", "0"], "--batch_size"),
])
def test_bad_arguments_are_one_line_errors(checkpoint, monkeypatch, capsys, args, message):
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), *args)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_missing_or_corrupt_model_is_a_one_line_error(checkpoint, tmp_path, monkeypatch, capsys):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(checkpoint.read_bytes()[:2000])
    for path, message in [(tmp_path / "missing.pth", "not found"), (corrupt, "could not be read"),
                          (tmp_path, "has no Hugging Face model config")]:  # a folder is read as a Hugging Face model
        status, _, err = run(monkeypatch, capsys, "--model", str(path))
        assert status == 2 and len(err.strip().splitlines()) == 1 and message in err


def test_batch_size_does_not_change_the_text(checkpoint, tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\nLily saw a big dog\nTom ran\n")

    def samples(*args):
        status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--prompt_file", str(prompts),
                               "--num_samples", "2", "--max_tokens", "12", "--seed", "5", *args)
        assert status == 0, err
        return out

    together = samples("--json", "true")
    one_at_a_time = samples("--json", "true", "--batch_size", "1")
    documents = [json.loads(out)["samples"] for out in (together, one_at_a_time, samples("--json", "true",
                                                                                        "--batch_size", "4"))]
    ids = [[sample["token_ids"] for sample in document] for document in documents]
    assert ids[0] == ids[1] == ids[2] and len({tuple(i) for i in ids[0]}) == 6  # six different samples
    # Sample k is seeded sequence_seed(5, k): the first keeps the run's seed, as a lone sample does.
    alone = json.loads(run(monkeypatch, capsys, "--model", str(checkpoint), "--max_tokens", "12", "--seed", "5",
                           "--json", "true")[1])["samples"][0]["token_ids"]
    assert alone == ids[0][0]
    text = samples("--batch_size", "3")
    assert text == samples()
    for document in documents[0]:
        assert f"=== prompt {document['prompt_number']}/3, sample {document['sample']}/2 ===\n" \
               f"{document['prompt']}{document['text']}\n" in text


def test_a_batch_whose_cache_cannot_fit_is_refused(checkpoint, monkeypatch, capsys):
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--batch_size", str(10**9))
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--batch_size" in err and "GiB" in err


def test_output_writes_the_json_document_only_when_generation_succeeds(checkpoint, tmp_path, monkeypatch, capsys):
    samples = tmp_path / "out" / "samples.json"
    status, out, err = run(monkeypatch, capsys, "--model", str(tmp_path / "missing.pth"), "--output", str(samples))
    assert status == 2 and err.startswith("error: ") and not samples.exists() and not samples.parent.exists()
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--max_tokens", "5", "--seed", "2",
                           "--output", str(samples))
    assert status == 0 and out == "" and f"wrote {samples}" in err
    document = json.loads(samples.read_text())
    assert document["seed"] == 2 and len(document["samples"]) == 1
    assert 1 <= document["samples"][0]["new_tokens"] <= 5


def test_a_hugging_face_folder_generates_like_its_checkpoint(checkpoint, tmp_path, monkeypatch, capsys):
    from tinystories.checkpoint import load_model
    from tinystories.interop.hf_folders import save_hf

    save_hf(load_model(checkpoint)[0], tmp_path / "hf")
    documents = []
    for model in (str(checkpoint), str(tmp_path / "hf")):
        for beams in ("1", "3"):
            status, out, err = run(monkeypatch, capsys, "--model", model, "--json", "--temperature", "0",
                                   "--max_tokens", "10", "--num_beams", beams, "--prompt", "Lily saw a")
            assert status == 0, err
            documents.append(json.loads(out))
    ours_greedy, ours_beams, theirs_greedy, theirs_beams = [d["samples"][0] for d in documents]
    assert theirs_greedy["token_ids"] == ours_greedy["token_ids"] and len(theirs_greedy["token_ids"]) == 10
    assert theirs_beams["token_ids"] == ours_beams["token_ids"]
    assert theirs_greedy["text"] == ours_greedy["text"] and documents[2]["step"] is None
    status, out, err = run(monkeypatch, capsys, "--model", str(tmp_path / "hf"), "--max_tokens", "5", "--seed", "1")
    assert status == 0 and out.startswith("Once upon a time") and "tokens/s" in err


def overflowing_checkpoint(folder: Path) -> Path:
    """Finite weights whose logits overflow to infinity (the final norm's scale), so sampling sees NaN."""
    model = Model(preset("tiny"))
    with torch.no_grad():
        model.final_norm.weight.fill_(3e38)
    path = folder / "overflowing.pth"
    save_checkpoint(path, model_checkpoint(model))
    return path


def nan_checkpoint(folder: Path) -> Path:
    model = Model(preset("tiny"))
    with torch.no_grad():
        model.blocks[1].attn.qkv.weight.fill_(float("nan"))
    path = folder / "nan.pth"
    save_checkpoint(path, model_checkpoint(model))
    return path


@pytest.mark.parametrize("extra", [[], ["--num_beams", "3"], ["--temperature", "0"]])
def test_a_model_with_non_finite_outputs_is_a_one_line_error(tmp_path, monkeypatch, capsys, extra):
    """Used to die with a traceback inside torch.multinomial."""
    for path in (overflowing_checkpoint(tmp_path), nan_checkpoint(tmp_path)):
        status, out, err = run(monkeypatch, capsys, "--model", str(path), "--max_tokens", "5", "--json", *extra)
        assert status == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "non-finite" in err


def test_more_beams_than_memory_holds_is_refused_before_decoding(checkpoint, monkeypatch, capsys):
    """--num_beams 100000 once allocated ~24 GB until the kernel killed it; 10**7 beams fit no machine."""
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--num_beams", "10000000")
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: --num_beams 10000000 needs about ") and "; use at most " in err


@pytest.mark.parametrize("content, message", [
    (None, "is a folder, not a file"),
    (b"Once upon a time\n\xff\xfe\n", "is not UTF-8 text (byte 0xff at offset 17)"),
    (b"\n  \n", "holds no prompts"),
])
def test_unusable_prompt_files_are_one_line_errors(checkpoint, tmp_path, monkeypatch, capsys, content, message):
    path = tmp_path / "prompts.txt"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--prompt_file", str(path))
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_an_unusable_output_is_refused_before_sampling(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate_script, "load_subject", lambda *args, **kwargs: pytest.fail("loaded anyway"))
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--output", str(tmp_path))
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --output {tmp_path} is a folder")


def test_float16_precision_decodes_the_rounded_models_greedy_tokens(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    model = Model(preset("tiny", dropout=0.0))
    with torch.no_grad():  # far from initialisation, so that attention and every layer decide the tokens
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    save_checkpoint(tmp_path / "model.pth", model_checkpoint(model, step=0))
    status, out, err = run(monkeypatch, capsys, "--model", str(tmp_path / "model.pth"), "--precision", "float16",
                           "--temperature", "0", "--max_tokens", "40", "--ignore_eos", "true", "--json", "true")
    assert status == 0, err
    tokens = json.loads(out)["samples"][0]["token_ids"]
    rounded = rounded_copy(model.eval(), "float16")
    ids = get_tokenizer().encode_ordinary("Once upon a time")
    with torch.no_grad():
        for _ in range(40):  # full forwards of the float32 model holding the float16-rounded weights
            ids.append(int(rounded(torch.tensor([ids]))[0][0, -1].argmax()))
    assert tokens == ids[-40:]


def test_without_a_compiler_float16_is_one_line_and_float32_still_decodes(checkpoint, tmp_path):
    environment = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": str(tmp_path / "no-such-compiler")}
    command = [sys.executable, "generate.py", "--model", str(checkpoint), "--max_tokens", "8", "--seed", "1"]
    float16 = subprocess.run(command + ["--precision", "float16"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, env=environment)
    assert float16.returncode == 2 and float16.stdout == ""
    lines = float16.stderr.splitlines()
    assert lines[0] == "compiling this project's CPU kernel (once; about 10 s)" and len(lines) == 2
    failure = (r"could not build this project's CPU kernel \([^()]*no-such-compiler: not found\); it needs a C\+\+ "
               r"compiler with OpenMP \(c\+\+, or set CXX\) and ninja \(pip install -r requirements.txt\)")
    assert re.fullmatch("error: " + failure, lines[1]), lines[1]
    float32 = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)
    assert float32.returncode == 0 and len(float32.stdout) > len("Once upon a time\n")
    lines = float32.stderr.splitlines()
    assert re.fullmatch("note: decoding without this project's CPU kernel, more slowly: " + failure, lines[1]), lines


@pytest.fixture(scope="module")
def built_kernel(tmp_path_factory, checkpoint) -> Path:
    """A TORCH_EXTENSIONS_DIR in which generate.py has built the CPU kernel; tests damage copies of it."""
    root = tmp_path_factory.mktemp("extensions")
    result = subprocess.run([sys.executable, "generate.py", "--model", str(checkpoint), "--max_tokens", "2",
                             "--precision", "float16"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TORCH_EXTENSIONS_DIR": str(root)})
    assert result.returncode == 0, result.stderr
    return root


def kernel_library(root: Path) -> Path:
    [library] = root.glob("tinystories_kernels-*/tinystories_kernels.so")
    return library


def copy_of_the_build(built_kernel: Path, tmp_path: Path) -> Path:
    root = tmp_path / "extensions"
    shutil.copytree(built_kernel, root)
    return root


def generate_in_child(checkpoint: Path, root: Path, *args: str, **environment: str) -> subprocess.CompletedProcess:
    """generate.py in a child process (a damaged library loaded would kill it) with its kernel built in `root`."""
    command = [sys.executable, "generate.py", "--model", str(checkpoint), "--max_tokens", "4", "--seed", "1", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TORCH_EXTENSIONS_DIR": str(root), **environment})


DAMAGES = {
    "truncated": lambda library: library[:len(library) // 3],  # mapping it died of SIGBUS, without a word
    "garbage": lambda library: random.Random(0).randbytes(len(library)),
    "empty": lambda library: b"",
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_kernel_library_is_rebuilt_before_it_is_loaded(built_kernel, checkpoint, tmp_path, damage):
    root = copy_of_the_build(built_kernel, tmp_path)
    library = kernel_library(root)
    intact = library.read_bytes()
    for precision in ("float16", "float32"):  # float32 decodes with the kernel too
        library.write_bytes(DAMAGES[damage](intact))
        result = generate_in_child(checkpoint, root, "--precision", precision)
        assert result.returncode == 0, (result.returncode, result.stderr)  # not -7 (SIGBUS), not 2
        assert result.stdout.startswith("Once upon a time") and len(result.stdout) > len("Once upon a time\n")
        lines = result.stderr.splitlines()
        assert lines[0] == (f"the CPU kernel's library in {library.parent} is damaged (its sha256 is not its "
                            "build's); building it again"), result.stderr
        assert len(lines) == 2 and lines[1].endswith(" tokens/s]"), result.stderr  # no note: decoded by the kernel
        rebuilt = library.read_bytes()
        assert rebuilt and (library.parent / "tinystories_kernels.so.sha256").read_text() == \
            f"{hashlib.sha256(rebuilt).hexdigest()}  tinystories_kernels.so\n"
    again = generate_in_child(checkpoint, root, "--precision", "float16")  # the rebuilt library passes its check
    assert again.returncode == 0 and len(again.stderr.splitlines()) == 1, again.stderr


def test_a_damaged_kernel_that_cannot_be_rebuilt_names_the_folder_to_delete(built_kernel, checkpoint, tmp_path):
    no_compiler = str(tmp_path / "no-such-compiler")
    for precision, status in (("float16", 2), ("float32", 0)):
        root = copy_of_the_build(built_kernel, tmp_path / precision)
        library = kernel_library(root)
        library.write_bytes(DAMAGES["truncated"](library.read_bytes()))
        result = generate_in_child(checkpoint, root, "--precision", precision, CXX=no_compiler)
        assert result.returncode == status, (result.returncode, result.stderr)
        failure = (rf"could not rebuild this project's damaged CPU kernel \([^()]*no-such-compiler: not found\); "
                   rf"delete the folder {re.escape(str(library.parent))} and run again")
        lines = result.stderr.splitlines()
        assert lines[0].startswith(f"the CPU kernel's library in {library.parent} is damaged"), result.stderr
        if precision == "float16":
            assert result.stdout == "" and len(lines) == 2 and re.fullmatch("error: " + failure, lines[1]), lines
        else:
            assert re.fullmatch("note: decoding without this project's CPU kernel, more slowly: " + failure,
                                lines[1]), lines
            assert result.stdout.startswith("Once upon a time")


# torch's CUDA build on a machine without a GPU, as far as torch.utils.cpp_extension looks at its import (this
# suite's CPU build of torch never logs it): it logs "No CUDA runtime is found, using CUDA_HOME=...".
CUDA_BUILD_WITHOUT_A_GPU = """
import runpy, sys, torch
torch.cuda._is_compiled = lambda: True
torch.version.cuda = "12.4"
torch.cuda.is_available = lambda: False
if sys.argv[1] == "import":
    import torch.utils.cpp_extension
else:
    sys.argv = sys.argv[1:]
    runpy.run_path("generate.py", run_name="__main__")
"""


def test_loading_the_kernel_under_torchs_cuda_build_without_a_gpu_prints_nothing_of_torchs(
        built_kernel, checkpoint, tmp_path):
    cuda_home = tmp_path / "cuda"
    cuda_home.mkdir()
    environment = {**os.environ, "CUDA_HOME": str(cuda_home), "TORCH_EXTENSIONS_DIR": str(tmp_path / "none")}
    plain = subprocess.run([sys.executable, "-c", CUDA_BUILD_WITHOUT_A_GPU, "import"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env=environment)
    assert f"No CUDA runtime is found, using CUDA_HOME='{cuda_home}'" in plain.stderr  # what the README's install saw
    root = copy_of_the_build(built_kernel, tmp_path)
    environment["TORCH_EXTENSIONS_DIR"] = str(root)
    for built in (False, True):  # torch builds (links) the library, then loads it as built
        if not built:
            kernel_library(root).unlink()
        result = subprocess.run([sys.executable, "-c", CUDA_BUILD_WITHOUT_A_GPU, "generate.py", "--model",
                                 str(checkpoint), "--max_tokens", "4", "--seed", "1", "--precision", "float16"],
                                cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)
        assert result.returncode == 0, result.stderr
        lines = result.stderr.splitlines()
        assert lines[:-1] == ([] if built else ["compiling this project's CPU kernel (once; about 10 s)"]), lines
        assert len(lines) >= 1 and re.fullmatch(r"\[4 tokens in [0-9.]+ s, [0-9.]+ tokens/s\]", lines[-1]), lines


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(checkpoint, tmp_path, monkeypatch, capsys):
    model = tmp_path / "model.pth"
    model.write_bytes(checkpoint.read_bytes())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "model-link.pth").symlink_to(model)
    (tmp_path / "prompts-link.txt").symlink_to(prompts)
    os.link(model, tmp_path / "model-hard-link.pth")
    monkeypatch.setattr(generate_script, "load_subject", lambda *args, **kwargs: pytest.fail("loaded anyway"))
    originals = {path: path.read_bytes() for path in (model, prompts)}
    up = tmp_path / "sub" / ".."
    for output, given in [(model, model), (prompts, prompts), (up / "model.pth", model), (up / "prompts.txt", prompts),
                          (tmp_path / "model-link.pth", model), (tmp_path / "prompts-link.txt", prompts),
                          (tmp_path / "model-hard-link.pth", model)]:
        status, out, err = run(monkeypatch, capsys, "--model", str(model), "--prompt_file", str(prompts),
                               "--max_tokens", "2", "--output", str(output))
        assert status == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert err == (f"error: --output {output} is the input {given}, which writing it would destroy; "
                       "choose another path\n")
        assert {path: path.read_bytes() for path in originals} == originals


def test_an_output_inside_a_hugging_face_model_folder_is_refused(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(generate_script, "load_subject", lambda *args, **kwargs: pytest.fail("loaded anyway"))
    status, out, err = run(monkeypatch, capsys, "--model", str(folder), "--output", str(folder / "config.json"))
    assert status == 2 and out == "" and (folder / "config.json").read_text() == "{}"
    assert err.startswith(f"error: --output {folder / 'config.json'} is inside the input {folder}, ")
