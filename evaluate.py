"""Measure a model: exact loss, perplexity and bits per byte on a split, and optionally the quality of
completions of the split's first sentences (definitions in tinystories/evaluation.py and the README).

    python evaluate.py --model results/checkpoints/best_model.pth --split validation --generate 100
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from tinystories.checkpoint import load_model
from tinystories.checks import require_at_least
from tinystories.cli import ArgumentParser, parse_dataclasses
from tinystories.data import load_tokens, read_stories
from tinystories.data.pipeline import encode_stories
from tinystories.engine import complete_all, default_batch_size
from tinystories.errors import UserError, run_main
from tinystories.evaluation import (ConcatenatedTokens, Tokens, count_stories, first_sentence, first_stories,
                                   generation_quality, story_texts, stream_loss)
from tinystories.files import atomic_write, ensure_folder, folders_removed_on_failure, write_json
from tinystories.hardware import DEVICE_HELP, resolve_device
from tinystories.paths import DEFAULT_DATA_DIR, DEFAULT_MODEL
from tinystories.precision import PRECISION_HELP, PRECISIONS, rounded_copy
from tinystories.sampling import Completion, SamplingConfig, decoding_model
from tinystories.tokenizer import get_tokenizer

SPLITS = ["train", "validation", "test", "all"]


@dataclass
class EvaluateConfig:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "checkpoint to evaluate"})
    split: str = field(default="validation", metadata={
        "choices": SPLITS,
        "help": "train, validation (held out from the training stories), test (the Hub's own validation "
                "split) or all (train then validation)"})
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={
        "metavar": "DIR", "help": "prepared token files (python prepare.py)"})
    data_path: Optional[str] = field(default=None, metadata={
        "metavar": "FILES", "help": "evaluate these story files instead of a split: files, folders or globs, "
                                    "comma-separated (.txt, .jsonl, .json, .parquet)"})
    max_samples: Optional[int] = field(default=None, metadata={"help": "evaluate only the first N stories"})
    batch_size: int = field(default=32, metadata={
        "help": "windows of block_size tokens per forward; halved automatically while memory runs out"})
    output: str = field(default="results/evaluation.json", metadata={"help": "where the JSON report goes"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    precision: str = field(default="float32", metadata={
        "choices": list(PRECISIONS), "help": PRECISION_HELP + "; the loss is that of the rounded weights"})
    generate: int = field(default=0, metadata={
        "help": "also complete the first sentences of the first N stories and measure the completions"})
    max_tokens: int = field(default=256, metadata={"help": "new tokens per completion, at most (with --generate)"})
    seed: int = field(default=1337, metadata={"help": "sampling seed of the completions (with --generate)"})
    generate_batch_size: Optional[int] = field(default=None, metadata={
        "help": "completions decoded together (with --generate; None: 32 on the CPU, 256 on GPUs)"})

    def __post_init__(self) -> None:
        require_at_least(self, ("batch_size", "max_tokens", "max_samples", "generate_batch_size"))
        require_at_least(self, ("generate",), minimum=0)
        if self.split not in SPLITS:
            raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")


def parse_arguments(argv: Optional[list[str]] = None) -> tuple[EvaluateConfig, SamplingConfig]:
    parser = ArgumentParser(description="Evaluate a TinyStories model: loss, perplexity, bits per byte, "
                                        "and optionally the quality of its completions.")
    config, sampling = parse_dataclasses(parser, [(EvaluateConfig, "evaluation"), (
        SamplingConfig, "sampling of the completions (with --generate)")], argv)
    return config, sampling


def evaluation_tokens(config: EvaluateConfig) -> tuple[Tokens, str]:
    """The token stream to score and a description of where it came from."""
    if config.data_path is not None:
        stories = list(itertools.islice(read_stories(config.data_path), config.max_samples))
        return encode_stories(get_tokenizer(), stories), config.data_path
    if config.split == "all":
        tokens: Tokens = ConcatenatedTokens([load_tokens(config.data_dir, "train"),
                                             load_tokens(config.data_dir, "validation")])
    else:
        tokens = load_tokens(config.data_dir, config.split)
    if config.max_samples is not None:
        tokens = first_stories(tokens, config.max_samples)
    return tokens, f"{config.data_dir} ({config.split})"


def complete_first_sentences(model: torch.nn.Module, tokens: Tokens, config: EvaluateConfig,
                             sampling: SamplingConfig) -> list[Completion]:
    """Completions decoded together; completion k's generator is seeded sequence_seed(--seed, k)."""
    prompts = [first_sentence(story) for story in story_texts(tokens, config.generate)]
    batch_size = config.generate_batch_size or default_batch_size(model.token_embedding.weight.device)
    return complete_all(decoding_model(model, config.precision), prompts, config.max_tokens, sampling, config.seed,
                        batch_size, progress=sys.stderr.isatty())


def write_completions(path: Path, completions: list[Completion]) -> None:
    blocks = []
    for number, completion in enumerate(completions, start=1):
        ending = "ended with <|endoftext|>" if completion.ended_with_eos else "stopped at --max_tokens"
        blocks.append(f"=== {number}/{len(completions)}: {len(completion.token_ids)} new tokens, {ending} ===\n"
                      f"{completion.prompt}{completion.text}\n")
    text = "\n".join(blocks)
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def summary(report: dict[str, Any]) -> str:
    """A short table of the report for the terminal."""
    rows = [
        ("model", f"{report['model']} " + (f"(step {report['step']:,})" if report["step"] is not None
                                           else "(no training step recorded)")),
        ("data", f"{report['data']}: {report['stories']:,} stories, {report['tokens']:,} scored tokens"),
        ("loss", f"{report['loss']:.4f} nats/token"),
        ("perplexity", f"{report['perplexity']:.4f}"),
        ("bits per byte", f"{report['bits_per_byte']:.4f}"),
        ("speed", f"{report['tokens_per_second']:,.0f} tokens/s ({report['seconds']:.1f} s, "
                  f"batch {report['batch_size']}, {report['device']})"),
    ]
    quality = report["generation"]
    if quality is not None:
        rows += [
            ("distinct-1/2/3", f"{quality['distinct_1']:.3f} / {quality['distinct_2']:.3f} / {quality['distinct_3']:.3f}"
                               f" ({quality['completions']} completions)"),
            ("repetition-4", f"{quality['repetition_4']:.3f}"),
            ("mean length", f"{quality['mean_new_tokens']:.1f} new tokens, "
                            f"{quality['eos_fraction']:.0%} ended with <|endoftext|>"),
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> None:
    config, sampling = parse_arguments()
    with folders_removed_on_failure(Path(config.output).parent):
        evaluate_and_report(config, sampling)


def evaluate_and_report(config: EvaluateConfig, sampling: SamplingConfig) -> None:
    ensure_folder(Path(config.output).parent)  # a bad --output fails now, not after the evaluation
    tokens, source = evaluation_tokens(config)
    device = resolve_device(config.device)
    model, checkpoint = load_model(config.model, device)
    scored = rounded_copy(model, config.precision)
    result = stream_loss(scored, tokens, config.batch_size, progress=sys.stderr.isatty())
    report: dict[str, Any] = {
        "model": config.model, "step": checkpoint.get("step"), "precision": config.precision,
        "split": None if config.data_path else config.split, "data": source, "max_samples": config.max_samples,
        "stories": count_stories(tokens), "tokens": result.tokens, "bytes": result.bytes,
        "loss": result.loss, "perplexity": result.perplexity, "bits_per_byte": result.bits_per_byte,
        "block_size": model.config.block_size, "batch_size": result.batch_size, "device": str(device),
        "seconds": round(result.seconds, 3), "tokens_per_second": round(result.tokens_per_second, 1),
        "generation": None,
    }
    output = Path(config.output)
    written = [output]
    if config.generate:
        completions = complete_first_sentences(model, tokens, config, sampling)
        completions_path = output.with_suffix(".completions.txt")
        write_completions(completions_path, completions)
        written.append(completions_path)
        report["generation"] = {
            "completions": len(completions), "seed": config.seed, "max_tokens": config.max_tokens,
            "sampling": asdict(sampling), "completions_file": str(completions_path),
            **generation_quality([c.text for c in completions], [len(c.token_ids) for c in completions],
                                 [c.ended_with_eos for c in completions]),
        }
    write_json(output, report)
    print(summary(report))
    print(f"wrote {' and '.join(str(path) for path in written)}")


if __name__ == "__main__":
    run_main(main)
