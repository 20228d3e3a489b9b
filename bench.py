"""Benchmark training, evaluation, generation and data preparation against Hugging Face and bare tiktoken.

    python bench.py --device cpu                        # the CPU table of docs/benchmarks.md
    python bench.py --device cuda --json results/bench_gpu.json

Prints one table and writes the JSON report (device, versions, settings, every round's figure).
"""
from __future__ import annotations

import sys

from tinystories.benchmark import BenchConfig, format_table, run_benchmark
from tinystories.cli import ArgumentParser, parse_dataclasses
from tinystories.errors import run_main
from tinystories.files import write_json


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    [config] = parse_dataclasses(parser, [(BenchConfig, "benchmark")], argv)
    report = run_benchmark(config)
    write_json(config.json, report)
    print(f"{report['device_name']}; torch {report['torch']}, transformers {report['transformers']}, "
          f"tiktoken {report['tiktoken']}; {report['seconds']} s")
    print(format_table(report))
    print(f"wrote {config.json}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
