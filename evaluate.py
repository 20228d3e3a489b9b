"""Measure models side by side: exact loss, perplexity and bits per byte on a split, optionally the quality of
completions of the split's first sentences, and grades of story completions from an LLM judge (definitions in
tinystories/evaluation/metrics.py, tinystories/evaluation/judge.py and docs/evaluation.md). A model is one of our
checkpoints or a Hugging Face causal LM (folder or Hub id).

    python evaluate.py --model results/checkpoints/best_model.pth --split validation --generate 100
    python evaluate.py --model best_model.pth roneneldan/TinyStories-33M --split test --judge gpt-4o
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from tinystories.checks import require_at_least
from tinystories.cli import ArgumentParser, parse_dataclasses
from tinystories.data import load_tokens, read_stories
from tinystories.data.pipeline import encode_stories
from tinystories.data.readers import expand_paths
from tinystories.errors import UserError, run_main
from tinystories.evaluation.beginnings import read_beginnings, story_beginning
from tinystories.evaluation.judge import Grading, Judge, JudgeConfig, grade_all
from tinystories.evaluation.judge_cache import GradingCache, check_cache_path
from tinystories.evaluation.judge_protocol import AGE_GROUPS, CRITERIA, PROMPT_VERSION
from tinystories.evaluation.judge_report import grading_records, judge_report
from tinystories.evaluation.metrics import (
    ConcatenatedTokens,
    Tokens,
    count_stories,
    first_sentence,
    first_stories,
    generation_quality,
    story_texts,
    stream_loss,
)
from tinystories.evaluation.subjects import DEFAULT_BLOCK_SIZE, CheckpointSubject, Subject, load_subject
from tinystories.files import (
    atomic_write,
    check_not_an_input,
    check_output_file,
    folders_removed_on_failure,
    write_json,
    write_json_lines,
)
from tinystories.generation.requests import SequenceResult, default_batch_size
from tinystories.generation.sampling import SamplingConfig
from tinystories.generation.weight_formats import WEIGHT_FORMAT_HELP, WEIGHT_FORMATS
from tinystories.hardware import DEVICE_HELP, resolve_device
from tinystories.memory import loss_bytes, require_fits, window_bytes
from tinystories.paths import DEFAULT_DATA_DIR, DEFAULT_MODEL
from tinystories.tokenizer import get_tokenizer

SPLITS = ["train", "validation", "test", "all"]


@dataclass
class EvaluateConfig:
    model: list[str] = field(default_factory=lambda: [DEFAULT_MODEL], metadata={
        "metavar": "MODEL", "help": "models to evaluate side by side: checkpoints (.pth), Hugging Face model folders "
                                    "(export.py's) or Hub ids (roneneldan/TinyStories-33M)"})
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
    block_size: int = field(default=DEFAULT_BLOCK_SIZE, metadata={
        "help": "tokens per scoring window (the model's context if smaller)"})
    batch_size: int = field(default=32, metadata={
        "help": "windows of block_size tokens per forward; halved automatically while memory runs out"})
    output: str = field(default="results/evaluation.json", metadata={"help": "where the JSON report goes"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    precision: str = field(default="float32", metadata={
        "choices": list(WEIGHT_FORMATS),
        "help": WEIGHT_FORMAT_HELP + " (our checkpoints only); the loss is that of the "
                                                              "rounded weights"})
    generate: int = field(default=0, metadata={
        "help": "also complete the first sentences of the first N stories and measure the completions"})
    max_tokens: int = field(default=256, metadata={"help": "new tokens per completion, at most"})
    seed: int = field(default=1337, metadata={
        "help": "sampling seed of the completions, and of where --judge cuts the stories"})
    generate_batch_size: Optional[int] = field(default=None, metadata={
        "help": "completions decoded together (--generate and --judge; None: 32 on the CPU, 256 on GPUs)"})

    def __post_init__(self) -> None:
        require_at_least(self, ("batch_size", "block_size", "max_tokens", "max_samples", "generate_batch_size"))
        require_at_least(self, ("generate",), minimum=0)
        if self.split not in SPLITS:
            raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")


def parse_arguments(argv: Optional[list[str]] = None) -> tuple[EvaluateConfig, SamplingConfig, JudgeConfig]:
    parser = ArgumentParser(description="Evaluate TinyStories models side by side: loss, perplexity, bits per "
                                        "byte, and optionally the quality of their completions and an LLM judge's "
                                        "grades.")
    config, sampling, judging = parse_dataclasses(parser, [
        (EvaluateConfig, "evaluation"), (SamplingConfig, "sampling of the completions (--generate and --judge)"),
        (JudgeConfig, "LLM judge (grades story completions as the paper did)")], argv)
    return config, sampling, judging


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


def judge_beginnings(config: EvaluateConfig, judging: JudgeConfig) -> tuple[list[str], str]:
    """The story beginnings the judge's completions start from, and where they came from."""
    if judging.judge_prompts is not None:
        return read_beginnings(judging.judge_prompts), judging.judge_prompts
    if config.data_path is not None:
        stories = list(itertools.islice(read_stories(config.data_path), judging.judge_stories))
        source = config.data_path
    else:
        stories = story_texts(load_tokens(config.data_dir, "test"), judging.judge_stories)
        source = f"{config.data_dir} (test)"
    return [story_beginning(story, config.seed, number) for number, story in enumerate(stories)], source


def write_completions(path: Path, completions: list[tuple[str, list[SequenceResult]]]) -> None:
    """Every model's completions, for reading; a model's name heads each block when there are several."""
    blocks = []
    for name, model_completions in completions:
        label = f"{name}: " if len(completions) > 1 else ""
        for number, completion in enumerate(model_completions, start=1):
            ending = "ended with <|endoftext|>" if completion.ended_with_eos else "stopped at --max_tokens"
            blocks.append(f"=== {label}{number}/{len(model_completions)}: {len(completion.token_ids)} new tokens, "
                          f"{ending} ===\n{completion.prompt}{completion.text}\n")
    text = "\n".join(blocks)
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def _score(criterion: dict[str, Optional[float]]) -> str:
    if criterion["mean"] is None:
        return "-"
    if criterion["ci95_low"] is None:
        return f"{criterion['mean']:.2f}"
    return f"{criterion['mean']:.2f} [{criterion['ci95_low']:.2f}, {criterion['ci95_high']:.2f}]"


def model_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of one model's column in the terminal table."""
    rows = [
        ("model", result["model"]),
        ("kind", result["kind"] + (f", step {result['step']:,}" if result["step"] is not None else "")),
        ("windows", f"{result['block_size']} tokens"),
        ("loss", f"{result['loss']:.4f} nats/token"),
        ("perplexity", f"{result['perplexity']:.4f}"),
        ("bits per byte", f"{result['bits_per_byte']:.4f}"),
        ("speed", f"{result['tokens_per_second']:,.0f} tokens/s ({result['seconds']:.1f} s, "
                  f"batch {result['batch_size']})"),
    ]
    quality = result["generation"]
    if quality is not None:
        rows += [
            ("distinct-1/2/3", f"{quality['distinct_1']:.3f} / {quality['distinct_2']:.3f} / "
                               f"{quality['distinct_3']:.3f}"),
            ("repetition-4", f"{quality['repetition_4']:.3f}"),
            ("mean length", f"{quality['mean_new_tokens']:.1f} new tokens"),
            ("ended", f"{quality['eos_fraction']:.0%} with <|endoftext|>"),
        ]
    grading = result["judge"]
    if grading is not None:
        rows += [(f"judge {criterion}", _score(grading["criteria"][criterion])) for criterion in CRITERIA]
        rows += [
            ("judge age groups", " ".join(f"{letter}:{count}" for letter, count in grading["age_groups"].items())),
            ("judge graded", f"{grading['graded']} of {grading['items']} ({grading['ungraded']} ungraded)"),
            ("judge requests", f"{grading['requests']} ({grading['from_cache']} graded from cache)"),
            ("judge tokens", f"{grading['prompt_tokens']:,} prompt + {grading['completion_tokens']:,} reply"),
        ]
    return rows


def summary(report: dict[str, Any]) -> str:
    """The report for the terminal: what was measured, then one column per model."""
    lines = [f"data: {report['data']}: {report['stories']:,} stories, {report['tokens']:,} scored tokens, "
             f"{report['device']}"]
    if report["generation"] is not None:
        settings = report["generation"]
        lines.append(f"completions: first sentences of {settings['completions']} stories, seed {settings['seed']}, "
                     f"at most {settings['max_tokens']} new tokens")
    if report["judge"] is not None:
        settings = report["judge"]
        lines.append(f"judge: {settings['judge_model']} at {settings['endpoint_host']}, prompt "
                     f"{settings['prompt_version']}, {settings['beginnings']} beginnings; scores are means with "
                     f"95% confidence intervals; age groups "
                     + ", ".join(f"{letter} {ages}" for letter, ages in AGE_GROUPS.items()))
    columns = [model_rows(result) for result in report["models"]]
    labels = [label for label, _ in columns[0]]
    widths = [max(len(label) for label in labels)] + [max(len(value) for _, value in column) for column in columns]
    for row, label in enumerate(labels):
        cells = [label] + [column[row][1] for column in columns]
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip())
    return "\n".join(lines)


def evaluate_subject(subject: Subject, tokens: Tokens, config: EvaluateConfig, sampling: SamplingConfig,
                     prompts: list[str], beginnings: list[str], judge: Optional[Judge],
                     cache: Optional[GradingCache]) -> tuple[dict[str, Any], list[SequenceResult], list[Grading]]:
    """One model's column of the report, its first-sentence completions and its gradings."""
    progress = sys.stderr.isatty()
    result = stream_loss(subject, tokens, config.batch_size, progress=progress)
    column: dict[str, Any] = {
        "model": subject.name, "kind": subject.kind, "step": subject.step, "block_size": subject.block_size,
        "loss": result.loss, "perplexity": result.perplexity, "bits_per_byte": result.bits_per_byte,
        "bytes": result.bytes, "batch_size": result.batch_size, "seconds": round(result.seconds, 3),
        "tokens_per_second": round(result.tokens_per_second, 1), "generation": None, "judge": None,
    }
    batch_size = config.generate_batch_size or default_batch_size(subject.device)
    completions = subject.complete(prompts, config.max_tokens, sampling, config.seed, batch_size, progress) \
        if prompts else []
    if completions:
        column["generation"] = generation_quality([c.text for c in completions],
                                                  [len(c.token_ids) for c in completions],
                                                  [c.ended_with_eos for c in completions])
    gradings: list[Grading] = []
    if judge is not None and cache is not None:
        story_completions = subject.complete(beginnings, config.max_tokens, sampling, config.seed, batch_size,
                                             progress)
        gradings = grade_all(judge, [(beginning, c.text) for beginning, c in zip(beginnings, story_completions)],
                             cache, progress)
        column["judge"] = judge_report(judge, gradings)
    return column, completions, gradings


def main() -> None:
    config, sampling, judging = parse_arguments()
    folders = [Path(config.output).parent] + ([Path(judging.judge_cache).parent] if judging.judge is not None else [])
    with folders_removed_on_failure(*folders):
        evaluate_and_report(config, sampling, judging)


def run_inputs(config: EvaluateConfig, judging: JudgeConfig) -> list[str | Path]:
    """The files and folders the run reads, which no output may overwrite: the models, the data (--data_path's
    files and folders, or --data_dir) and --judge_prompts."""
    inputs: list[str | Path] = list(config.model)
    if config.data_path is not None:
        entries = [entry.strip() for entry in config.data_path.split(",")]
        inputs += [entry for entry in entries if entry and Path(entry).is_dir()] + expand_paths(config.data_path)
    else:
        inputs.append(config.data_dir)
    if judging.judge is not None and judging.judge_prompts is not None:
        inputs.append(judging.judge_prompts)
    return inputs


def check_outputs(config: EvaluateConfig, judging: JudgeConfig) -> Path:
    """Refuse, before any work, outputs that would overwrite an input (the judge cache, which is read too,
    included) or cannot be written; the report's path."""
    output = check_output_file(config.output, "--output")  # first: a folder such as "." has no name to derive from
    outputs = [(output, "--output")]
    if config.generate:
        outputs.append((output.with_suffix(".completions.txt"), "--output's completions file"))
    inputs = run_inputs(config, judging)
    if judging.judge is not None:
        outputs.append((output.with_suffix(".judged.jsonl"), "--output's gradings file"))
        check_not_an_input(judging.judge_cache, "--judge_cache", inputs)
        inputs.append(judging.judge_cache)
    for path, flag in outputs:
        check_not_an_input(path, flag, inputs)
    for path, flag in outputs[1:]:
        check_output_file(path, flag)
    if judging.judge is not None:
        check_cache_path(judging.judge_cache)
    return output


def evaluate_and_report(config: EvaluateConfig, sampling: SamplingConfig, judging: JudgeConfig) -> None:
    output = check_outputs(config, judging)  # a bad --output fails now, not after the evaluation
    tokens, source = evaluation_tokens(config)
    device = resolve_device(config.device)
    judge = Judge(judging) if judging.judge is not None else None  # a missing key fails before the long work
    beginnings, beginnings_source = judge_beginnings(config, judging) if judge is not None else ([], "")
    cache = GradingCache(judging.judge_cache) if judge is not None else None
    prompts = [first_sentence(story) for story in story_texts(tokens, config.generate)] if config.generate else []
    # Every name is checked before the long work.
    subjects = [load_subject(name, device, config.block_size, config.precision) for name in config.model]
    for subject in subjects:
        if isinstance(subject, CheckpointSubject):
            require_fits("--batch_size", config.batch_size, window_bytes(subject.model.config, subject.block_size),
                         device, fixed_bytes=loss_bytes(device),
                         what=f" for {subject.name}'s windows of {subject.block_size} tokens")
    report: dict[str, Any] = {
        "split": None if config.data_path else config.split, "data": source, "max_samples": config.max_samples,
        "stories": count_stories(tokens), "tokens": len(tokens) - 1, "block_size": config.block_size,
        "batch_size": config.batch_size, "device": str(device), "precision": config.precision, "generation": None,
        "judge": None, "models": [],
    }
    written = [output]
    completions: list[tuple[str, list[SequenceResult]]] = []
    records: list[dict[str, Any]] = []
    for subject in subjects:
        column, subject_completions, gradings = evaluate_subject(subject, tokens, config, sampling, prompts,
                                                                 beginnings, judge, cache)
        report["models"].append(column)
        completions.append((subject.name, subject_completions))
        records += grading_records(gradings, model=subject.name)
    if prompts:
        completions_path = output.with_suffix(".completions.txt")
        written.append(completions_path)
        report["generation"] = {"completions": len(prompts), "seed": config.seed, "max_tokens": config.max_tokens,
                                "sampling": asdict(sampling), "completions_file": str(completions_path)}
    if judge is not None:
        gradings_path = output.with_suffix(".judged.jsonl")
        written.append(gradings_path)
        report["judge"] = {"judge_model": judge.model, "endpoint_host": judge.host,
                           "prompt_version": PROMPT_VERSION,
                           "beginnings": len(beginnings), "beginnings_source": beginnings_source,
                           "seed": config.seed, "max_tokens": config.max_tokens, "sampling": asdict(sampling),
                           "gradings_file": str(gradings_path), "cache": judging.judge_cache}
    print(summary(report))  # first, so that a failed write below loses none of the results
    try:
        if prompts:
            write_completions(output.with_suffix(".completions.txt"), completions)
        if judge is not None:
            write_json_lines(output.with_suffix(".judged.jsonl"), records)
        write_json(output, report)
    except UserError as error:
        raise UserError(f"{error} (the results are printed above)") from None
    print(f"wrote {', '.join(str(path) for path in written)}")


if __name__ == "__main__":
    run_main(main)
