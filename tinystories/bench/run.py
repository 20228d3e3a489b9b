"""Running the sections asked for into one report, and the report as a text table."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import sys
import time
from typing import Any, Optional

import torch

from tinystories.bench.cpu_inference import cpu_inference_figures
from tinystories.bench.data import data_figures
from tinystories.bench.evaluation import evaluation_figures
from tinystories.bench.generation import generation_figures
from tinystories.bench.harness import BenchConfig, Figure, resolve_settings
from tinystories.bench.serving import serving_figures
from tinystories.bench.training import training_figures
from tinystories.generation.sampling import SamplingConfig
from tinystories.hardware import (
    device_name,
    enable_tf32,
    flops_per_token,
)


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
