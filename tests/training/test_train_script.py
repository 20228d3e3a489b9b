"""train.py end to end: exact resume after SIGKILL, SIGTERM, DDP equivalence, flags, one-line user errors, and
the output folder (checked before work, locked against a second run, cleared of a killed save's temporaries)."""
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.scripts import refusal

ROOT = Path(__file__).resolve().parents[2]
TINY_RUN = ["--preset", "tiny", "--block_size", "32", "--batch_size", "2", "--gradient_accumulation_steps", "2",
            "--learning_rate", "2e-3", "--min_lr", "2e-4", "--warmup_steps", "2", "--eval_iters", "2",
            "--device", "cpu", "--compile", "false", "--log_interval", "1"]
# The synthetic corpus as conftest's synthetic_data_dir prepares it: the same inputs reuse its token files.
SYNTHETIC = ["--dataset", "synthetic", "--max_stories", "400"]


def run_train(arguments, data_dir, out_dir, **popen):
    command = [sys.executable, "train.py", *TINY_RUN, "--data_dir", str(data_dir), *SYNTHETIC,
               "--out_dir", str(out_dir), *arguments]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def refused_here(monkeypatch, capsys, arguments, data_dir, out_dir) -> str:
    """train.py's main run in this process (a refusal needs no process of its own, and each saves a second of
    importing torch): asserts exit status 2 with one line on stderr, and returns that line."""
    import train as train_script

    return refusal(monkeypatch, capsys, train_script, *TINY_RUN, "--data_dir", str(data_dir), *SYNTHETIC,
                   "--out_dir", str(out_dir), *arguments)


def wait_until_training(process) -> str:
    """Read the run's (unbuffered) output up to the line that opens its training loop; returns what was read."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("model: "):
            return "".join(lines)
    raise AssertionError("the run ended before training: " + "".join(lines) + process.stderr.read())


def final_weights(out_dir):
    return torch.load(Path(out_dir) / "checkpoints" / "checkpoint.pth", weights_only=True)["model"]


def files_under(*folders: Path) -> dict[Path, bytes]:
    """Every file under `folders`, with its bytes."""
    return {path: path.read_bytes() for folder in folders for path in sorted(folder.rglob("*")) if path.is_file()}


def test_sigkill_then_resume_is_bitwise_identical(synthetic_data_dir, tmp_path):
    arguments = ["--max_steps", "30", "--save_interval", "10", "--eval_interval", "15"]
    uninterrupted = run_train(arguments, synthetic_data_dir, tmp_path / "whole")
    interrupted = run_train(arguments, synthetic_data_dir, tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "checkpoints" / "checkpoint.pth"
    while not checkpoint.exists() and interrupted.poll() is None:
        time.sleep(0.005)
    interrupted.kill()
    interrupted.wait()
    killed_at = torch.load(checkpoint, weights_only=True)["step"]
    assert killed_at < 30, "the run finished before it could be killed"
    resumed = run_train(arguments, synthetic_data_dir, tmp_path / "killed")
    resumed_out, resumed_err = resumed.communicate()
    assert resumed.returncode == 0, resumed_err
    assert f"resuming from {checkpoint} at step {killed_at}" in resumed_out
    assert uninterrupted.wait() == 0
    whole, continued = final_weights(tmp_path / "whole"), final_weights(tmp_path / "killed")
    assert whole.keys() == continued.keys()
    for name in whole:
        assert torch.equal(whole[name], continued[name]), name


def test_sigterm_saves_a_checkpoint_and_exits(synthetic_data_dir, tmp_path):
    process = run_train(["--max_steps", "100000", "--save_interval", "100000", "--eval_interval", "100000"],
                        synthetic_data_dir, tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    started = wait_until_training(process)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    checkpoint = torch.load(tmp_path / "checkpoints" / "checkpoint.pth", weights_only=True)
    assert 0 < checkpoint["step"] < 100000
    assert f"saved {tmp_path / 'checkpoints' / 'checkpoint.pth'}" in started + stdout


def timed_lines(stream) -> queue.Queue:
    """The stream's lines as they come, each with the time it was read."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put((time.monotonic(), line.rstrip("\n")))
        lines.put((time.monotonic(), None))

    threading.Thread(target=read, daemon=True).start()
    return lines


def rest_of(lines: queue.Queue) -> str:
    """What the stream holds up to its end."""
    text = []
    while (line := lines.get(timeout=30)[1]) is not None:
        text.append(line)
    return "\n".join(text)


def next_line_starting(lines: queue.Queue, prefix: str, timeout: float) -> tuple[float, str]:
    deadline = time.monotonic() + timeout
    while True:
        at, line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line is not None, f"the run ended before a line starting {prefix!r}"
        if line.startswith(prefix):
            return at, line


def test_a_long_step_is_estimated_and_ctrl_c_answers_at_once_then_stops_now(synthetic_data_dir, tmp_path):
    from tinystories.checkpoint import load_model
    from tinystories.training.stop_signals import STOPPING_MESSAGE

    checkpoint = tmp_path / "checkpoints" / "checkpoint.pth"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # 300 micro-batches per optimizer step: a step is long even for the tiny model. Step 1 is saved, then step 2
    # of the resumed run is interrupted.
    long_steps = ["--gradient_accumulation_steps", "300", "--eval_interval", "1000"]
    first = run_train([*long_steps, "--max_steps", "1"], synthetic_data_dir, tmp_path, env=env)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    process = run_train([*long_steps, "--max_steps", "1000"], synthetic_data_dir, tmp_path, env=env)
    bar = timed_lines(process.stderr)  # the progress bar, drained so that the run never waits on a full pipe
    lines = timed_lines(process.stdout)
    try:
        _, size = next_line_starting(lines, "each optimizer step: ", timeout=300)
        assert size == "each optimizer step: 600 sequences of 32 tokens = 19,200 tokens (300 micro-batch(es) of 2)"
        _, estimate = next_line_starting(lines, "estimate: ", timeout=120)
        assert "per optimizer step and" in estimate and "for the 999 step(s) to go" in estimate
        assert "GB of memory" in estimate
        first_signal = time.monotonic()
        process.send_signal(signal.SIGINT)
        acknowledged, _ = next_line_starting(lines, STOPPING_MESSAGE, timeout=10)
        assert acknowledged - first_signal < 2
        second_signal = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stopped = next_line_starting(lines, "stopped at once by a second signal", timeout=10)
        assert process.wait(timeout=10) == 128 + signal.SIGINT
        assert time.monotonic() - second_signal < 10
    finally:
        process.kill()
    assert f"after step 1; {checkpoint} holds step 1, as it was saved" in stopped
    # The bar moved within the unfinished step: it counts micro-batches.
    assert "training (micro-batch " in rest_of(bar)
    assert torch.load(checkpoint, weights_only=True)["step"] == 1
    model, _ = load_model(checkpoint)
    assert model.config.n_layer == 2
    assert not list(checkpoint.parent.glob(".*.tmp"))


# Loaded by each torchrun process (as sitecustomize, from PYTHONPATH): records the files that the process creates,
# writes, renames, removes or makes folders of under AUDITED_FOLDERS, in AUDIT_RECORD.rank<RANK>.
WRITE_AUDIT = """
import os, sys
if "RANK" in os.environ:
    _folders = tuple(os.path.join(folder, "") for folder in os.environ["AUDITED_FOLDERS"].split(os.pathsep))
    _record = os.open(os.environ["AUDIT_RECORD"] + ".rank" + os.environ["RANK"],
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    _writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _events = ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "os.link", "os.symlink",
               "shutil.rmtree")

    def _audit(event, args):
        if event == "open" and not (isinstance(args[2], int) and args[2] & _writing) or event not in ("open", *_events):
            return
        for path in args:
            if isinstance(path, (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(path))
                if os.path.join(path, "").startswith(_folders):
                    os.write(_record, f"{event} {path}\\n".encode())

    sys.addaudithook(_audit)
"""


def written_files(out_dir: Path) -> list[str]:
    """What a run left under out_dir, its timestamped log's name generalised."""
    names = []
    for path in sorted(out_dir.rglob("*")):
        name = path.relative_to(out_dir).as_posix()
        names.append(re.sub(r"^logs/training_\d{8}_\d{6}\.log$", "logs/training_*.log", name))
    return names


def test_a_run_stopped_at_once_before_its_first_checkpoint_leaves_no_folders(synthetic_data_dir, tmp_path):
    out_dir = tmp_path / "run"
    process = run_train(["--gradient_accumulation_steps", "300", "--max_steps", "5"], synthetic_data_dir, out_dir,
                        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    bar = timed_lines(process.stderr)
    lines = timed_lines(process.stdout)
    try:
        next_line_starting(lines, "estimate: ", timeout=300)
        assert (out_dir / "checkpoints").is_dir()  # made at the start, before any work
        process.send_signal(signal.SIGINT)
        next_line_starting(lines, "stopping after this step", timeout=10)
        process.send_signal(signal.SIGINT)
        _, stopped = next_line_starting(lines, "stopped at once by a second signal", timeout=10)
        assert process.wait(timeout=10) == 128 + signal.SIGINT
    finally:
        process.kill()
    rest_of(bar)
    assert stopped.endswith("this run saved no checkpoint yet.")
    assert not out_dir.exists()  # its empty checkpoints/ and logs/ went with it


def test_two_gloo_ranks_follow_the_single_process_trajectory(synthetic_data_dir, tmp_path):
    arguments = ["--max_steps", "6", "--eval_interval", "3", "--dropout", "0.0", "--batch_size", "2",
                 "--gradient_accumulation_steps", "4"]
    single = run_train(arguments, synthetic_data_dir, tmp_path / "one")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
               *TINY_RUN, "--data_dir", str(synthetic_data_dir), *SYNTHETIC,
               "--out_dir", str(tmp_path / "two"), *arguments]
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(WRITE_AUDIT)
    python_path = [str(audit), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(python_path),
           "AUDITED_FOLDERS": os.pathsep.join([str(tmp_path / "two"), str(synthetic_data_dir)]),
           "AUDIT_RECORD": str(audit / "writes")}
    double = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("token files are up to date for these inputs; reusing them") == 1  # rank 0 says it
    assert single.wait() == 0, single.stderr.read()[-3000:]
    one, two = (torch.load(tmp_path / name / "checkpoints" / "checkpoint.pth", weights_only=True)
                for name in ("one", "two"))
    history_one, history_two = one["training_state"]["history"], two["training_state"]["history"]
    # zip stops at the shorter history: an empty or short one must fail here, not pass unchecked.
    assert [entry["step"] for entry in history_one] == [entry["step"] for entry in history_two] == [3, 6]
    for entry_one, entry_two in zip(history_one, history_two):
        for key in ("train_loss", "val_loss"):
            assert entry_two[key] == pytest.approx(entry_one[key], rel=1e-5), key
    assert len(one["rng"]) == 1 and len(two["rng"]) == 2

    # Only rank 0 writes: the two processes leave the files one leaves, one log recording each evaluation once,
    # and rank 1 wrote nothing at all (in the output folder or the data folder), while rank 0's writes were seen.
    assert written_files(tmp_path / "two") == written_files(tmp_path / "one") == [
        "checkpoints", "checkpoints/best_model.pth", "checkpoints/checkpoint.pth", "logs", "logs/loss_curve.png",
        "logs/training_*.log"]
    log = next((tmp_path / "two" / "logs").glob("training_*.log"))
    assert [entry["step"] for entry in json.loads(log.read_text())["history"]] == [3, 6]
    assert f"os.rename {tmp_path / 'two' / 'checkpoints' / 'checkpoint.pth'}" in (audit / "writes.rank0").read_text()
    assert (audit / "writes.rank1").read_text() == ""

    # The two processes' checkpoint does not resume in one process.
    before = files_under(tmp_path / "two")
    stderr = one_line_error(run_train([*arguments, "--max_steps", "8"], synthetic_data_dir, tmp_path / "two"))
    assert ("checkpoint.pth was trained with batch size and processes [2, 2]; resuming exactly needs the same (2, 1)"
            in stderr)
    assert files_under(tmp_path / "two") == before


def test_flags_override_config_file_which_overrides_defaults(tmp_path):
    from train import parse_arguments

    config_file = tmp_path / "run.yaml"
    config_file.write_text("batch_size: 8\nlearning_rate: 0.001\ndataset: synthetic\nmax_stories: 50\n")
    train_config, data_config = parse_arguments(["--config", str(config_file), "--batch_size", "2", "--seed", "5"])
    assert (train_config.batch_size, train_config.learning_rate, train_config.seed) == (2, 0.001, 5)
    assert (train_config.epochs, train_config.gradient_accumulation_steps) == (20, 32)
    assert (data_config.dataset, data_config.max_stories, data_config.seed) == ("synthetic", 50, 1337)
    config_file.write_text("split_seed: 3\nseed: 4\n")
    train_config, data_config = parse_arguments(["--config", str(config_file)])
    assert (train_config.seed, data_config.seed) == (4, 3)
    assert parse_arguments(["--config", str(config_file), "--split_seed", "11"])[1].seed == 11


@pytest.mark.parametrize("arguments, message", [
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--split_seed", "-1"], "--split_seed must be between 0 and 4294967295, got -1"),
    (["--batch_size", "many"], "batch_size"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--preset", "huge"], "unknown preset"),
    (["--min_lr", "1"], "must not exceed"),
    (["--gradient_accumulation_steps", "1000000"], "too small"),
    (["--data_path", "/nonexistent/stories.txt"], "nonexistent"),
    (["--out_dir", "/dev/null/run"], "cannot create the output folder"),
    (["--preset", "nano", "--block_size", "32"], "beyond the model's vocabulary of 512"),
])
def test_bad_arguments_exit_2_with_one_line(arguments, message, synthetic_data_dir, tmp_path, monkeypatch, capsys):
    assert message in refused_here(monkeypatch, capsys, arguments, synthetic_data_dir, tmp_path)


def test_a_bad_argument_is_one_line_from_the_script_itself(synthetic_data_dir, tmp_path):
    process = run_train(["--batch_size", "0"], synthetic_data_dir, tmp_path)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and stderr.strip() == "error: --batch_size must be at least 1, got 0", stderr


def test_resume_with_a_different_model_is_refused(synthetic_data_dir, tmp_path, monkeypatch, capsys):
    first = run_train(["--max_steps", "2", "--eval_interval", "2"], synthetic_data_dir, tmp_path)
    assert first.wait() == 0
    refused = refused_here(monkeypatch, capsys, ["--max_steps", "4", "--n_embd", "32"], synthetic_data_dir, tmp_path)
    assert "different model (n_embd differ)" in refused
    refused = refused_here(monkeypatch, capsys, ["--max_steps", "4", "--seed", "9"], synthetic_data_dir, tmp_path)
    assert "trained with --seed 1337" in refused


@pytest.fixture
def read_only_out_dir(tmp_path) -> Path:
    """An --out_dir of an earlier run (checkpoints/ and logs/ exist) in which nothing can be written: a read-only
    tmpfs when running as root (whom permissions do not stop), else permissions."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        for path in (folder / "checkpoints", folder / "logs", folder):
            path.mkdir(exist_ok=True)
            path.chmod(0o555)
        yield folder
        for path in (folder, folder / "checkpoints", folder / "logs"):
            path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without the right to mount a read-only file system")
    try:
        for name in ("checkpoints", "logs"):
            (folder / name).mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def one_line_error(process, timeout=300):
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 2 and len(stderr.strip().splitlines()) == 1, stderr
    return stderr


def test_a_read_only_out_dir_is_refused_before_any_work(read_only_out_dir, synthetic_data_dir, monkeypatch, capsys):
    stderr = refused_here(monkeypatch, capsys, ["--max_steps", "2"], synthetic_data_dir, read_only_out_dir)
    assert f"cannot write in the output folder {read_only_out_dir / 'checkpoints'}" in stderr


def test_a_data_dir_that_is_a_file_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    not_a_folder = tmp_path / "tokens.bin"
    not_a_folder.write_bytes(b"\0" * 8)
    stderr = refused_here(monkeypatch, capsys, ["--max_steps", "2"], not_a_folder, tmp_path / "out")
    assert f"{not_a_folder} is a file, not a folder" in stderr


def test_a_second_run_on_a_busy_out_dir_is_refused_and_the_first_keeps_its_files(synthetic_data_dir, tmp_path):
    first = run_train(["--max_steps", "100000", "--save_interval", "100000", "--eval_interval", "100000"],
                      synthetic_data_dir, tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_until_training(first)
    lock = tmp_path / "train.lock"
    second = run_train(["--max_steps", "2"], synthetic_data_dir, tmp_path)
    stderr = one_line_error(second)
    assert f"{tmp_path} is in use by a training run (pid {first.pid} on this host)" in stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM and not lock.exists()


def test_a_killed_runs_lock_and_temporary_files_are_cleared_at_the_next_start(synthetic_data_dir, tmp_path):
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    (tmp_path / "train.lock").write_text(f'{{"pid": {killed.pid}, "host": "{os.uname().nodename}"}}')
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "checkpoints" / ".checkpoint.pth.a1b2c3d4.tmp",
             tmp_path / "checkpoints" / ".best_model.pth.x_y_z_w_.tmp"]
    foreign = tmp_path / "checkpoints" / ".notes.md.a1b2c3d4.tmp"
    for path in stale + [foreign]:
        path.write_bytes(b"\0" * 1000)
    process = run_train(["--max_steps", "2", "--eval_interval", "2"], synthetic_data_dir, tmp_path)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "removed 2 temporary file(s) that an interrupted save left in" in stdout
    assert not any(path.exists() for path in stale) and foreign.exists()


@pytest.mark.parametrize("target", ["nowhere.pth", "."])
def test_resume_of_a_missing_file_or_a_folder_names_the_resume_flag(target, synthetic_data_dir, tmp_path, monkeypatch,
                                                                   capsys):
    stderr = refused_here(monkeypatch, capsys, ["--resume", str(tmp_path / target)], synthetic_data_dir, tmp_path)
    assert "no such checkpoint file" in stderr and "--resume" in stderr and "--model" not in stderr


def test_an_edited_training_state_is_one_line_naming_it(synthetic_data_dir, tmp_path, monkeypatch, capsys):
    first = run_train(["--max_steps", "2", "--eval_interval", "2"], synthetic_data_dir, tmp_path)
    assert first.wait(timeout=300) == 0
    path = tmp_path / "checkpoints" / "checkpoint.pth"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["rng"]
    torch.save(checkpoint, path)
    stderr = refused_here(monkeypatch, capsys, ["--max_steps", "4"], synthetic_data_dir, tmp_path)
    assert f"{path} cannot be resumed: 'rng' missing" in stderr


def test_a_resume_that_would_change_the_data_or_the_batch_is_refused_and_writes_nothing(synthetic_data_dir, tmp_path,
                                                                                       monkeypatch, capsys):
    data_dir, out_dir = tmp_path / "data", tmp_path / "out"
    shutil.copytree(synthetic_data_dir, data_dir)  # a refused run must not rebuild it; the shared one stays safe
    first = run_train(["--max_steps", "2", "--eval_interval", "2"], data_dir, out_dir)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    checkpoint = out_dir / "checkpoints" / "checkpoint.pth"
    before = files_under(data_dir, out_dir)
    assert checkpoint in before
    for change, says in [
        (["--split_seed", "7"], f"{checkpoint} was trained on a split made with --split_seed 1337; "),
        (["--max_stories", "300"], f"{checkpoint} was trained on a split made with --max_stories 400; "),
        (["--val_fraction", "0.2"], f"{checkpoint} was trained on a split made with --val_fraction 0.05; "),
        (["--batch_size", "4"], f"{checkpoint} was trained with batch size and processes [2, 1]; "
                                "resuming exactly needs the same (4, 1)"),
        (["--gradient_accumulation_steps", "4"], f"{checkpoint} was trained with --gradient_accumulation_steps 2; "),
    ]:
        stderr = refused_here(monkeypatch, capsys, ["--max_steps", "4", *change], data_dir, out_dir)
        assert stderr.startswith("error: ") and says in stderr, (change, stderr)
        assert files_under(data_dir, out_dir) == before, change  # checkpoint, logs and data byte for byte


def test_resume_never_starts_over_and_resume_path_continues_another_folders_checkpoint(synthetic_data_dir, tmp_path):
    # No warmup: the saved run's two steps decay to its own --max_steps 2, so continuing it cannot end where a
    # fresh 3-step run does (within a warmup, both would take the very same steps).
    def train(arguments, out_dir):
        return run_train(["--warmup_steps", "0", *arguments], synthetic_data_dir, tmp_path / out_dir)

    first = train(["--max_steps", "2"], "first")
    fresh = train(["--max_steps", "3"], "fresh")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert fresh.wait(timeout=300) == 0, fresh.stderr.read()
    saved = tmp_path / "kept" / "step_2.pth"  # a copy: the run below that starts over rewrites first/'s
    saved.parent.mkdir()
    shutil.copy(tmp_path / "first" / "checkpoints" / "checkpoint.pth", saved)
    saved_bytes = saved.read_bytes()
    resumed = train(["--max_steps", "3", "--resume", str(saved)], "resumed")
    over = train(["--max_steps", "3", "--resume", "never"], "first")
    resumed_out, resumed_err = resumed.communicate(timeout=300)
    over_out, over_err = over.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_err
    assert over.returncode == 0, over_err

    assert f"resuming from {saved} at step 2 of 3" in resumed_out
    continued = torch.load(tmp_path / "resumed" / "checkpoints" / "checkpoint.pth", weights_only=True)
    assert continued["step"] == 3
    # The saved run's evaluation, then its own.
    assert [entry["step"] for entry in continued["training_state"]["history"]] == [2, 3]
    assert saved.read_bytes() == saved_bytes

    assert "resuming" not in over_out
    started_over = torch.load(tmp_path / "first" / "checkpoints" / "checkpoint.pth", weights_only=True)
    assert started_over["step"] == 3
    assert [entry["step"] for entry in started_over["training_state"]["history"]] == [3]  # none of the old run's
    assert torch.load(tmp_path / "first" / "checkpoints" / "best_model.pth", weights_only=True)["step"] == 3
    fresh_weights = final_weights(tmp_path / "fresh")
    assert all(torch.equal(started_over["model"][name], fresh_weights[name]) for name in fresh_weights)
    assert not all(torch.equal(started_over["model"][name], continued["model"][name]) for name in fresh_weights)
