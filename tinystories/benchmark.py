"""Throughput side by side: our training, evaluation, generation and data preparation against Hugging Face
transformers and bare tiktoken, and serve.py under concurrent clients, with the bounds that put the figures
in context.

Every measurement interleaves its contenders: round r runs each contender once, in an order rotated every
round, after one untimed warm-up call each (which also compiles). A machine that slows down for a while
slows every contender alike, and each figure is the median over the rounds with its spread (min-max).
docs/benchmarks.md says what each figure means and what limits it.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import importlib.util
import itertools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from model.model import Config, Model
from tinystories.checkpoint import load_model
from tinystories.checks import PRESET_HELP, preset_config, require_at_least
from tinystories.engine import Engine, GenerationRequest, sequence_seed
from tinystories.errors import UserError
from tinystories.hardware import (COMPILE_CHOICES, DEVICE_HELP, DTYPE_CHOICES, autocast, device_name, enable_tf32,
                                  flops_per_token, peak_flops, resolve_device, resolve_dtype, should_compile)
from tinystories.memory import loss_bytes, parameter_bytes, require_fits, training_window_bytes, window_bytes
from tinystories.precision import PRECISIONS, rounded_copy
from tinystories.sampling import SamplingConfig, decoding_model, sample_tokens
from tinystories.serving_benchmark import ServingWorkloads
from tinystories.tokenizer import EOT_ID, get_tokenizer
from tinystories.training import TrainConfig, make_optimizer

SECTIONS = ("training", "evaluation", "generation", "data", "cpu-inference", "serving")
DEFAULT_SECTIONS = ("training", "evaluation", "generation", "data")  # cpu-inference needs requirements-gguf.txt; serving starts servers
# A synthetic story in memory: its ~500 characters, our token array and tiktoken's list of Python ints.
SYNTHETIC_STORY_BYTES = 8000
PROMPT = "Once upon a time"
HF_MODEL = "HF GPT2LMHeadModel"
OURS_GENERATE = "ours, sample_tokens"
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
        raise UserError(f"--seq_len {seq_len} exceeds the {config.preset} preset's block_size {model_config.block_size}")
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
    from tinystories.hf import to_hf

    twin = to_hf(model).to(model.token_embedding.weight.device).train(model.training)
    twin.loss_type = "ForCausalLM"  # the loss it uses anyway; unset, transformers 5 warns about it
    return twin


def training_figures(settings: Settings, rounds: int, seed: int) -> tuple[list[Figure], dict[str, float]]:
    """Tokens/s of forward + backward + gradient clipping + fused AdamW step, the model FLOPs utilisation
    against the peak measured in the same rounds, and the seconds of each contender's warm-up."""
    torch.manual_seed(seed)
    ours = Model(settings.model_config).to(settings.device).train()
    models = {"ours, eager": (ours, True)}
    if settings.compile:
        models["ours, compiled"] = (torch.compile(copy.deepcopy(ours)), True)
    models[HF_MODEL] = (hf_twin(ours), False)
    x, y = random_batch(settings, torch.Generator().manual_seed(seed))
    train_config = TrainConfig()

    def trainer(model: torch.nn.Module, is_ours: bool) -> Callable[[], None]:
        optimizer = make_optimizer(model, train_config, settings.device)

        def steps() -> None:
            for _ in range(settings.steps):
                with autocast(settings.device, settings.dtype):
                    loss = model(x, y, return_logits=False)[1] if is_ours else model(input_ids=x, labels=y).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return steps

    tokens = settings.steps * settings.batch_size * settings.seq_len
    contenders = [Contender(name, trainer(model, is_ours), tokens) for name, (model, is_ours) in models.items()]
    rates, warmup = interleave(contenders + [peak_matmul(settings.device, settings.dtype)], rounds, settings.device,
                               "training")
    peak = rates.pop(PEAK)
    figures = compared("training", "tokens/s", rates, HF_MODEL, "HF")
    per_token = flops_per_token(settings.model_config, settings.seq_len)
    peaks = {"MFU": peak}
    datasheet = peak_flops(settings.device)
    if datasheet is not None:
        peaks[f"MFU of datasheet {datasheet / 1e12:,.0f} TFLOP/s"] = [datasheet] * rounds
    figures += [Figure("training", f"{label}, {name}", "% of peak",
                       [100 * per_token * rate / round_peak for rate, round_peak in zip(samples, peak_samples)])
                for label, peak_samples in peaks.items() for name, samples in rates.items()]
    figures.append(Figure("hardware", f"peak matmul ({str(settings.dtype).removeprefix('torch.')})", "TFLOP/s",
                          [rate / 1e12 for rate in peak]))
    return figures, warmup


def evaluation_figures(settings: Settings, rounds: int, seed: int) -> list[Figure]:
    """Tokens/s of an inference-mode forward and mean loss over a batch, as training's evaluation runs it."""
    torch.manual_seed(seed)
    ours = Model(settings.model_config).to(settings.device).eval()
    hf = hf_twin(ours)
    x, y = random_batch(settings, torch.Generator().manual_seed(seed))

    @torch.inference_mode()
    def ours_forward() -> None:
        for _ in range(settings.steps):
            with autocast(settings.device, settings.dtype):
                ours(x, y, return_logits=False)

    @torch.inference_mode()
    def hf_forward() -> None:
        for _ in range(settings.steps):
            with autocast(settings.device, settings.dtype):
                hf(input_ids=x, labels=y)

    tokens = settings.steps * settings.batch_size * settings.seq_len
    rates, _ = interleave([Contender("ours", ours_forward, tokens), Contender(HF_MODEL, hf_forward, tokens)],
                          rounds, settings.device, "evaluation")
    return compared("evaluation", "tokens/s", rates, HF_MODEL, "HF")


def weight_bytes_per_token(model: Model) -> int:
    """Bytes of weights one decoding step reads: every parameter but the position embedding (one row of it,
    and of the token embedding, is gathered; the tied token embedding is read whole as the output layer)."""
    position = model.position_embedding.weight
    return (model.num_parameters() - position.numel()) * position.element_size()


def weight_products(decoder: Model) -> Callable[[], None]:
    """One token's matrix-vector products through the decoder's own layers, back to back: decoding without
    attention, sampling, and the Python between the products."""
    config = decoder.config
    device = decoder.token_embedding.weight.device
    inputs = {width: torch.randn(1, 1, width, device=device) for width in (config.n_embd, config.ffn_size)}
    layers = [(layer, config.n_embd) for block in decoder.blocks for layer in (block.attn.qkv, block.attn.out_proj, block.mlp.fc)]
    layers += [(block.mlp.proj, config.ffn_size) for block in decoder.blocks] + [(decoder.lm_head, config.n_embd)]

    @torch.inference_mode()
    def products() -> None:
        for layer, width in layers:
            layer(inputs[width])
    return products


def generation_figures(settings: Settings, rounds: int, seed: int, new_tokens: int) -> list[Figure]:
    """Tokens/s of sampling `new_tokens` tokens at batch 1 with the same settings, with the bounds that memory
    bandwidth and the matrix-vector products alone put on it."""
    import transformers

    torch.manual_seed(seed)
    model = Model(settings.model_config).to(settings.device).eval()
    hf = hf_twin(model)
    decoder = decoding_model(model)
    prompt = get_tokenizer().encode_ordinary(PROMPT)
    sampling = SamplingConfig()
    hf_config = transformers.GenerationConfig(
        do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
        max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=EOT_ID)
    prompt_tensor = torch.tensor([prompt], device=settings.device)
    generator = torch.Generator(settings.device).manual_seed(seed)

    def ours() -> None:
        count = sum(1 for _ in sample_tokens(decoder, prompt, new_tokens, sampling, generator, stop_at_eos=False))
        assert count == new_tokens, f"ours generated {count} tokens, not {new_tokens}"

    @torch.inference_mode()
    def hf_generate() -> None:
        output = hf.generate(prompt_tensor, generation_config=hf_config, attention_mask=torch.ones_like(prompt_tensor))
        assert output.shape[1] == len(prompt) + new_tokens, f"HF generated {output.shape[1] - len(prompt)} tokens"

    batched = batched_generation(decoder, hf, hf_config, settings, seed, new_tokens)
    rates, _ = interleave([Contender(OURS_GENERATE, ours, new_tokens), Contender("HF generate", hf_generate, new_tokens),
                           *batched, Contender(PRODUCTS, weight_products(decoder), 1), read_bandwidth(settings.device)],
                          rounds, settings.device, "generation")
    bandwidth = rates.pop(BANDWIDTH)
    rates[BOUND] = [rate / weight_bytes_per_token(model) for rate in bandwidth]
    medians = {name: statistics.median(samples) for name, samples in rates.items()}
    ratios = {OURS_GENERATE: {"HF": medians[OURS_GENERATE] / medians["HF generate"],
                              "bound": medians[OURS_GENERATE] / medians[BOUND]},
              PRODUCTS: {"bound": medians[PRODUCTS] / medians[BOUND]},
              **batched_ratios(medians)}
    return [Figure("generation", name, "tokens/s", samples, ratios.get(name, {})) for name, samples in rates.items()] + \
        [Figure("hardware", BANDWIDTH, "GB/s", [rate / 1e9 for rate in bandwidth])]


GENERATION_BATCHES = (1, 8, 32)
BATCH_PROMPT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with "
                "her big red ball. One day, she saw a small dog under a tree, and the dog looked sad.")


def engine_name(batch: int) -> str:
    return f"ours, engine, {batch} seq"


def hf_batch_name(batch: int) -> str:
    return f"HF generate, {batch} seq"


def batched_prompts(count: int, longest: int) -> list[list[int]]:
    """`count` prompts of 4 to `longest` tokens (the start of one story), lengths spread over that range."""
    ids = get_tokenizer().encode_ordinary(BATCH_PROMPT)[:longest]
    return [ids[:4 + (number * 7) % (len(ids) - 3)] for number in range(count)]


def batched_generation(decoder: Model, hf: torch.nn.Module, hf_config: Any, settings: Settings, seed: int,
                       new_tokens: int) -> list[Contender]:
    """Aggregate tokens/s of decoding 1, 8 and 32 sequences together from prompts of different lengths: our
    engine against Hugging Face's batched generate (prompts left-padded), the same sampling settings."""
    longest = min(32, settings.model_config.block_size - new_tokens)
    contenders = []
    for batch in GENERATION_BATCHES:
        prompts = batched_prompts(batch, longest)
        requests = [GenerationRequest(prompt, new_tokens, SamplingConfig(), seed=sequence_seed(seed, number),
                                      stop_at_eos=False) for number, prompt in enumerate(prompts)]
        engine = Engine(decoder, max_batch=batch)
        width = max(len(prompt) for prompt in prompts)
        padded = torch.tensor([[EOT_ID] * (width - len(p)) + p for p in prompts], device=settings.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=settings.device)

        def ours(engine: Engine = engine, requests: list[GenerationRequest] = requests) -> None:
            counts = [len(result.token_ids) for result in engine.generate(requests)]
            assert counts == [new_tokens] * len(requests), f"ours generated {counts} tokens"

        @torch.inference_mode()
        def theirs(padded: torch.Tensor = padded, mask: torch.Tensor = mask) -> None:
            output = hf.generate(padded, attention_mask=mask, generation_config=hf_config)
            assert output.shape == (padded.shape[0], padded.shape[1] + new_tokens), f"HF gave {tuple(output.shape)}"

        contenders += [Contender(engine_name(batch), ours, batch * new_tokens),
                       Contender(hf_batch_name(batch), theirs, batch * new_tokens)]
    return contenders


def batched_ratios(medians: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each engine row against Hugging Face at the same batch and against our own single sequence; the
    engine's single sequence also against sample_tokens (the path generate.py took before the engine)."""
    single = medians[engine_name(1)]
    ratios = {engine_name(batch): {"HF": medians[engine_name(batch)] / medians[hf_batch_name(batch)],
                                   "ours at 1 seq": medians[engine_name(batch)] / single}
              for batch in GENERATION_BATCHES}
    ratios[engine_name(1)] = {"HF": ratios[engine_name(1)]["HF"], "sample_tokens": single / medians[OURS_GENERATE]}
    return ratios


def benchmark_stories(config: BenchConfig) -> list[str]:
    if config.data_path is None:
        from tinystories.data.synthetic import synthetic_stories

        return list(synthetic_stories("train", config.data_stories))
    from tinystories.data import read_stories

    return list(read_stories(config.data_path))


def data_figures(config: BenchConfig, settings: Settings, rounds: int) -> list[Figure]:
    """Megabytes of story text per second: our tokenize_stories against bare tiktoken, on the same threads."""
    from tinystories.data.pipeline import tokenize_stories

    stories = benchmark_stories(config)
    megabytes = sum(len(story.encode("utf-8")) for story in stories) / 1e6
    encoding = get_tokenizer()
    workers = settings.num_workers
    ours_ids = np.concatenate(list(tokenize_stories(stories, workers)))
    bare_ids = [ids + [EOT_ID] for ids in encoding.encode_ordinary_batch(stories, num_threads=workers)]
    if not np.array_equal(ours_ids, np.fromiter(itertools.chain.from_iterable(bare_ids), dtype=np.int64)):
        raise RuntimeError("tokenize_stories and tiktoken disagree on the benchmark stories")

    def ours() -> None:
        for _ in tokenize_stories(stories, workers):
            pass

    def bare() -> None:
        encoding.encode_ordinary_batch(stories, num_threads=workers)

    bare_name = "bare tiktoken encode_ordinary_batch"
    rates, _ = interleave([Contender(OURS_DATA, ours, megabytes), Contender(bare_name, bare, megabytes)], rounds,
                          torch.device("cpu"), "data")
    return compared("data", "MB/s", rates, bare_name, "tiktoken")


LLAMA_F32 = "llama.cpp f32"
REFERENCE = "ours float32"


def cpu_inference_model(config: BenchConfig) -> Model:
    if config.model is not None:
        return load_model(config.model)[0].eval()
    torch.manual_seed(config.seed)
    return Model(preset_config(config.preset, dropout=0.0)).eval()


@dataclass
class Agreement:
    """How a mode's next-token logits compare with ours in float32 over the same positions."""
    nll: float = 0.0  # summed cross-entropy of the actual next tokens
    positions: int = 0
    same_argmax: int = 0  # positions whose most likely token is ours float32's
    max_difference: float = 0.0  # largest |logit - ours float32 logit|


def agreements(reference: Callable[[list[int]], np.ndarray], modes: dict[str, Callable[[list[int]], np.ndarray]],
               text: np.ndarray, block_size: int) -> tuple[Agreement, dict[str, Agreement]]:
    """Every mode's logits (T, V) against the reference's, window by window in the windows evaluate.py scores:
    consecutive windows of block_size inputs, each read from its own start (one window's logits at a time)."""
    ours, results = Agreement(), {name: Agreement() for name in modes}
    for start in range(0, len(text) - 1, block_size):
        window = text[start:start + block_size + 1].astype(np.int64)
        inputs, targets = window[:-1].tolist(), window[1:]
        expected = reference(inputs)
        rows = np.arange(len(targets))
        for name, logits in [(REFERENCE, expected)] + [(name, mode(inputs)) for name, mode in modes.items()]:
            result = ours if name == REFERENCE else results[name]
            scores = logits.astype(np.float64)
            peak = scores.max(axis=1)
            result.nll += float((peak + np.log(np.exp(scores - peak[:, None]).sum(axis=1)) - scores[rows, targets]).sum())
            result.positions += len(targets)
            result.same_argmax += int((logits.argmax(axis=1) == expected.argmax(axis=1)).sum())
            result.max_difference = max(result.max_difference, float(np.abs(logits - expected).max()))
    return ours, results


def torch_logits(model: Model) -> Callable[[list[int]], np.ndarray]:
    @torch.inference_mode()
    def logits(ids: list[int]) -> np.ndarray:
        return model(torch.tensor([ids]))[0][0].numpy()
    return logits


def cpu_inference_figures(config: BenchConfig, rounds: int) -> tuple[list[Figure], dict[str, str], int]:
    """Single-stream tokens/s on the CPU of our decoder in each precision and of llama.cpp on the GGUF export in
    each weight type, interleaved, same prompt, sampling settings and threads; and how far each mode's logits
    are from ours in float32 on the same text (loss, largest difference, greedy agreement). Also the llama.cpp
    modes that cannot run here, with the reason, and the number of positions compared."""
    from tinystories import llama_cpp_runner
    from tinystories.data.pipeline import encode_stories
    from tinystories.gguf_export import OUTTYPES, save_gguf

    model = cpu_inference_model(config)
    block_size = model.config.block_size
    prompt = get_tokenizer().encode_ordinary(PROMPT)
    if len(prompt) + config.new_tokens > block_size:  # llama.cpp has no sliding window past its positions
        raise UserError(f"--new_tokens {config.new_tokens} plus the {len(prompt)}-token prompt exceed the model's "
                        f"block_size {block_size}; lower --new_tokens")
    text = encode_stories(get_tokenizer(), benchmark_stories(config))[:config.compare_tokens + 1]
    sampling = SamplingConfig()
    generator = torch.Generator().manual_seed(config.seed)
    contenders, modes, skipped = [], {}, {}

    for precision in PRECISIONS:
        decoder = decoding_model(model, precision)

        def ours(decoder: Model = decoder) -> None:
            count = sum(1 for _ in sample_tokens(decoder, prompt, config.new_tokens, sampling, generator,
                                                 stop_at_eos=False))
            assert count == config.new_tokens, f"ours generated {count} tokens, not {config.new_tokens}"
        contenders.append(Contender(f"ours {precision}", ours, config.new_tokens))
        if precision != "float32":
            modes[f"ours {precision}"] = torch_logits(rounded_copy(model, precision))

    with tempfile.TemporaryDirectory() as folder:
        for outtype in OUTTYPES:
            name, path = f"llama.cpp {outtype}", Path(folder) / f"model-{outtype}.gguf"
            save_gguf(model, path, outtype)
            reason = llama_cpp_runner.failure(path)
            if reason is not None:
                skipped[name] = reason
                continue
            scorer = llama_cpp_runner.load(path, n_ctx=block_size, logits_all=True)
            modes[name] = lambda ids, scorer=scorer: llama_cpp_runner.logits(scorer, ids)
            llm = llama_cpp_runner.load(path, n_ctx=block_size)

            def theirs(llm: Any = llm) -> None:
                count = len(llama_cpp_runner.sample(llm, prompt, config.new_tokens, sampling))
                assert count == config.new_tokens, f"llama.cpp generated {count} tokens, not {config.new_tokens}"
            contenders.append(Contender(name, theirs, config.new_tokens))
        if LLAMA_F32 not in modes:
            raise UserError(f"llama.cpp cannot run the f32 GGUF file here: {skipped[LLAMA_F32]}")
        reference, results = agreements(torch_logits(model), modes, text, block_size)
        rates, _ = interleave(contenders, rounds, torch.device("cpu"), "cpu-inference")
    figures = compared("cpu-inference", "tokens/s", rates, LLAMA_F32, LLAMA_F32)
    for name, result in results.items():
        figures += [
            Figure("cpu-inference", f"loss - {REFERENCE}, {name}", "nats/token",
                   [(result.nll - reference.nll) / result.positions]),
            Figure("cpu-inference", f"max |logit - {REFERENCE}|, {name}", "logit", [result.max_difference]),
            Figure("cpu-inference", f"greedy token = {REFERENCE}'s, {name}", "% of positions",
                   [100 * result.same_argmax / result.positions])]
    return figures, skipped, reference.positions


def serving_figures(settings: Settings, rounds: int, seed: int, new_tokens: int) -> list[Figure]:
    """serve.py under 1, 4 and 16 concurrent streaming clients: aggregate tokens/s (with its ratio to one client
    and to the engine alone, without HTTP) and the median and 95th percentile of the time to first token."""
    torch.manual_seed(seed)
    model = Model(settings.model_config).to(settings.device).eval()
    with ServingWorkloads(model, settings.device, new_tokens, seed) as serving:
        workloads = serving.workloads
        rates, _ = interleave([Contender(workload.name, workload.run, workload.tokens) for workload in workloads],
                              rounds, torch.device("cpu"), "serving")
    medians = {name: statistics.median(samples) for name, samples in rates.items()}
    one_client, engine_alone = workloads[0].name, workloads[-1].name
    figures = []
    for workload in workloads[:-1]:
        clients = workload.tokens // new_tokens
        ratios = {"1 client": medians[workload.name] / medians[one_client]} if workload.name != one_client else {}
        ratios["engine alone"] = medians[workload.name] / medians[engine_alone]
        milliseconds = [1000 * seconds for seconds in workload.first_token_seconds]
        by_round = [milliseconds[start:start + clients] for start in range(clients, len(milliseconds), clients)]
        figures += [Figure("serving", workload.name, "tokens/s", rates[workload.name], ratios),  # each round's:
                    Figure("serving", f"{workload.name}, time to first token, median", "ms",
                           [statistics.median(first_tokens) for first_tokens in by_round]),
                    Figure("serving", f"{workload.name}, time to first token, p95", "ms",
                           [float(np.percentile(first_tokens, 95)) for first_tokens in by_round])]
    return figures + [Figure("serving", engine_alone, "tokens/s", rates[engine_alone])]


def package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Every figure of the sections asked for, and what they were measured on and with."""
    started = time.perf_counter()
    settings = resolve_settings(config)
    sections = config.section_list
    enable_tf32(settings.device)
    report: dict[str, Any] = {
        "device": str(settings.device), "device_name": device_name(settings.device), "torch": torch.__version__,
        **{package: package_version(package) for package in ("transformers", "tiktoken", "llama-cpp-python")},
        "settings": {**dataclasses.asdict(config), "resolved": settings.as_dict(),
                     "sampling": dataclasses.asdict(SamplingConfig())},
    }
    figures: list[Figure] = []
    if "training" in sections:
        training, warmup = training_figures(settings, config.repeats, config.seed)
        figures += training
        report["training"] = {"flops_per_token": flops_per_token(settings.model_config, settings.seq_len),
                              "warmup_seconds": warmup}
    if "evaluation" in sections:
        figures += evaluation_figures(settings, config.repeats, config.seed)
    if "generation" in sections:
        figures += generation_figures(settings, config.repeats, config.seed, config.new_tokens)
    if "data" in sections:
        figures += data_figures(config, settings, config.repeats)
    if "cpu-inference" in sections:
        inference, skipped, positions = cpu_inference_figures(config, config.repeats)
        figures += inference
        report["cpu_inference"] = {"model": config.model or f"random weights, preset {config.preset}",
                                   "positions_compared": positions, "not_run": skipped}
        for name, reason in skipped.items():
            print(f"cpu-inference: {name} not measured: {reason}", file=sys.stderr)
    if "serving" in sections:
        figures += serving_figures(settings, config.repeats, config.seed, config.serving_tokens)
    ordered = [figure for figure in figures if figure.section != "hardware"] + \
        [figure for figure in figures if figure.section == "hardware"]
    report["figures"] = [figure.as_dict() for figure in ordered]
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def format_table(report: dict[str, Any]) -> str:
    """The figures as one text table: median, spread over the rounds, unit, and ratios in their own column."""
    header = ("section", "figure", "median", "spread (min-max)", "unit", "ratio (median / median)")
    rows = [header] + [(figure["section"], figure["name"], _number(figure["median"]),
                        f"{_number(figure['min'])}-{_number(figure['max'])}", figure["unit"],
                        ", ".join(f"{ratio:.2f}x {name}" for name, ratio in figure["ratios"].items()))
                       for figure in report["figures"]]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    aligned = [[cell.rjust(width) if column in (2, 3) else cell.ljust(width)
                for column, (cell, width) in enumerate(zip(row, widths))] for row in rows]
    lines = ["  ".join(row).rstrip() for row in aligned]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
