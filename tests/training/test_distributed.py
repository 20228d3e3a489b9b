"""tinystories/training/distributed.py and errors.run_main under torchrun: a user error is one line, from rank 0, and
every process exits 2 without a traceback of its own."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def torchrun(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train.py"), "--preset", "tiny", "--device", "cpu", *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def exit_statuses(torchrun_stderr: str) -> list[int]:
    """Each failed process's exit status, from the summary torchrun prints when its processes fail."""
    return [int(status) for status in re.findall(r"^\s*exitcode\s*:\s*(-?\d+) \(pid", torchrun_stderr, re.MULTILINE)]


def test_a_user_error_on_rank_0_is_one_line_and_every_rank_exits_2(tmp_path):
    result = torchrun(["--data_path", "/nonexistent/stories.jsonl"], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data file /nonexistent/stories.jsonl not found"], result.stderr
    assert exit_statuses(result.stderr) == [2, 2], result.stderr  # torchrun lists both processes
    assert "[rank" not in result.stderr and "gloo" not in result.stderr, result.stderr  # no process's traceback
    assert result.returncode != 0
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no empty results/ or data/ left


def test_a_user_error_on_every_rank_is_reported_once(tmp_path):
    result = torchrun(["--dataset", "synthetic", "--max_stories", "50", "--gradient_accumulation_steps", "3",
                       "--data_dir", str(tmp_path / "data")], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "divisible by the number of processes (2)" in errors[0], result.stderr
    assert exit_statuses(result.stderr) == [2, 2], result.stderr
    assert "[rank" not in result.stderr, result.stderr
