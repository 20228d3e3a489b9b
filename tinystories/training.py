"""The training loop: get batch, forward, backward, clip, step, schedule, evaluate, save.

`TrainConfig` is the one definition of every training setting; train.py derives its flags from it and
the seed's `train(...)` keyword arguments map onto it one to one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import re
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.torch_version import TorchVersion
from tqdm import tqdm

from model.model import Config, Model, preset
from tinystories.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from tinystories.data import DataConfig, load_tokens, prepare_data
from tinystories.data.batches import WindowBatches, fixed_eval_batches
from tinystories.device import DEVICE_HELP, DTYPE_CHOICES, autocast, resolve_device, resolve_dtype
from tinystories.distributed import all_reduce_sum, barrier, init_distributed, shutdown
from tinystories.errors import UserError
from tinystories.files import ensure_folder
from tinystories.run_log import RunLog

MODEL_OVERRIDES = ("n_layer", "n_head", "n_embd", "block_size", "dropout")
# Dense bf16 peak FLOP/s of common GPUs, for MFU; other devices report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


@dataclass
class TrainConfig:
    # The seed's train(...) keyword arguments and defaults.
    epochs: int = field(default=20, metadata={"help": "passes over the training split (unless --max_steps)"})
    batch_size: int = field(default=32, metadata={"help": "sequences per micro-batch (per GPU)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate after warmup"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on 2-D weights"})
    eval_interval: int = field(default=500, metadata={"help": "optimizer steps between evaluations"})
    eval_iters: int = field(default=200, metadata={"help": "validation batches per evaluation"})
    gradient_accumulation_steps: int = field(default=32, metadata={"help": "micro-batches per optimizer step, over all GPUs"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient clipping threshold (0 disables)"})
    warmup_steps: int = field(default=1000, metadata={"help": "linear warmup steps"})
    save_interval: int = field(default=5000, metadata={"help": "optimizer steps between checkpoint.pth saves"})
    # Beyond the seed.
    max_steps: Optional[int] = field(default=None, metadata={"help": "optimizer steps to train; overrides --epochs"})
    min_lr: float = field(default=1e-5, metadata={"help": "learning rate at the end of the cosine decay"})
    seed: int = field(default=1337, metadata={"help": "seed for initialisation, data order and dropout"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    dtype: str = field(default="auto", metadata={"choices": DTYPE_CHOICES,
                                                  "help": "auto: bfloat16 on GPUs that support it, else float16; float32 on CPU"})
    compile: str = field(default="auto", metadata={"choices": ["auto", "true", "false"],
                                                    "help": "torch.compile the model (auto: on CUDA only)"})
    out_dir: str = field(default="results", metadata={"help": "folder for checkpoints/ and logs/"})
    resume: str = field(default="auto", metadata={"help": "auto (continue from OUT_DIR/checkpoints/checkpoint.pth if present), never, or a checkpoint path"})
    log_interval: int = field(default=10, metadata={"help": "optimizer steps between progress-bar loss updates"})
    preset: str = field(default="33M", metadata={"help": "model preset: 33M (the seed's), small, tiny, nano"})
    n_layer: Optional[int] = field(default=None, metadata={"help": "override the preset's layers"})
    n_head: Optional[int] = field(default=None, metadata={"help": "override the preset's attention heads"})
    n_embd: Optional[int] = field(default=None, metadata={"help": "override the preset's hidden size"})
    block_size: Optional[int] = field(default=None, metadata={"help": "override the preset's context length"})
    dropout: Optional[float] = field(default=None, metadata={"help": "override the preset's dropout"})
    wandb: bool = field(default=False, metadata={"help": "log to Weights & Biases (needs wandb)"})
    tensorboard: bool = field(default=False, metadata={"help": "log to TensorBoard under OUT_DIR/logs/tensorboard"})

    def validate(self) -> None:
        positive = ("epochs", "batch_size", "eval_interval", "eval_iters", "gradient_accumulation_steps",
                    "save_interval", "log_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max_steps must be at least 1, got {self.max_steps}")
        for name in ("learning_rate", "min_lr", "weight_decay", "max_grad_norm", "warmup_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.min_lr > self.learning_rate:
            raise UserError(f"--min_lr ({self.min_lr}) must not exceed --learning_rate ({self.learning_rate})")

    def model_config(self) -> Config:
        overrides = {name: getattr(self, name) for name in MODEL_OVERRIDES if getattr(self, name) is not None}
        try:
            return preset(self.preset, **overrides)
        except ValueError as error:
            raise UserError(str(error)) from None


def learning_rate_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """Linear warmup from 0 to learning_rate, then cosine decay to min_lr at total_steps."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if step >= total_steps:
        return config.min_lr
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.learning_rate - config.min_lr)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weights (matrices, embeddings) only, not on biases and norms.

    The fused kernel updates each parameter in one pass; it exists on CUDA and, since torch 2.4, on the CPU.
    """
    parameters = list(model.parameters())  # unique: the tied output weight appears once
    groups = [{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}]
    fused = device.type == "cuda" or (device.type == "cpu" and TorchVersion(torch.__version__) >= "2.4")
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95), fused=fused)


def flops_per_token(config: Config, seq_len: Optional[int] = None) -> int:
    """Training FLOPs per token: 6 per parameter that multiplies (all but the position embedding; the tied
    token embedding counts once, as the output layer) plus attention's 12 · layers · width · context, the
    context being seq_len (default block_size). docs/benchmarks.md derives it."""
    with torch.device("meta"):  # count without allocating weights
        model = Model(config)
    parameters = model.num_parameters() - model.position_embedding.weight.numel()
    return 6 * parameters + 12 * config.n_layer * config.n_embd * (seq_len or config.block_size)


def peak_flops(device: torch.device) -> Optional[float]:
    """The datasheet dense bf16 peak of a known CUDA GPU, else None."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def peak_flops_of(device_name: str) -> Optional[float]:
    """By whole words of the name ("NVIDIA A100-SXM4-80GB" is an A100; an "L40S" is not an "L4")."""
    words = set(re.split(r"[\s\-_]+", device_name))
    return next((flops for key, flops in PEAK_FLOPS.items() if key in words), None)


def rng_states() -> dict[str, Any]:
    """Every random generator's state as plain types and tensors (weights_only-loadable)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def data_fingerprint(tokens: np.ndarray) -> str:
    """Identifies a token split cheaply: its length and a hash of its first and last million tokens."""
    digest = hashlib.sha256(str(len(tokens)).encode())
    digest.update(np.ascontiguousarray(tokens[:1_000_000]).tobytes())
    digest.update(np.ascontiguousarray(tokens[-1_000_000:]).tobytes())
    return digest.hexdigest()[:16]


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its optimizer step, saves and exits."""

    def __init__(self) -> None:
        self.signal_number: Optional[int] = None
        self._previous = {}

    def install(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, number: int, frame: Any) -> None:
        self.signal_number = number

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclass
class TrainingState:
    """What a resumed run needs besides model and optimizer."""
    step: int = 0
    best_val_loss: float = math.inf
    tokens_seen: int = 0
    elapsed_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(self, config: TrainConfig, data_config: DataConfig) -> None:
        config.validate()
        self.config = config
        self.model_config = config.model_config()
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.distributed = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.distributed.local_rank if self.distributed.enabled else
                                       (self.device.index or 0))
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        world = self.distributed.world_size
        if config.gradient_accumulation_steps % world:
            raise UserError(f"--gradient_accumulation_steps ({config.gradient_accumulation_steps}) must be divisible "
                            f"by the number of processes ({world}) to keep the effective batch")
        self.micro_steps = config.gradient_accumulation_steps // world
        self.out_dir = Path(config.out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.log_dir = self.out_dir / "logs"
        if self.distributed.is_main:
            ensure_folder(self.checkpoint_dir)  # a bad --out_dir fails now, before data preparation

        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        self.data_dir = self._prepared_data(data_config)
        self.train_tokens = load_tokens(self.data_dir, "train")
        self.val_tokens = load_tokens(self.data_dir, "validation")
        for split, tokens in (("train", self.train_tokens), ("validation", self.val_tokens)):
            largest = int(tokens.max()) if len(tokens) else 0  # one pass over the memmap
            if largest >= self.model_config.vocab_size:
                raise UserError(f"the {split} split has token ids up to {largest:,}, beyond the model's "
                                f"vocabulary of {self.model_config.vocab_size:,} (preset {config.preset}); "
                                "use a preset with the GPT-2 vocabulary (33M, small, tiny)")
        block_size = self.model_config.block_size
        self.batches = WindowBatches(self.train_tokens, block_size, config.batch_size, seed=config.seed,
                                     rank=self.distributed.rank, world_size=world, device=self.device)
        self.steps_per_epoch = self.batches.batches_per_epoch // self.micro_steps
        if self.steps_per_epoch < 1:
            raise UserError(f"the training split ({len(self.train_tokens):,} tokens) is too small for one optimizer step of "
                            f"{config.batch_size * config.gradient_accumulation_steps} sequences of {block_size} tokens; "
                            "lower --batch_size or --gradient_accumulation_steps, or use more data")
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.eval_batches = fixed_eval_batches(self.val_tokens, block_size, config.batch_size, config.eval_iters,
                                               seed=config.seed)
        self.tokens_per_step = config.batch_size * config.gradient_accumulation_steps * block_size

        self.model = Model(self.model_config).to(self.device)
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.state = TrainingState()
        self.fingerprint = {"train": data_fingerprint(self.train_tokens), "validation": data_fingerprint(self.val_tokens)}
        self._resume()
        compiled = config.compile == "true" or (config.compile == "auto" and self.device.type == "cuda")
        self.forward_model = torch.compile(self.model) if compiled else self.model
        if self.distributed.enabled:
            self.forward_model = DistributedDataParallel(
                self.forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.flops_per_token = flops_per_token(self.model_config)
        self.peak_flops = peak_flops(self.device)

    def _prepared_data(self, data_config: DataConfig) -> Path:
        """Token files, prepared by rank 0 first when missing (the other ranks wait, then reuse them)."""
        if self.distributed.is_main:
            data_dir = prepare_data(data_config)
        barrier(self.distributed)
        if not self.distributed.is_main:
            data_dir = prepare_data(data_config, progress=False)
        return data_dir

    @property
    def best_model_path(self) -> Path:
        return self.checkpoint_dir / "best_model.pth"

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint_dir / "checkpoint.pth"

    def _resume(self) -> None:
        resume = self.config.resume
        if resume == "never":
            return
        path = self.checkpoint_path if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            return
        checkpoint = load_checkpoint(path)
        if "optimizer" not in checkpoint:
            raise UserError(f"{path} holds model weights only, not a training state to resume; "
                            "pass --resume never to start over")
        saved_config = checkpoint["config"]
        if saved_config != dataclasses.asdict(self.model_config):
            changed = sorted(k for k in saved_config if saved_config.get(k) != dataclasses.asdict(self.model_config).get(k))
            raise UserError(f"{path} was trained with a different model ({', '.join(changed)} differ); "
                            "use the same settings, another --out_dir, or --resume never")
        if checkpoint.get("data_fingerprint") != self.fingerprint:
            raise UserError(f"{path} was trained on different data than {self.data_dir}; "
                            "use the same data, another --out_dir, or --resume never")
        saved_seed = checkpoint.get("training_arguments", {}).get("seed")
        if saved_seed != self.config.seed:
            raise UserError(f"{path} was trained with --seed {saved_seed}; resuming exactly needs the same seed "
                            "(it sets the data order and dropout)")
        if checkpoint.get("world_batch") != [self.config.batch_size, self.distributed.world_size]:
            raise UserError(f"{path} was trained with batch size and processes {checkpoint.get('world_batch')}; "
                            f"resuming exactly needs the same ({self.config.batch_size}, {self.distributed.world_size})")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.batches.load_state_dict(checkpoint["data_position"])
        restore_rng_states(checkpoint["rng"][self.distributed.rank])
        self.state = TrainingState(**checkpoint["training_state"])
        self._say(f"resuming from {path} at step {self.state.step:,} of {self.total_steps:,}")

    def _say(self, message: str) -> None:
        if self.distributed.is_main:
            tqdm.write(message)

    def _gathered_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states, so each resumes its own dropout stream."""
        states = rng_states()
        if not self.distributed.enabled:
            return [states]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.distributed.world_size
        dist.all_gather_object(gathered, states)
        return gathered

    def save(self) -> None:
        """checkpoint.pth: everything needed to continue exactly (only rank 0 writes)."""
        rng = self._gathered_rng_states()
        if not self.distributed.is_main:
            return
        save_checkpoint(self.checkpoint_path, model_checkpoint(
            self.model,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            data_position=self.batches.state_dict(),
            rng=rng,
            training_state=dataclasses.asdict(self.state),
            data_fingerprint=self.fingerprint,
            world_batch=[self.config.batch_size, self.distributed.world_size],
            training_arguments=dataclasses.asdict(self.config),
            step=self.state.step,
            epoch=self.batches.epoch,
            best_val_loss=self.state.best_val_loss,
        ))

    @torch.inference_mode()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches (each rank scores its share; all ranks get the mean)."""
        self.model.eval()
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for index in range(self.distributed.rank, len(self.eval_batches), self.distributed.world_size):
            x, y = (t.to(self.device, non_blocking=True) for t in self.eval_batches[index])
            with autocast(self.device, self.dtype):
                _, loss = self.model(x, y, return_logits=False)
            total += torch.stack([loss.double(), torch.ones((), device=self.device, dtype=torch.float64)])
        all_reduce_sum(total, self.distributed)
        self.model.train()
        return (total[0] / total[1]).item()

    def train_step(self) -> torch.Tensor:
        """One optimizer step over `micro_steps` micro-batches; returns the mean loss (a device tensor)."""
        lr = learning_rate_at(self.state.step, self.config, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=self.device)
        for micro_step in range(self.micro_steps):
            x, y = self.batches.next_batch()
            last = micro_step == self.micro_steps - 1
            # DDP: all-reduce gradients once per optimizer step, on the last micro-batch only.
            sync = nullcontext() if last or not self.distributed.enabled else self.forward_model.no_sync()
            with sync:
                with autocast(self.device, self.dtype):
                    _, loss = self.forward_model(x, y, return_logits=False)
                loss = loss / self.micro_steps
                self.scaler.scale(loss).backward()
            step_loss += loss.detach().float()
        if self.config.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        return all_reduce_sum(step_loss, self.distributed) / self.distributed.world_size

    def run(self) -> dict[str, Any]:
        config = self.config
        log_path = self.log_dir / f"training_{datetime.now():%Y%m%d_%H%M%S}.log"
        run_log = None
        if self.distributed.is_main:
            run_log = RunLog(log_path, {"train": dataclasses.asdict(config), "model": dataclasses.asdict(self.model_config),
                                        "data_dir": str(self.data_dir)}, self.state.history,
                             tensorboard=config.tensorboard, wandb=config.wandb)
            self._say(f"model: {self.model.num_parameters():,} parameters "
                      f"({self.model.num_parameters(include_embeddings=False):,} without embeddings); "
                      f"device {self.device}, {str(self.dtype).removeprefix('torch.')}, "
                      f"{self.distributed.world_size} process(es); {self.total_steps:,} steps of "
                      f"{self.tokens_per_step:,} tokens ({self.steps_per_epoch:,} steps per epoch)")
        stop = StopRequest()
        stop.install()
        progress = tqdm(total=self.total_steps, initial=self.state.step, desc="training", unit="step",
                        disable=not self.distributed.is_main, dynamic_ncols=True)
        self.model.train()
        window_start, window_tokens = time.perf_counter(), 0
        run_start = time.perf_counter() - self.state.elapsed_seconds
        unchecked: Optional[tuple[int, torch.Tensor]] = None  # the last step whose loss is not yet known finite
        try:
            while self.state.step < self.total_steps:
                step_loss = self.train_step()
                # Checking the previous step's loss while this one runs on the device keeps the host queueing
                # work ahead; a step whose results are logged, evaluated or saved is checked before that.
                if unchecked is not None:
                    self._check_finite(*unchecked)
                unchecked = (self.state.step, step_loss)
                window_tokens += self.tokens_per_step
                self.state.elapsed_seconds = time.perf_counter() - run_start
                progress.update(1)
                step = self.state.step
                stopping = self._stop_requested(stop)
                saving = step % config.save_interval == 0 or step == self.total_steps or stopping
                if saving or step % config.log_interval == 0 or step % config.eval_interval == 0:
                    self._check_finite(*unchecked)
                    unchecked = None
                if step % config.log_interval == 0 or step == self.total_steps:
                    train_loss = step_loss.item()
                    tokens_per_second = window_tokens / (time.perf_counter() - window_start)
                    window_start, window_tokens = time.perf_counter(), 0
                    progress.set_postfix(epoch=self.batches.epoch, loss=f"{train_loss:.4f}",
                                         lr=f"{learning_rate_at(step - 1, config, self.total_steps):.2e}",
                                         tok_s=f"{tokens_per_second:,.0f}")
                if step % config.eval_interval == 0 or step == self.total_steps:
                    self._evaluate_and_record(step_loss.item(), run_log)
                if saving:
                    self.save()
                if stopping:
                    progress.close()
                    self._say(f"stopped by signal {stop.signal_number} after step {step:,}; saved {self.checkpoint_path}. "
                              "Run the same command again to resume.")
                    shutdown(self.distributed)
                    sys.exit(128 + stop.signal_number)
        finally:
            stop.uninstall()
            progress.close()
            if run_log is not None:
                run_log.close()
        summary = {
            "steps": self.state.step, "best_val_loss": self.state.best_val_loss, "tokens_seen": self.state.tokens_seen,
            "wall_seconds": round(self.state.elapsed_seconds, 1), "best_model": str(self.best_model_path),
            "checkpoint": str(self.checkpoint_path),
            "log": str(log_path) if log_path.exists() else "none (no evaluation in this run)",
            "loss_curve": str(log_path.parent / "loss_curve.png"),
        }
        if self.distributed.is_main:
            self._say("done: best validation loss {best_val_loss:.4f}, {tokens_seen:,} tokens in {wall_seconds} s\n"
                      "  best model:  {best_model}\n  checkpoint:  {checkpoint}\n  log:         {log}\n"
                      "  loss curve:  {loss_curve}".format(**summary))
        shutdown(self.distributed)
        return summary

    def _check_finite(self, step: int, step_loss: torch.Tensor) -> None:
        """Stop without saving when a step's loss is NaN or infinite (a host synchronisation)."""
        if not torch.isfinite(step_loss).item():
            raise UserError(f"the loss became {step_loss.item()} at step {step}; {self._stopped_without_saving}")

    @property
    def _stopped_without_saving(self) -> str:
        return (f"stopped without saving, so {self.checkpoint_path.parent} keeps what was saved before this step "
                "(try a lower --learning_rate, or --max_grad_norm)")

    def _stop_requested(self, stop: StopRequest) -> bool:
        """Whether any rank received SIGTERM/SIGINT (all ranks must stop at the same step)."""
        if self.distributed.enabled:  # a single process needs no device tensor, so no host synchronisation
            import torch.distributed as dist

            flag = torch.tensor([float(stop.signal_number or 0)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop.signal_number = int(flag.item()) or None
        return stop.signal_number is not None

    def _evaluate_and_record(self, train_loss: float, run_log: Optional[RunLog]) -> None:
        val_loss = self.evaluate()
        step = self.state.step
        if not math.isfinite(val_loss):
            raise UserError(f"the validation loss became {val_loss} at step {step}; {self._stopped_without_saving}")
        elapsed = self.state.elapsed_seconds
        tokens_per_second = self.state.tokens_seen / elapsed if elapsed > 0 else None
        mfu = None
        if self.peak_flops and tokens_per_second:
            mfu = self.flops_per_token * tokens_per_second / (self.peak_flops * self.distributed.world_size)
        entry = {"step": step, "epoch": self.batches.epoch, "train_loss": train_loss, "val_loss": val_loss,
                 "lr": learning_rate_at(step - 1, self.config, self.total_steps), "tokens_seen": self.state.tokens_seen,
                 "tokens_per_second": tokens_per_second, "mfu": mfu, "elapsed_seconds": round(elapsed, 2)}
        if val_loss < self.state.best_val_loss:
            self.state.best_val_loss = val_loss
            if self.distributed.is_main:
                save_checkpoint(self.best_model_path, model_checkpoint(self.model, step=step, val_loss=val_loss))
        if run_log is not None:
            run_log.record(entry)  # appends to self.state.history, which the checkpoint carries
        self._say(f"step {step:,}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")


def train(data_config: Optional[DataConfig] = None, **settings: Any) -> dict[str, Any]:
    """The seed's entry point: train(epochs=20, batch_size=32, ...) with any TrainConfig field."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"train() got unknown settings: {', '.join(unknown)}")
    return Trainer(TrainConfig(**settings), data_config or DataConfig()).run()
