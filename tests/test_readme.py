"""The README is the user's manual and docs/*.md its topic pages: the README's quick start is one shipped config,
the README is short and opens with its contents, every relative link leads somewhere, and the Python blocks of
every page run as written (in a fresh folder standing in for a clone after the quick start), except those
marked as needing the Hub, a GPU, a server or files the user brings."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.model import Model, preset
from tinystories import quickstart
from tinystories.checkpoint import load_model, model_checkpoint, save_checkpoint
from tinystories.data import hub

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# The manual: the README, then the topic pages, in a stable order.
PAGES = {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
         for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
NEEDS = "# needs "  # the first line of a block that needs the Hub, a GPU, a server or files the user brings
README_MAX_LINES = 350
# The quick start as the README spelled it out before it became a config file.
QUICKSTART_FLAGS = ["--dataset", "synthetic", "--preset", "tiny", "--max_steps", "300", "--batch_size", "16",
                    "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--min_lr", "1e-4",
                    "--warmup_steps", "30", "--eval_interval", "50", "--eval_iters", "20",
                    "--out_dir", "results/quickstart"]


def code_blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def manual_blocks(language: str) -> list[str]:
    """The blocks of the README and of every docs page, in that order."""
    return [block for text in PAGES.values() for block in code_blocks(language, text)]


def prose(text: str) -> str:
    """The text without its fenced blocks, whose `# ...` lines are comments, not headings."""
    return re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose(text), flags=re.MULTILINE):
        slug = anchor(heading)
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def link_targets(text: str) -> list[str]:
    """The targets of the text's Markdown links and images, outside code."""
    text = re.sub(r"`[^`\n]*`", "", prose(text))
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)", text)


def first_screen() -> str:
    return README.split("\n## ", 1)[0]


def test_the_quick_start_config_is_the_readmes_cpu_run():
    from train import parse_arguments

    assert parse_arguments(["--config", quickstart.CONFIG]) == parse_arguments(QUICKSTART_FLAGS)
    train_config, data_config = parse_arguments(["--config", quickstart.CONFIG])
    assert Path(train_config.out_dir) / "checkpoints" / "best_model.pth" == Path(quickstart.MODEL)
    assert Path("data") / data_config.dataset == Path(quickstart.DATA_DIR)


def test_first_screen_trains_generates_and_evaluates_with_the_quick_start():
    [commands] = code_blocks("bash")[:1]
    assert commands in first_screen()
    lines = [line.split("#")[0].strip() for line in commands.splitlines()]
    assert lines[1] == quickstart.COMMAND
    assert lines[2].startswith(f"python generate.py --model {quickstart.MODEL}")
    assert lines[3].startswith(f"python evaluate.py --model {quickstart.MODEL} --data_dir {quickstart.DATA_DIR}")


def test_offline_hints_name_the_quick_start():
    assert quickstart.COMMAND in hub.OFFLINE_HINT


def test_readme_is_short_and_opens_with_contents_that_lead_to_its_sections():
    lines = README.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    first_section = README.split("\n## ", 2)[1]
    assert first_section.startswith("Contents\n"), "the first section after the quick start is ## Contents"
    listed = re.findall(r"\]\(#([^)]+)\)", first_section)
    headings = anchors(README)
    assert listed and not [target for target in listed if target not in headings]
    sections = {anchor(heading) for heading in re.findall(r"^## +(.+?) *$", prose(README), flags=re.MULTILINE)}
    assert sections - {"contents"} <= set(listed), "every section of the README is in its contents"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in link_targets(README)}
    assert [name for name in PAGES if (ROOT / name).resolve() not in linked] == ["README.md"]


def test_every_relative_link_points_to_an_existing_file():
    """...and, into a Markdown page (or within one), to an existing heading."""
    broken = []
    for name, text in PAGES.items():
        page = ROOT / name
        for target in link_targets(text):
            if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{name}: {target} (no such file)")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_commands_name_files_that_exist():
    """Scripts, configs and modules that the manual's commands name are where the commands say."""
    for line in (line for block in manual_blocks("bash") for line in block.splitlines()):
        command = line.split(" #")[0]
        for path in re.findall(r"(?:^|\s)((?:[\w.-]+/)*[\w.-]+\.(?:py|sh|yaml))(?=\s|$)", command):
            assert (ROOT / path).exists(), line


def test_examples_write_under_results_or_data():
    """No command of the manual leaves files in the repository root (outside the ignored results/ and data/)."""
    for line in (line for block in manual_blocks("bash") for line in block.splitlines()):
        command = line.split(" #")[0]
        for target in re.findall(r"--(?:out|output|out_dir|json) (\S+)|> (\S+)", command):
            path = next(part for part in target if part)
            assert path.split("/")[0] in ("results", "data"), line


@pytest.fixture(scope="module")
def clone_after_quick_start(tmp_path_factory) -> Path:
    """A folder holding what the quick start leaves (a tiny model at its path) and what the manual's
    export commands make from it, exactly as written (a command the README and a page both show, once)."""
    folder = tmp_path_factory.mktemp("clone")
    torch.manual_seed(0)
    save_checkpoint(folder / quickstart.MODEL, model_checkpoint(Model(preset("tiny", dropout=0.0)), step=300))
    exports = {tuple(line.split("#")[0].split()[2:]): line for block in manual_blocks("bash")
               if not block.startswith(NEEDS) for line in block.splitlines() if line.startswith("python export.py")}
    assert len(exports) == 5  # three Hugging Face folders, two GGUF files
    for arguments in exports:
        result = subprocess.run([sys.executable, str(ROOT / "export.py"), *arguments], cwd=folder,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    return folder


def test_python_blocks_run_as_written(clone_after_quick_start):
    blocks = manual_blocks("python")
    runnable = [block for block in blocks if not block.startswith(NEEDS)]
    # The seed's train(...) needs the Hub; the openai client a server.
    assert len(runnable) >= 3 and len(blocks) - len(runnable) == 2
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    outputs = []
    for block in runnable:
        result = subprocess.run([sys.executable, "-c", block], cwd=clone_after_quick_start, capture_output=True,
                                text=True, timeout=300, env=env)
        assert result.returncode == 0, f"{block}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout)
    # The model snippet: eval mode makes the full and the chunked loss the same number, about ln(50257).
    model_output = next(output for block, output in zip(runnable, outputs) if "Model(Config())" in block)
    full, chunked = (float(value) for value in model_output.split()[-2:])
    assert full == pytest.approx(chunked, abs=1e-3) and abs(full - 10.82) < 0.3
    # The Hugging Face snippet continues the prompt with the exported model.
    assert any(output.startswith("Once upon a time") for output in outputs)
    model, _ = load_model(clone_after_quick_start / "results" / "model.pth")  # the round trip's checkpoint
    assert model.config.n_layer == preset("tiny").n_layer


def test_plain_train_without_the_hub_names_the_quick_start_and_leaves_no_folders(tmp_path):
    """A new user's first `python train.py` with no Hub: one line that names the quick start, nothing written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--device", "cpu"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    # Off a terminal, the tokenizing bar that was starting stays in the stream; on one, it is cleared.
    [error] = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("tokenizing")]
    assert error.startswith("error: the Hugging Face Hub is unreachable") and quickstart.COMMAND in error
    assert sorted(path.name for path in tmp_path.iterdir()) == []
