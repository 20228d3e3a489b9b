"""Training: schedule, optimizer groups, falling loss, exact resume, preemption, DDP equivalence, flags."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.model import Model, preset
from tinystories.data import DataConfig
from tinystories.errors import UserError
from tinystories.training import TrainConfig, Trainer, learning_rate_at, make_optimizer, peak_flops_of

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = ["--preset", "tiny", "--block_size", "32", "--batch_size", "2", "--gradient_accumulation_steps", "2",
            "--learning_rate", "2e-3", "--min_lr", "2e-4", "--warmup_steps", "2", "--eval_iters", "2",
            "--device", "cpu", "--compile", "false", "--log_interval", "1"]


# The synthetic corpus as conftest's synthetic_data_dir prepares it: the same inputs reuse its token files.
SYNTHETIC = ["--dataset", "synthetic", "--max_stories", "400"]


def synthetic_config(data_dir):
    return DataConfig(dataset="synthetic", max_stories=400, data_dir=str(data_dir))


def run_train(arguments, data_dir, out_dir, **popen):
    command = [sys.executable, "train.py", *TINY_RUN, "--data_dir", str(data_dir), *SYNTHETIC,
               "--out_dir", str(out_dir), *arguments]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def final_weights(out_dir):
    return torch.load(Path(out_dir) / "checkpoints" / "checkpoint.pth", weights_only=True)["model"]


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    config = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_steps=10)
    assert learning_rate_at(0, config, 110) == pytest.approx(1e-4)
    assert learning_rate_at(9, config, 110) == pytest.approx(1e-3)
    assert learning_rate_at(10, config, 110) == pytest.approx(1e-3)
    assert learning_rate_at(60, config, 110) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway: cos(pi/2) = 0
    assert learning_rate_at(110, config, 110) == pytest.approx(1e-4)


def test_weight_decay_applies_to_matrices_only():
    model = Model(preset("nano"))
    decayed, plain = make_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu")).param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert sum(p.numel() for p in decayed["params"] + plain["params"]) == model.num_parameters()


def test_loss_falls_and_all_outputs_are_written(synthetic_data_dir, tmp_path):
    config = TrainConfig(preset="tiny", block_size=32, batch_size=4, gradient_accumulation_steps=1, max_steps=60,
                         learning_rate=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=20, eval_iters=4,
                         device="cpu", compile="false", out_dir=str(tmp_path))
    summary = Trainer(config, synthetic_config(synthetic_data_dir)).run()
    history = json.loads(Path(summary["log"]).read_text())["history"]
    val_losses = [entry["val_loss"] for entry in history]
    assert [entry["step"] for entry in history] == [20, 40, 60]
    # Random guessing scores ln 50257 = 10.8 nats; a learnable corpus must fall well below it.
    assert val_losses == sorted(val_losses, reverse=True) and val_losses[-1] < 7.5
    assert summary["best_val_loss"] == pytest.approx(val_losses[-1])
    for name in ("best_model.pth", "checkpoint.pth"):
        assert (tmp_path / "checkpoints" / name).is_file()
    assert (tmp_path / "logs" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    best = torch.load(tmp_path / "checkpoints" / "best_model.pth", weights_only=True)
    assert best["step"] == 60 and best["val_loss"] == pytest.approx(val_losses[-1])
    for key in ("tokens_seen", "tokens_per_second", "lr", "epoch", "train_loss", "elapsed_seconds"):
        assert key in history[-1]


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
                        synthetic_data_dir, tmp_path)
    log_folder = tmp_path / "logs"
    deadline = time.time() + 60
    while not log_folder.exists() and time.time() < deadline:  # the log folder appears as training starts
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    checkpoint = torch.load(tmp_path / "checkpoints" / "checkpoint.pth", weights_only=True)
    assert 0 < checkpoint["step"] < 100000
    assert f"saved {tmp_path / 'checkpoints' / 'checkpoint.pth'}" in stdout


def test_two_gloo_ranks_follow_the_single_process_trajectory(synthetic_data_dir, tmp_path):
    arguments = ["--max_steps", "6", "--eval_interval", "3", "--dropout", "0.0", "--batch_size", "2",
                 "--gradient_accumulation_steps", "4"]
    single = run_train(arguments, synthetic_data_dir, tmp_path / "one")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
               *TINY_RUN, "--data_dir", str(synthetic_data_dir), *SYNTHETIC,
               "--out_dir", str(tmp_path / "two"), *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    double = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert double.returncode == 0, double.stderr[-3000:]
    assert single.wait() == 0, single.stderr.read()[-3000:]
    one, two = (torch.load(tmp_path / name / "checkpoints" / "checkpoint.pth", weights_only=True)
                for name in ("one", "two"))
    for entry_one, entry_two in zip(one["training_state"]["history"], two["training_state"]["history"]):
        for key in ("train_loss", "val_loss"):
            assert entry_two[key] == pytest.approx(entry_one[key], rel=1e-5), key
    assert len(one["rng"]) == 1 and len(two["rng"]) == 2


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
    (["--batch_size", "many"], "batch_size"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--preset", "huge"], "unknown preset"),
    (["--min_lr", "1"], "must not exceed"),
    (["--gradient_accumulation_steps", "1000000"], "too small"),
    (["--data_path", "/nonexistent/stories.txt"], "nonexistent"),
    (["--out_dir", "/dev/null/run"], "cannot create the output folder"),
    (["--preset", "nano", "--block_size", "32"], "beyond the model's vocabulary of 512"),
])
def test_bad_arguments_exit_2_with_one_line(arguments, message, synthetic_data_dir, tmp_path):
    process = run_train(arguments, synthetic_data_dir, tmp_path)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr


def test_resume_with_a_different_model_is_refused(synthetic_data_dir, tmp_path):
    first = run_train(["--max_steps", "2", "--eval_interval", "2"], synthetic_data_dir, tmp_path)
    assert first.wait() == 0
    second = run_train(["--max_steps", "4", "--n_embd", "32"], synthetic_data_dir, tmp_path)
    _, stderr = second.communicate()
    assert second.returncode == 2 and "different model (n_embd differ)" in stderr, stderr
    third = run_train(["--max_steps", "4", "--seed", "9"], synthetic_data_dir, tmp_path)
    _, stderr = third.communicate()
    assert third.returncode == 2 and "trained with --seed 1337" in stderr, stderr


def test_adamw_is_fused_on_the_cpu():
    optimizer = make_optimizer(Model(preset("nano")), TrainConfig(), torch.device("cpu"))
    assert optimizer.defaults["fused"] is True


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(synthetic_data_dir, tmp_path,
                                                                                  monkeypatch):
    config = TrainConfig(preset="tiny", block_size=32, batch_size=2, gradient_accumulation_steps=1, max_steps=8,
                         eval_interval=2, eval_iters=1, save_interval=2, log_interval=10, device="cpu",
                         compile="false", out_dir=str(tmp_path))
    trainer = Trainer(config, synthetic_config(synthetic_data_dir))
    real_step = trainer.train_step

    def step_that_diverges_at_3():
        loss = real_step()
        return loss * math.nan if trainer.state.step == 3 else loss

    monkeypatch.setattr(trainer, "train_step", step_that_diverges_at_3)
    with pytest.raises(UserError, match="loss became nan at step 3; stopped without saving"):
        trainer.run()
    assert torch.load(tmp_path / "checkpoints" / "checkpoint.pth", weights_only=True)["step"] == 2
    assert torch.load(tmp_path / "checkpoints" / "best_model.pth", weights_only=True)["step"] == 2


def test_non_finite_validation_loss_stops_before_saving(synthetic_data_dir, tmp_path, monkeypatch):
    config = TrainConfig(preset="tiny", block_size=32, batch_size=2, gradient_accumulation_steps=1, max_steps=8,
                         eval_interval=2, eval_iters=1, save_interval=2, device="cpu", compile="false",
                         out_dir=str(tmp_path))
    trainer = Trainer(config, synthetic_config(synthetic_data_dir))
    real_evaluate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda: math.inf if trainer.state.step == 4 else real_evaluate())
    with pytest.raises(UserError, match="validation loss became inf at step 4; stopped without saving"):
        trainer.run()
    assert torch.load(tmp_path / "checkpoints" / "checkpoint.pth", weights_only=True)["step"] == 2
    history = json.loads(next((tmp_path / "logs").glob("training_*.log")).read_text())["history"]
    assert [entry["step"] for entry in history] == [2]


def test_datasheet_peak_matches_whole_words_of_the_device_name():
    assert peak_flops_of("NVIDIA H100 80GB HBM3") == peak_flops_of("NVIDIA H200") == 989e12
    assert peak_flops_of("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_of("NVIDIA L40S") is None and peak_flops_of("NVIDIA A10G") is None
    assert peak_flops_of("NVIDIA L4") == 121e12
