"""The training loop: get batch, forward, backward, clip, step, schedule, evaluate, save.

Its settings, the learning-rate schedule and the optimizer are in config.py. What a run carries across a
restart is in run_state.py, the checks of a checkpoint to resume in resume_checks.py; the device, the training
dtype and FLOP counts in tinystories/hardware.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model.model import Config, Model
from tinystories.checkpoint import model_checkpoint, save_checkpoint
from tinystories.checks import require_token_ids_within
from tinystories.data import DataConfig, load_tokens, prepare_data
from tinystories.data.batches import Batch, WindowBatches, fixed_eval_batches
from tinystories.errors import UserError
from tinystories.files import ensure_folder, missing_folders, remove_empty_folders, remove_stale_temporaries
from tinystories.hardware import (
    autocast,
    enable_tf32,
    flops_per_token,
    peak_flops,
    resolve_device,
    resolve_dtype,
    should_compile,
)
from tinystories.paths import BEST_MODEL, CHECKPOINT, RunPaths
from tinystories.training.config import TrainConfig, learning_rate_at, make_optimizer
from tinystories.training.distributed import (
    Distributed,
    all_gather_objects,
    all_reduce_sum,
    init_distributed,
    main_first,
    max_over_ranks,
    process_device,
    shutdown,
)
from tinystories.training.folder_lock import FolderLock
from tinystories.training.progress import StepProgress, step_size
from tinystories.training.resume_checks import check_fits, check_same_data, check_same_run, read_resumable
from tinystories.training.run_log import CURVE_FILE, RunLog
from tinystories.training.run_state import (
    RunIdentity,
    RunParts,
    TrainingState,
    data_fingerprint,
    restore,
    rng_states,
    seed_everything,
    split_settings,
    training_checkpoint,
)
from tinystories.training.stop_signals import StopRequest

# What this program writes in its folders, for clearing the temporary files of a killed save.
WRITTEN_FILES = (BEST_MODEL, CHECKPOINT, "training_*.log", CURVE_FILE)


@dataclass
class TrainingData:
    """The prepared splits a run reads: training batches, fixed validation batches, and their fingerprint."""
    data_dir: Path
    batches: WindowBatches
    eval_batches: list[Batch]
    fingerprint: dict[str, str]
    train_tokens: int


def training_data(config: TrainConfig, data_config: DataConfig, model_config: Config, distributed: Distributed,
                  device: torch.device) -> TrainingData:
    """Token files (rank 0 prepares missing ones first; the others wait, then reuse them), checked against the
    model's vocabulary, and the batches drawn from them."""
    data_dir = main_first(lambda: prepare_data(data_config),
                          lambda: prepare_data(data_config, progress=False, report=False), distributed)
    splits = {split: load_tokens(data_dir, split) for split in ("train", "validation")}
    for split, tokens in splits.items():
        require_token_ids_within(int(tokens.max()) if len(tokens) else 0, model_config.vocab_size,
                                 f"the {split} split", f"preset {config.preset} cannot read it; use a preset with "
                                 "the GPT-2 vocabulary (33M, small, tiny)")
    block_size = model_config.block_size
    batches = WindowBatches(splits["train"], block_size, config.batch_size, seed=config.seed, rank=distributed.rank,
                            world_size=distributed.world_size, device=device)
    eval_batches = fixed_eval_batches(splits["validation"], block_size, config.batch_size, config.eval_iters,
                                      seed=config.seed)
    return TrainingData(data_dir, batches, eval_batches, {split: data_fingerprint(tokens) for split, tokens in
                                                          splits.items()}, len(splits["train"]))


class FiniteLossCheck:
    """Checks each step's loss one step late, so the host keeps queueing work ahead of the device instead of
    waiting for it; a step whose loss is logged, evaluated or saved is checked at once."""

    def __init__(self, on_non_finite: Callable[[int, float], None]) -> None:
        self.on_non_finite = on_non_finite
        self.pending: Optional[tuple[int, torch.Tensor]] = None

    def check(self, step: int, loss: torch.Tensor, now: bool) -> None:
        if self.pending is not None:
            self._verify(*self.pending)
        self.pending = (step, loss)
        if now:
            self._verify(step, loss)
            self.pending = None

    def _verify(self, step: int, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).item():  # a host synchronisation
            self.on_non_finite(step, loss.item())


class Trainer:
    """Sets a run up from its settings (checking everything a user can get wrong first); `run` trains it."""

    def __init__(self, config: TrainConfig, data_config: DataConfig) -> None:
        self.config = config
        self.model_config = config.model_config()
        device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, device)
        self.distributed = init_distributed(device.type)
        self.device = process_device(device, self.distributed)
        enable_tf32(self.device)
        world = self.distributed.world_size
        if config.gradient_accumulation_steps % world:
            raise UserError(f"--gradient_accumulation_steps ({config.gradient_accumulation_steps}) must be divisible "
                            f"by the number of processes ({world}) to keep the effective batch")
        self.micro_steps = config.gradient_accumulation_steps // world
        self.paths = RunPaths(Path(config.out_dir))
        self.lock = FolderLock(self.paths.lock)
        self.new_folders: list[Path] = []  # made by this run (rank 0's), removed again if it stops with them empty
        main_first(self._claim_output_folder, lambda: None, self.distributed)  # rank 0's error stops every rank
        try:
            self._set_up(data_config)
        except BaseException:
            self.lock.release()
            raise

    def _claim_output_folder(self) -> None:
        """Writable folders, this run's lock, and no temporary files of an earlier killed save (all before
        any work, so that a bad --out_dir costs nothing)."""
        self.new_folders = missing_folders(self.paths.checkpoints, self.paths.logs)
        for folder in (self.paths.checkpoints, self.paths.logs):
            ensure_folder(folder)
        self.lock.acquire()
        removed = [path for folder in (self.paths.checkpoints, self.paths.logs)
                   for path in remove_stale_temporaries(folder, WRITTEN_FILES)]
        if removed:
            self._say(f"removed {len(removed)} temporary file(s) that an interrupted save left in {self.paths.out_dir}")

    def _set_up(self, data_config: DataConfig) -> None:
        identity = RunIdentity(dataclasses.asdict(self.model_config), self.config.seed,
                               [self.config.batch_size, self.distributed.world_size], split_settings(data_config),
                               self.config.gradient_accumulation_steps)
        self.identity = identity
        resume_path = self._resume_path()
        saved = read_resumable(resume_path) if resume_path else None
        if saved is not None:
            check_same_run(saved, resume_path, identity)  # before the data folder is (re)built
        seed_everything(self.config.seed)
        self.data = training_data(self.config, data_config, self.model_config, self.distributed, self.device)
        self.steps_per_epoch = self.data.batches.batches_per_epoch // self.micro_steps
        block_size = self.model_config.block_size
        if self.steps_per_epoch < 1:
            raise UserError(f"the training split ({self.data.train_tokens:,} tokens) is too small for one optimizer "
                            f"step of {self.config.batch_size * self.config.gradient_accumulation_steps} sequences of "
                            f"{block_size} tokens; lower --batch_size or --gradient_accumulation_steps, or use more "
                            "data")
        self.total_steps = self.config.max_steps or self.config.epochs * self.steps_per_epoch
        self.tokens_per_step = self.config.batch_size * self.config.gradient_accumulation_steps * block_size
        self.model = Model(self.model_config).to(self.device)
        self.optimizer = make_optimizer(self.model, self.config, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.parts = RunParts(self.model, self.optimizer, self.scaler, self.data.batches)
        self.state = TrainingState()
        if saved is not None:
            check_same_data(saved, resume_path, self.data.fingerprint, self.data.data_dir)
            check_fits(saved, resume_path, self.parts, self.distributed.world_size)
            self.state = restore(saved, self.parts, self.distributed.rank)
            self._say(f"resuming from {resume_path} at step {self.state.step:,} of {self.total_steps:,}")
        # The step that checkpoint.pth holds, as far as this run knows (what a stop now would leave).
        resumed_here = saved is not None and resume_path == self.paths.checkpoint
        self.saved_step: Optional[int] = self.state.step if resumed_here else None
        compiled = should_compile(self.config.compile, self.device)
        self.forward_model = torch.compile(self.model) if compiled else self.model
        if self.distributed.enabled:
            self.forward_model = DistributedDataParallel(
                self.forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.flops_per_token = flops_per_token(self.model_config)
        self.peak_flops = peak_flops(self.device)

    def _resume_path(self) -> Optional[Path]:
        resume = self.config.resume
        if resume == "never":
            return None
        path = self.paths.checkpoint if resume == "auto" else Path(resume)
        if path.is_file():
            return path
        if resume == "auto" and not path.exists():
            return None
        raise UserError(f"--resume {path}: no such checkpoint file; name a checkpoint.pth that train.py wrote, "
                        "or pass --resume auto or --resume never")

    def _say(self, message: str) -> None:
        if self.distributed.is_main:
            tqdm.write(message)

    def run(self) -> dict[str, Any]:
        """Train to the last step, or until a stop signal; returns the summary (`stopped_by_signal` says which)."""
        log_path = self.paths.new_log()
        stop = StopRequest(acknowledge=self._say, stop_now=self._stop_now)
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(stop)
                run_log = stack.enter_context(self._run_log(log_path)) if self.distributed.is_main else None
                self._say(step_size(self.config.batch_size, self.micro_steps, self.distributed.world_size,
                                    self.model_config.block_size))
                progress = stack.enter_context(tqdm(total=self.total_steps, initial=self.state.step, desc="training",
                                                    unit="step", disable=not self.distributed.is_main,
                                                    dynamic_ncols=True))
                stopped_by = self._train(run_log, stop, progress)
        finally:
            self.lock.release()
        summary = self._summary(log_path, stopped_by)
        shutdown(self.distributed)
        return summary

    def _train(self, run_log: Optional[RunLog], stop: StopRequest, progress: tqdm) -> Optional[int]:
        """The loop; returns the number of the signal that stopped it, if one did."""
        self.model.train()
        finite = FiniteLossCheck(self._diverged)
        run_start = time.perf_counter() - self.state.elapsed_seconds
        self._window = (time.perf_counter(), self.state.tokens_seen)
        step_progress = StepProgress(progress, self._say, self.device, self.micro_steps,
                                     self.total_steps - self.state.step)
        while self.state.step < self.total_steps:
            loss = self.train_step(step_progress.micro_batch_done)  # batch, forward, backward, clip, step, schedule
            self.state.elapsed_seconds = time.perf_counter() - run_start
            progress.update(1)
            # All ranks stop at the same step when any of them received SIGTERM/SIGINT.
            stop.signal_number = int(max_over_ranks(stop.signal_number or 0, self.distributed, self.device)) or None
            stopping = stop.signal_number is not None
            logging, evaluating, saving = (self._due(every) for every in (
                self.config.log_interval, self.config.eval_interval, self.config.save_interval))
            finite.check(self.state.step, loss, now=logging or evaluating or saving or stopping)
            if logging:
                self._show_progress(progress, loss.item())
            if evaluating:
                self._evaluate_and_record(loss.item(), run_log)
            if saving or stopping:
                self.save()
            if stopping:
                return stop.signal_number
        return None

    def train_step(self, on_micro_batch: Callable[[int], None] = lambda index: None) -> torch.Tensor:
        """One optimizer step over `micro_steps` micro-batches, calling `on_micro_batch(index)` after each; returns
        the mean loss (a device tensor)."""
        self._schedule_learning_rate()
        step_loss = torch.zeros((), device=self.device)
        for micro_step in range(self.micro_steps):
            x, y = self.data.batches.next_batch()
            with self._gradient_sync(last=micro_step == self.micro_steps - 1):
                with autocast(self.device, self.dtype):
                    _, loss = self.forward_model(x, y, return_logits=False)
                loss = loss / self.micro_steps
                self.scaler.scale(loss).backward()
            step_loss += loss.detach().float()
            on_micro_batch(micro_step)
        self._clip_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        return all_reduce_sum(step_loss, self.distributed) / self.distributed.world_size

    def _schedule_learning_rate(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(self.state.step, self.config, self.total_steps)

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces gradients once per optimizer step, on the last micro-batch only."""
        return nullcontext() if last or not self.distributed.enabled else self.forward_model.no_sync()

    def _clip_gradients(self) -> None:
        if self.config.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)

    def _due(self, every: int) -> bool:
        return self.state.step % every == 0 or self.state.step == self.total_steps

    @torch.inference_mode()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches (each rank scores its share; all ranks get the mean)."""
        self.model.eval()
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for index in range(self.distributed.rank, len(self.data.eval_batches), self.distributed.world_size):
            x, y = (t.to(self.device, non_blocking=True) for t in self.data.eval_batches[index])
            with autocast(self.device, self.dtype):
                _, loss = self.model(x, y, return_logits=False)
            total += torch.stack([loss.double(), torch.ones((), device=self.device, dtype=torch.float64)])
        all_reduce_sum(total, self.distributed)
        self.model.train()
        return (total[0] / total[1]).item()

    def save(self) -> None:
        """checkpoint.pth: everything needed to continue exactly (every rank's generators; rank 0 writes)."""
        rng = all_gather_objects(rng_states(), self.distributed)  # each rank resumes its own dropout stream
        if self.distributed.is_main:
            save_checkpoint(self.paths.checkpoint, training_checkpoint(
                self.parts, self.state, rng, self.identity, self.data.fingerprint, dataclasses.asdict(self.config)))
        self.saved_step = self.state.step

    def _evaluate_and_record(self, train_loss: float, run_log: Optional[RunLog]) -> None:
        val_loss = self.evaluate()
        step = self.state.step
        if not math.isfinite(val_loss):
            self._diverged(step, val_loss, "validation loss")
        elapsed = self.state.elapsed_seconds
        tokens_per_second = self.state.tokens_seen / elapsed if elapsed > 0 else None
        mfu = None
        if self.peak_flops and tokens_per_second:
            mfu = self.flops_per_token * tokens_per_second / (self.peak_flops * self.distributed.world_size)
        entry = {"step": step, "epoch": self.data.batches.epoch, "train_loss": train_loss, "val_loss": val_loss,
                 "lr": learning_rate_at(step - 1, self.config, self.total_steps), "tokens_seen": self.state.tokens_seen,
                 "tokens_per_second": tokens_per_second, "mfu": mfu, "elapsed_seconds": round(elapsed, 2)}
        if val_loss < self.state.best_val_loss:
            self.state.best_val_loss = val_loss
            if self.distributed.is_main:
                save_checkpoint(self.paths.best_model, model_checkpoint(self.model, step=step, val_loss=val_loss))
        if run_log is not None:
            run_log.record(entry)  # appends to self.state.history, which the checkpoint carries
        self._say(f"step {step:,}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")

    def _diverged(self, step: int, value: float, what: str = "loss") -> None:
        """Stop without saving when a loss is NaN or infinite."""
        raise UserError(f"the {what} became {value} at step {step}; stopped without saving, so "
                        f"{self.paths.checkpoints} keeps what was saved before this step "
                        "(try a lower --learning_rate, or --max_grad_norm)")

    def _show_progress(self, progress: tqdm, train_loss: float) -> None:
        """The progress bar's loss, learning rate and tokens per second since the last update."""
        started, tokens = self._window
        self._window = (time.perf_counter(), self.state.tokens_seen)
        tokens_per_second = (self.state.tokens_seen - tokens) / (self._window[0] - started)
        progress.set_postfix(epoch=self.data.batches.epoch, loss=f"{train_loss:.4f}",
                             lr=f"{learning_rate_at(self.state.step - 1, self.config, self.total_steps):.2e}",
                             tok_s=f"{tokens_per_second:,.0f}")

    def _run_log(self, log_path: Path) -> RunLog:
        run_log = RunLog(log_path, {"train": dataclasses.asdict(self.config), "model": self.identity.model_config,
                                    "data_dir": str(self.data.data_dir)}, self.state.history,
                         tensorboard=self.config.tensorboard, wandb=self.config.wandb)
        self._say(f"model: {self.model.num_parameters():,} parameters "
                  f"({self.model.num_parameters(include_embeddings=False):,} without embeddings); "
                  f"device {self.device}, {str(self.dtype).removeprefix('torch.')}, "
                  f"{self.distributed.world_size} process(es); {self.total_steps:,} steps of "
                  f"{self.tokens_per_step:,} tokens ({self.steps_per_epoch:,} steps per epoch)")
        return run_log

    def _stop_now(self, signal_number: int) -> None:
        """A second stop signal: leave at once, from StopRequest's thread, wherever the main thread is (possibly
        inside a backward pass that no exception could interrupt). Every file is written atomically, so the
        checkpoint saved last is intact; a save cut short leaves a temporary file that the next start removes."""
        kept = (f"{self.paths.checkpoint} holds step {self.saved_step:,}, as it was saved; run the same command "
                "again to resume from there" if self.saved_step is not None else "this run saved no checkpoint yet")
        self._say(f"stopped at once by a second signal after step {self.state.step:,}; {kept}.")
        self.lock.release()
        remove_empty_folders(self.new_folders)  # os._exit skips train.py's own clean-up
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signal_number)  # the status a shell reports for a process that the first signal ended

    def _summary(self, log_path: Path, stopped_by: Optional[int]) -> dict[str, Any]:
        summary = {
            "steps": self.state.step, "best_val_loss": self.state.best_val_loss, "tokens_seen": self.state.tokens_seen,
            "wall_seconds": round(self.state.elapsed_seconds, 1), "best_model": str(self.paths.best_model),
            "checkpoint": str(self.paths.checkpoint),
            "log": str(log_path) if log_path.exists() else "none (no evaluation in this run)",
            "loss_curve": str(self.paths.logs / CURVE_FILE), "stopped_by_signal": stopped_by,
        }
        if stopped_by is not None:
            self._say(f"stopped by signal {stopped_by} after step {self.state.step:,}; saved {self.paths.checkpoint}. "
                      "Run the same command again to resume.")
        else:
            self._say("done: best validation loss {best_val_loss:.4f}, {tokens_seen:,} tokens in {wall_seconds} s\n"
                      "  best model:  {best_model}\n  checkpoint:  {checkpoint}\n  log:         {log}\n"
                      "  loss curve:  {loss_curve}".format(**summary))
        return summary


def train(data_config: Optional[DataConfig] = None, **settings: Any) -> dict[str, Any]:
    """The specification's entry point: train(epochs=20, batch_size=32, ...) with any TrainConfig field."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"train() got unknown settings: {', '.join(unknown)}")
    return Trainer(TrainConfig(**settings), data_config or DataConfig()).run()
