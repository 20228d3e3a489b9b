"""prepare.py as users run it: --out_dir, the cache message, and one-line errors with exit status 2."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_prepare(*arguments, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "prepare.py"), *arguments], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_synthetic_quick_start_and_cache_hit(tmp_path):
    out_dir = tmp_path / "synthetic"
    first = run_prepare("--dataset", "synthetic", "--max_stories", "200", "--out_dir", str(out_dir))
    assert first.returncode == 0, first.stderr
    assert {path.name for path in out_dir.iterdir()} == {"train.bin", "validation.bin", "test.bin", "meta.json"}
    assert f"wrote {out_dir}" in first.stdout
    second = run_prepare("--dataset", "synthetic", "--max_stories", "200", "--data_dir", str(out_dir))
    assert second.returncode == 0 and "up to date" in second.stdout


def visible_lines(stderr):
    """What stays on the terminal: the progress bar erases itself with carriage returns."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("tokenizing")]


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a story"}\n{"body": "no text field"}\n')
    result = run_prepare("--data_path", str(bad), "--out_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    [line] = visible_lines(result.stderr)
    assert line.startswith("error: ") and "bad.jsonl:2" in line
    flag = run_prepare("--val_fraction", "2")
    [line] = visible_lines(flag.stderr)
    assert flag.returncode == 2 and "--val_fraction" in line


def test_unusable_out_dir_is_one_line_before_any_work(tmp_path, read_only_folder):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for out_dir, message in [(a_file, "is a file, not a folder"), (read_only_folder, "cannot write in"),
                             (read_only_folder / "new", "cannot create")]:
        result = run_prepare("--dataset", "synthetic", "--max_stories", "50", "--out_dir", str(out_dir))
        assert result.returncode == 2, result.stderr
        [line] = visible_lines(result.stderr)
        assert line.startswith("error: ") and message in line and "Traceback" not in result.stderr
    assert a_file.read_text() == "not a folder"
