"""Benchmark training, evaluation, generation and data preparation against Hugging Face and bare tiktoken.

    python bench.py --device cpu                        # the CPU table of docs/benchmarks.md
    python bench.py --device cuda --json results/bench_gpu.json

Prints one table and writes the JSON report (device, versions, settings, every round's figure).
"""
from __future__ import annotations

import json
import sys

from tinystories.benchmark import BenchConfig, format_table, run_benchmark
from tinystories.cli import ArgumentParser, parse_dataclasses
from tinystories.errors import run_main
from tinystories.files import atomic_write


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    [config] = parse_dataclasses(parser, [(BenchConfig, "benchmark")], argv)
    report = run_benchmark(config)
    document = json.dumps(report, indent=2) + "\n"
    atomic_write(config.json, lambda file: file.write(document.encode("utf-8")))
    print(f"{report['device_name']}; torch {report['torch']}, transformers {report['transformers']}, "
          f"tiktoken {report['tiktoken']}; {report['seconds']} s")
    print(format_table(report))
    print(f"wrote {config.json}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
