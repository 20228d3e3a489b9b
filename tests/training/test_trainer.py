"""tinystories/training/trainer.py: schedule, optimizer groups, falling loss and written outputs, non-finite losses, and
writes that fail."""
import errno
import json
import math
import os
from pathlib import Path

import pytest
import torch

from model.model import Model, preset
from tinystories.data import DataConfig
from tinystories.errors import UserError
from tinystories.training.config import TrainConfig, learning_rate_at, make_optimizer
from tinystories.training.trainer import Trainer


def synthetic_config(data_dir):
    """The synthetic corpus as conftest's synthetic_data_dir prepares it: the same inputs reuse its token files."""
    return DataConfig(dataset="synthetic", max_stories=400, data_dir=str(data_dir))


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


def test_adamw_is_fused_on_the_cpu_with_the_readmes_betas():
    optimizer = make_optimizer(Model(preset("nano")), TrainConfig(), torch.device("cpu"))
    assert optimizer.defaults["fused"] is True
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["lr"] == 1e-4


def test_loss_falls_and_all_outputs_are_written(synthetic_data_dir, tmp_path):
    config = TrainConfig(preset="tiny", block_size=32, batch_size=4, gradient_accumulation_steps=1, max_steps=60,
                         learning_rate=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=25, eval_iters=4,
                         device="cpu", compile="false", out_dir=str(tmp_path))
    summary = Trainer(config, synthetic_config(synthetic_data_dir)).run()
    history = json.loads(Path(summary["log"]).read_text())["history"]
    val_losses = [entry["val_loss"] for entry in history]
    # 60 is not a multiple of 25: the last step is evaluated (and can be the best model) all the same.
    assert [entry["step"] for entry in history] == [25, 50, 60]
    # Random guessing scores ln 50257 = 10.8 nats; a learnable corpus must fall well below it.
    assert val_losses == sorted(val_losses, reverse=True) and val_losses[-1] < 7.5
    assert summary["best_val_loss"] == pytest.approx(val_losses[-1])
    for name in ("best_model.pth", "checkpoint.pth"):
        assert (tmp_path / "checkpoints" / name).is_file()
    assert (tmp_path / "logs" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    best = torch.load(tmp_path / "checkpoints" / "best_model.pth", weights_only=True)
    assert best["step"] == 60 and best["val_loss"] == pytest.approx(val_losses[-1])
    for entry in history:
        step = entry["step"]
        # The learning rate of the step's own update (update step - 1, counting from 0): warmup over 5 updates,
        # then cosine from 3e-3 down to 3e-4 at update 60, as docs/training.md's schedule says.
        progress = (step - 1 - 5) / (60 - 5)
        assert entry["lr"] == pytest.approx(3e-4 + 0.5 * (1 + math.cos(math.pi * progress)) * (3e-3 - 3e-4))
        assert entry["tokens_seen"] == step * 4 * 32  # steps x batch_size x block_size x accumulation (1)
        assert entry["tokens_per_second"] > 0 and entry["epoch"] >= 0 and 0 < entry["train_loss"] < 11
    elapsed = [entry["elapsed_seconds"] for entry in history]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(synthetic_data_dir, tmp_path,
                                                                                  monkeypatch):
    config = TrainConfig(preset="tiny", block_size=32, batch_size=2, gradient_accumulation_steps=1, max_steps=8,
                         eval_interval=2, eval_iters=1, save_interval=2, log_interval=10, device="cpu",
                         compile="false", out_dir=str(tmp_path))
    trainer = Trainer(config, synthetic_config(synthetic_data_dir))
    real_step = trainer.train_step

    def step_that_diverges_at_3(on_micro_batch):
        loss = real_step(on_micro_batch)
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


def test_a_full_disk_during_a_save_is_one_line_that_says_the_previous_checkpoint_is_kept(synthetic_data_dir,
                                                                                        tmp_path, monkeypatch):
    config = TrainConfig(preset="tiny", block_size=32, batch_size=2, gradient_accumulation_steps=1, max_steps=8,
                         eval_interval=100, eval_iters=1, save_interval=2, device="cpu", compile="false",
                         out_dir=str(tmp_path))
    trainer = Trainer(config, synthetic_config(synthetic_data_dir))
    real_save = torch.save

    def save_until_the_disk_fills(obj, file, *args, **kwargs):
        if trainer.state.step >= 4:
            file.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    checkpoint = tmp_path / "checkpoints" / "checkpoint.pth"
    with pytest.raises(UserError, match=f"^could not write {checkpoint}: No space left on device; the previous "
                                        "checkpoint.pth is kept$"):
        trainer.run()
    assert torch.load(checkpoint, weights_only=True)["step"] == 2
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == ["checkpoint.pth"]
    assert not (tmp_path / "train.lock").exists()


def adamw_by_hand(model, batches, learning_rate, weight_decay, fused, clip_to=None):
    """`model` after one plain AdamW step per (x, y) batch, with docs/training.md's betas and decay on matrices only;
    gradients are clipped to a total norm of `clip_to` only when it is given. Returns each step's gradient norm
    before any clipping."""
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
                                   {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=learning_rate, betas=(0.9, 0.95), fused=fused)
    norms = []
    for x, y in batches:
        _, loss = model(x, y, return_logits=False)
        loss.backward()
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters])))
        if clip_to is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip_to)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return norms


def test_max_grad_norm_0_disables_clipping_and_a_positive_one_clips(synthetic_data_dir, tmp_path):
    def trained(max_grad_norm):
        """The weights before and after two optimizer steps of a Trainer on `batches`, its model settings, and
        whether its AdamW is the fused kernel (which the hand-made steps use too, to compare bit for bit)."""
        config = TrainConfig(preset="tiny", block_size=32, batch_size=2, gradient_accumulation_steps=1, max_steps=2,
                             learning_rate=1e-2, min_lr=1e-2, warmup_steps=0, dropout=0.0, weight_decay=0.1,
                             max_grad_norm=max_grad_norm, device="cpu", compile="false",
                             out_dir=str(tmp_path / f"clip_{max_grad_norm}"))
        trainer = Trainer(config, synthetic_config(synthetic_data_dir))
        trainer.lock.release()
        initial = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
        trainer.data.batches.next_batch = iter(batches).__next__
        for _ in batches:
            trainer.train_step()
        return initial, trainer.model.state_dict(), trainer.model_config, trainer.optimizer.defaults["fused"]

    generator = torch.Generator().manual_seed(3)
    tokens = [torch.randint(0, 50257, (2, 33), generator=generator) for _ in range(2)]
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]
    initial, unclipped_by_trainer, model_config, fused = trained(0)
    initial_again, clipped_by_trainer, _, _ = trained(0.5)
    assert all(torch.equal(initial[name], initial_again[name]) for name in initial)  # the same start (seed)

    by_hand, norms = {}, {}
    for clip_to in (None, 0.5):
        model = Model(model_config)
        model.load_state_dict(initial)
        norms[clip_to] = adamw_by_hand(model, batches, learning_rate=1e-2, weight_decay=0.1, fused=fused,
                                       clip_to=clip_to)
        by_hand[clip_to] = model.state_dict()
    # Clipping at 0.5 has work to do, in both steps and by different factors (Adam's first step alone would
    # hardly notice: it divides the gradient by its own size).
    first, second = norms[0.5]
    assert first > 1 and second > 1 and not torch.isclose(first, second, rtol=0.05)
    difference = max((by_hand[None][name] - by_hand[0.5][name]).abs().max().item() for name in initial)
    assert difference > 1e-4
    for name in initial:
        assert torch.equal(unclipped_by_trainer[name], by_hand[None][name]), name  # 0: the plain step
        torch.testing.assert_close(clipped_by_trainer[name], by_hand[0.5][name], rtol=0, atol=1e-6, msg=name)
