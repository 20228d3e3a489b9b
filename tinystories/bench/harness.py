"""The benchmark's harness: its settings, and the interleaved timing every section uses.

bench.py measures throughput side by side: our training, evaluation, generation and data preparation against
Hugging Face transformers and bare tiktoken, decoding on the CPU against llama.cpp, and serve.py under concurrent
clients, with the bounds that put the figures in context. One module per section (training.py, ...); run.py
runs the sections asked for.

Every measurement interleaves its contenders: round r runs each contender once, in an order rotated every
round, after one untimed warm-up call each (which also compiles). A machine that slows down for a while
slows every contender alike, and each figure is the median over the rounds with its spread (min-max).
docs/benchmarks.md says what each figure means and what limits it.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm import tqdm

from model.model import Config, Model
from tinystories.checks import PRESET_HELP, preset_config, require_at_least
from tinystories.errors import UserError
from tinystories.hardware import (
    COMPILE_CHOICES,
    DEVICE_HELP,
    DTYPE_CHOICES,
    resolve_device,
    resolve_dtype,
    should_compile,
)
from tinystories.memory import loss_bytes, parameter_bytes, require_fits, training_window_bytes, window_bytes
from tinystories.tokenizer import get_tokenizer

SECTIONS = ("training", "evaluation", "generation", "data", "cpu-inference", "serving")
# cpu-inference needs requirements-gguf.txt; serving starts servers
DEFAULT_SECTIONS = ("training", "evaluation", "generation", "data")
# A synthetic story in memory: its ~500 characters, our token array and tiktoken's list of Python ints.
SYNTHETIC_STORY_BYTES = 8000
PROMPT = "Once upon a time"
HF_MODEL = "HF GPT2LMHeadModel"
OURS_DATA = "ours, tokenize_stories"
PRODUCTS = "ours, weight products only"
BOUND = "bandwidth bound"
PEAK = "peak matmul"
BANDWIDTH = "read bandwidth"


@dataclass
class BenchConfig:
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    preset: str = field(default="33M", metadata={"help": PRESET_HELP})
    batch_size: Optional[int] = field(default=None, metadata={
        "help": "sequences per training and evaluation batch (None: 2 on the CPU, 32 on GPUs)"})
    seq_len: Optional[int] = field(default=None, metadata={
        "help": "tokens per sequence, at most the preset's block_size (None: block_size)"})
    repeats: int = field(default=5, metadata={"help": "interleaved rounds per measurement; figures are their median"})
    steps: Optional[int] = field(default=None, metadata={
        "help": "training steps or evaluation batches timed per round (None: 1 on the CPU, 10 on GPUs)"})
    new_tokens: int = field(default=256, metadata={
        "help": "tokens generated per sequence and round, EOS ignored (batches of 1, 8 and 32 sequences)"})
    serving_tokens: int = field(default=128, metadata={
        "help": "tokens each client of the serving section streams, EOS ignored"})
    dtype: str = field(default="auto", metadata={
        "choices": DTYPE_CHOICES, "help": "training and evaluation precision (auto: bfloat16 autocast on GPUs, "
                                          "float32 on the CPU); generation runs in float32 as generate.py does"})
    compile: str = field(default="auto", metadata={
        "choices": COMPILE_CHOICES,
        "help": "also time a torch.compile'd copy of our model in training (auto: on CUDA only; "
                "compiling for the CPU takes minutes)"})
    data_path: Optional[str] = field(default=None, metadata={
        "metavar": "FILES", "help": "stories for the data-preparation contenders, as prepare.py --data_path reads "
                                    "them (e.g. a .jsonl with a \"text\" field); None: synthetic stories"})
    data_stories: int = field(default=5000, metadata={"help": "synthetic stories to tokenize (without --data_path)"})
    num_workers: Optional[int] = field(default=None, metadata={
        "help": "tokenizer threads, the same for both data contenders (None: every CPU)"})
    sections: str = field(default=",".join(DEFAULT_SECTIONS), metadata={
        "help": "comma-separated subset of " + ", ".join(SECTIONS)})
    model: Optional[str] = field(default=None, metadata={
        "help": "cpu-inference: a trained checkpoint to time and score (None: random weights of --preset)"})
    compare_tokens: int = field(default=8192, metadata={
        "help": "cpu-inference: positions of --data_path stories (or synthetic ones) where each mode's logits "
                "are compared with ours in float32"})
    seed: int = field(default=1337, metadata={"help": "seed for the weights, batches and sampling"})
    json: Optional[str] = field(default=None, metadata={
        "metavar": "PATH", "help": "where the JSON report goes; an existing file is replaced (None: "
                                   "results/bench_YYYYMMDD_HHMMSS.json, a new file each run, so earlier reports stay)"})

    def __post_init__(self) -> None:
        require_at_least(self, ("batch_size", "seq_len", "steps", "num_workers", "repeats", "new_tokens",
                                "data_stories", "compare_tokens", "serving_tokens"))
        unknown = sorted(set(self.section_list) - set(SECTIONS))
        if unknown or not self.section_list:
            raise UserError(f"--sections must name some of {', '.join(SECTIONS)}; got {self.sections!r}")

    @property
    def section_list(self) -> list[str]:
        return [name.strip() for name in self.sections.split(",") if name.strip()]

    def report_path(self, started: datetime) -> Path:
        """--json, or a name of its own for a run started at `started`."""
        return Path(self.json) if self.json else Path("results") / f"bench_{started:%Y%m%d_%H%M%S}.json"


@dataclass
class Settings:
    """The benchmark's settings with every default resolved for the device (they go into the JSON)."""
    device: torch.device
    dtype: torch.dtype
    model_config: Config
    batch_size: int
    seq_len: int
    steps: int
    compile: bool
    num_workers: int

    def as_dict(self) -> dict[str, Any]:
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "model": dataclasses.asdict(self.model_config), "batch_size": self.batch_size,
                "seq_len": self.seq_len, "steps": self.steps, "compile": self.compile, "num_workers": self.num_workers}


def resolve_settings(config: BenchConfig) -> Settings:
    device = resolve_device(config.device)
    model_config = preset_config(config.preset)
    seq_len = config.seq_len or model_config.block_size
    if seq_len > model_config.block_size:
        raise UserError(f"--seq_len {seq_len} exceeds the {config.preset} preset's block_size "
                        f"{model_config.block_size}")
    prompt_length = len(get_tokenizer().encode_ordinary(PROMPT))
    # Hugging Face's generate cannot go past its learned positions (ours slides its window), so keep within them.
    if "generation" in config.section_list and prompt_length + config.new_tokens > model_config.block_size:
        raise UserError(f"--new_tokens {config.new_tokens} plus the {prompt_length}-token prompt exceed the "
                        f"{config.preset} preset's block_size {model_config.block_size}; lower --new_tokens")
    if set(config.section_list) - {"data", "cpu-inference"} and importlib.util.find_spec("transformers") is None:
        raise UserError("bench.py compares against Hugging Face transformers: pip install -r requirements-dev.txt "
                        "(or pass --sections data)")
    on_gpu = device.type == "cuda"
    settings = Settings(device=device, dtype=resolve_dtype(config.dtype, device), model_config=model_config,
                        batch_size=config.batch_size or (32 if on_gpu else 2), seq_len=seq_len,
                        steps=config.steps or (10 if on_gpu else 1),
                        compile=should_compile(config.compile, device),
                        num_workers=config.num_workers or os.cpu_count() or 1)
    _check_sizes_fit(config, settings)
    return settings


def _check_sizes_fit(config: BenchConfig, settings: Settings) -> None:
    """Refuse sizes that cannot fit in memory before minutes of measuring end in a kill."""
    model_config, seq_len = settings.model_config, settings.seq_len
    if "training" in config.section_list:
        # Ours and Hugging Face's model, each with gradients and AdamW's two moments.
        require_fits("--batch_size", settings.batch_size, training_window_bytes(model_config, seq_len), settings.device,
                     fixed_bytes=8 * parameter_bytes(model_config), what=f" for training sequences of {seq_len} tokens")
    if "evaluation" in config.section_list:
        require_fits("--batch_size", settings.batch_size, window_bytes(model_config, seq_len), settings.device,
                     fixed_bytes=loss_bytes(settings.device), what=f" for evaluation sequences of {seq_len} tokens")
    if "data" in config.section_list and config.data_path is None:
        require_fits("--data_stories", config.data_stories, SYNTHETIC_STORY_BYTES, torch.device("cpu"),
                     what=" for the stories and their tokens")


@dataclass
class Figure:
    """One row of the report: a contender's rate in each round (or a figure derived from rates)."""
    section: str
    name: str
    unit: str
    samples: list[float]
    ratios: dict[str, float] = field(default_factory=dict)  # this figure's median / that figure's median

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {"section": self.section, "name": self.name, "unit": self.unit, "median": self.median,
                "min": min(self.samples), "max": max(self.samples), "samples": self.samples, "ratios": self.ratios}


@dataclass
class Contender:
    name: str
    run: Callable[[], Any]  # one timed unit of work
    work: float  # what one run does, in the numerator of the unit (tokens, megabytes, ...)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(contender: Contender, device: torch.device) -> float:
    """Seconds of one run of the contender, the device's queued work included."""
    synchronize(device)
    started = time.perf_counter()
    contender.run()
    synchronize(device)
    return time.perf_counter() - started


def interleave(contenders: list[Contender], rounds: int, device: torch.device,
               description: str) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Rates (work per second) of each contender in each round, and the seconds of each one's warm-up."""
    rates: dict[str, list[float]] = {contender.name: [] for contender in contenders}
    with tqdm(total=(rounds + 1) * len(contenders), desc=description, unit="run", leave=False) as progress:
        progress.set_postfix_str("warm-up")
        warmup_seconds = {}
        for contender in contenders:
            warmup_seconds[contender.name] = timed(contender, device)
            progress.update(1)
        progress.set_postfix_str("")
        for round_index in range(rounds):
            shift = round_index % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                rates[contender.name].append(contender.work / timed(contender, device))
                progress.update(1)
    return rates, warmup_seconds


def peak_matmul(device: torch.device, dtype: torch.dtype) -> Contender:
    """Large square matrix products in `dtype`: the device's practical peak FLOP/s for training."""
    size, repeats = (8192, 20) if device.type == "cuda" else (2048, 3)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))

    def products() -> None:
        for _ in range(repeats):
            torch.mm(a, b)
    return Contender(PEAK, products, 2 * size**3 * repeats)


def read_bandwidth(device: torch.device) -> Contender:
    """The sum of a tensor far larger than the caches: how fast memory can be read (bytes/s)."""
    data = torch.ones(1 << 28, device=device)  # 1 GiB of float32
    return Contender(BANDWIDTH, data.sum, data.numel() * data.element_size())


def compared(section: str, unit: str, rates: dict[str, list[float]], baseline: str, label: str) -> list[Figure]:
    """A figure per contender, baseline last; the others carry their ratio to it under `label`."""
    reference = statistics.median(rates[baseline])
    return [Figure(section, name, unit, samples, {label: statistics.median(samples) / reference})
            for name, samples in rates.items() if name != baseline] + [Figure(section, baseline, unit, rates[baseline])]


def random_batch(settings: Settings, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (settings.batch_size, settings.seq_len)
    x, y = (torch.randint(0, settings.model_config.vocab_size, shape, generator=generator) for _ in range(2))
    return x.to(settings.device), y.to(settings.device)


def hf_twin(model: Model) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel with the same config and weights, on the same device, in the same mode."""
    from tinystories.interop.hf import to_hf

    twin = to_hf(model).to(model.token_embedding.weight.device).train(model.training)
    twin.loss_type = "ForCausalLM"  # the loss it uses anyway; unset, transformers 5 warns about it
    return twin
