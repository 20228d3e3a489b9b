"""Continue a prompt with a trained model, streaming the text as it is generated.

    python generate.py --prompt "Once upon a time" --temperature 0.8 --top_k 50 --top_p 0.95
    python generate.py --prompt_file prompts.txt --num_samples 4    # every sample decoded together
    python generate.py --num_beams 5 --max_tokens 200        # the paper's greedy beam search
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

from tinystories.checks import require_at_least
from tinystories.cli import ArgumentParser, parse_dataclasses
from tinystories.errors import UserError, run_main
from tinystories.evaluation.subjects import CheckpointSubject, HuggingFaceSubject, load_subject
from tinystories.files import (
    atomic_write,
    check_not_an_input,
    check_output_file,
    folders_removed_on_failure,
    read_text_file,
)
from tinystories.generation.beams import beam_complete
from tinystories.generation.decoders import decoding_model
from tinystories.generation.engine import Engine
from tinystories.generation.requests import GenerationRequest, SequenceResult, default_batch_size, sequence_seed
from tinystories.generation.sampling import SamplingConfig
from tinystories.generation.weight_formats import WEIGHT_FORMAT_HELP, WEIGHT_FORMATS
from tinystories.hardware import DEVICE_HELP, resolve_device
from tinystories.memory import require_fits, sequence_bytes
from tinystories.paths import DEFAULT_MODEL
from tinystories.tokenizer import get_tokenizer


@dataclass
class GenerateConfig:
    prompt: str = field(default="Once upon a time", metadata={"help": "the text to continue"})
    prompt_file: Optional[str] = field(default=None, metadata={
        "metavar": "FILE", "help": "continue every line of FILE instead of --prompt (blank lines are skipped)"})
    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": "checkpoint (.pth), Hugging Face model folder or Hub id (e.g. roneneldan/TinyStories-33M)"})
    max_tokens: int = field(default=256, metadata={"help": "new tokens per sample, at most"})
    num_samples: int = field(default=1, metadata={"help": "samples per prompt"})
    num_beams: int = field(default=1, metadata={
        "help": "beam search with this many beams when above 1: deterministic, ignores --temperature, "
                "--top_k and --top_p (the paper evaluated with 5)"})
    seed: Optional[int] = field(default=None, metadata={
        "help": "random seed: the same seed gives the same text, whatever --batch_size (None: a fresh seed, "
                "reported by --json)"})
    batch_size: Optional[int] = field(default=None, metadata={
        "help": "samples decoded together (None: 32 on the CPU, 256 on GPUs); each takes a KV cache of "
                "2 x n_layer x block_size x n_embd x 4 bytes (9 MiB for the 33M model)"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    precision: str = field(default="float32", metadata={
        "choices": list(WEIGHT_FORMATS), "help": WEIGHT_FORMAT_HELP + " (our checkpoints only)"})
    ignore_eos: bool = field(default=False, metadata={
        "help": "keep generating after <|endoftext|> (which then appears in the text) until --max_tokens"})
    json: bool = field(default=False, metadata={
        "help": "print one JSON document (text, token ids, tokens/s per sample) instead of streaming text"})
    output: Optional[str] = field(default=None, metadata={
        "metavar": "FILE", "help": "write the JSON document to FILE instead of stdout (implies --json); written "
                                   "only when every sample is done, so a failed run leaves no file"})

    def __post_init__(self) -> None:
        require_at_least(self, ("batch_size", "max_tokens", "num_samples", "num_beams"))
        if self.num_beams > 1 and self.num_samples > 1:
            raise UserError("beam search is deterministic: --num_samples must be 1 with --num_beams above 1")
        if self.prompt_file is None and not self.prompt:
            raise UserError("--prompt is empty; give some text to continue")
        if self.output is not None:
            self.json = True


def read_prompts(config: GenerateConfig) -> list[str]:
    if config.prompt_file is None:
        return [config.prompt]
    path = Path(config.prompt_file)
    prompts = [line for line in read_text_file(path, f"prompt file {path}").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompt file {path} holds no prompts (one per line)")
    return prompts


def parse_arguments(argv: Optional[list[str]] = None) -> tuple[GenerateConfig, SamplingConfig]:
    parser = ArgumentParser(description="Continue a prompt with a trained TinyStories model.")
    config, sampling = parse_dataclasses(parser, [(GenerateConfig, "generation"), (
        SamplingConfig, "sampling (Hugging Face's order: temperature, top-k, top-p)")], argv)
    return config, sampling


def write_text(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def label(config: GenerateConfig, prompts: list[str], prompt_number: int, sample_number: int) -> str:
    if len(prompts) * config.num_samples == 1:
        return ""
    return f"=== prompt {prompt_number}/{len(prompts)}, sample {sample_number}/{config.num_samples} ===\n"


def report_speed(completion: SequenceResult) -> None:
    print(f"[{len(completion.token_ids)} tokens in {completion.seconds:.2f} s, "
          f"{completion.tokens_per_second:.1f} tokens/s]", file=sys.stderr)


def beam_completions(decoder: torch.nn.Module, prompts: list[str],
                     config: GenerateConfig) -> Iterator[tuple[int, int, SequenceResult]]:
    """Beam search, one prompt at a time (its text arrives in one piece)."""
    for prompt_number, prompt in enumerate(prompts, start=1):
        if not config.json:
            write_text(label(config, prompts, prompt_number, 1) + prompt)
        completion = beam_complete(decoder, prompt, config.max_tokens, config.num_beams, not config.ignore_eos)
        if not config.json:
            write_text(completion.text)
        yield prompt_number, 1, completion


def sampled_completions(engine: Engine, prompts: list[str], config: GenerateConfig, sampling: SamplingConfig,
                        seed: int) -> Iterator[tuple[int, int, SequenceResult]]:
    """Every sample decoded together by the engine, handed out in prompt/sample order as each is ready; a
    lone sample streams its text as it is generated."""
    tokenizer = get_tokenizer()
    numbers = [(p, s) for p in range(1, len(prompts) + 1) for s in range(1, config.num_samples + 1)]
    handles = [engine.submit(GenerationRequest(tokenizer.encode_ordinary(prompts[p - 1]), config.max_tokens, sampling,
                                               seed=sequence_seed(seed, k), stop_at_eos=not config.ignore_eos,
                                               prompt=prompts[p - 1]))
               for k, (p, _) in enumerate(numbers)]
    for (prompt_number, sample_number), handle in zip(numbers, handles):
        prompt = prompts[prompt_number - 1]
        if not config.json:
            write_text(label(config, prompts, prompt_number, sample_number) + prompt)
            if len(handles) == 1:
                for event in handle.events():
                    write_text(event.text)
            else:
                write_text(handle.result().text)
        yield prompt_number, sample_number, handle.result()


def hf_completions(subject: HuggingFaceSubject, prompts: list[str], config: GenerateConfig,
                   sampling: SamplingConfig, seed: int) -> Iterator[tuple[int, int, SequenceResult]]:
    """A Hugging Face model: every sample through transformers' generate(), in batches; texts arrive whole."""
    numbers = [(p, s) for p in range(1, len(prompts) + 1) for s in range(1, config.num_samples + 1)]
    completions = subject.complete([prompts[p - 1] for p, _ in numbers], config.max_tokens, sampling, seed,
                                   config.batch_size or default_batch_size(subject.device),
                                   num_beams=config.num_beams, stop_at_eos=not config.ignore_eos)
    for (prompt_number, sample_number), completion in zip(numbers, completions):
        if not config.json:
            write_text(label(config, prompts, prompt_number, sample_number) + completion.prompt + completion.text)
        yield prompt_number, sample_number, completion


def main() -> None:
    config, sampling = parse_arguments()
    # The --output check below creates its folder; a run that then fails leaves no empty folders behind.
    with folders_removed_on_failure(*([Path(config.output).parent] if config.output is not None else [])):
        generate_and_print(config, sampling)


def generate_and_print(config: GenerateConfig, sampling: SamplingConfig) -> None:
    if config.output is not None:  # writing over the checkpoint or the prompt file would destroy it
        inputs = [config.model] + ([config.prompt_file] if config.prompt_file is not None else [])
        check_not_an_input(config.output, "--output", inputs)
    prompts = read_prompts(config)
    if config.output is not None:
        check_output_file(config.output, "--output")  # an unusable path fails now, not after the sampling
    device = resolve_device(config.device)
    subject = load_subject(config.model, device, weight_format=config.precision)
    # A Hugging Face model decodes with transformers' generate() and prints each text in one piece.
    decoder = decoding_model(subject.model, subject.weight_format) if isinstance(subject, CheckpointSubject) else None
    if config.num_beams > 1 and isinstance(subject, CheckpointSubject):
        # Beam search decodes num_beams sequences at once (the engine checks its own batch).
        model_config = subject.model.config
        longest = max(len(prompt) for prompt in prompts) + config.max_tokens  # characters bound tokens
        require_fits("--num_beams", config.num_beams, sequence_bytes(model_config, longest), device,
                     what=f" for its sequences of {model_config.block_size} positions")
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    completions: list[tuple[int, int, SequenceResult]] = []
    engine = None
    if decoder is None:
        results = hf_completions(subject, prompts, config, sampling, seed)
    elif config.num_beams > 1:
        results = beam_completions(decoder, prompts, config)
    else:
        batch_size = config.batch_size or default_batch_size(device)
        engine = Engine(decoder, batch_size, sequences=len(prompts) * config.num_samples)
        engine.start()
        results = sampled_completions(engine, prompts, config, sampling, seed)
    try:
        for prompt_number, sample_number, completion in results:
            completions.append((prompt_number, sample_number, completion))
            if not config.json:
                write_text("\n")
                report_speed(completion)
    finally:
        if engine is not None:
            engine.shutdown()
    if config.json:
        document = {
            "model": config.model, "step": subject.step, "seed": seed, "device": str(device),
            "max_tokens": config.max_tokens, "num_beams": config.num_beams, "ignore_eos": config.ignore_eos,
            "sampling": asdict(sampling),
            "samples": [{"prompt_number": p, "sample": s, "prompt": c.prompt, "text": c.text, "token_ids": c.token_ids,
                         "new_tokens": len(c.token_ids), "ended_with_eos": c.ended_with_eos,
                         "seconds": round(c.seconds, 4), "tokens_per_second": round(c.tokens_per_second, 2)}
                        for p, s, c in completions],
        }
        text = json.dumps(document, ensure_ascii=False) + "\n"
        if config.output is None:
            write_text(text)
        else:
            atomic_write(config.output, lambda file: file.write(text.encode("utf-8")))
            print(f"wrote {config.output}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
