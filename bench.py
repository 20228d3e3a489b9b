"""Benchmark training, evaluation, generation and data preparation against Hugging Face and bare tiktoken.

    python bench.py --device cpu                        # the CPU table of docs/benchmarks.md
    python bench.py --device cuda --json results/bench_gpu.json

Prints one table and writes the JSON report (device, versions, settings, every round's figure) to --json, or to
results/bench_YYYYMMDD_HHMMSS.json so that earlier reports are kept.
"""
from __future__ import annotations

import sys
from datetime import datetime

from tinystories.bench.harness import BenchConfig
from tinystories.bench.run import format_table, run_benchmark
from tinystories.cli import ArgumentParser, parse_dataclasses
from tinystories.errors import run_main
from tinystories.files import check_output_file, write_json


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    [config] = parse_dataclasses(parser, [(BenchConfig, "benchmark")], argv)
    path = config.report_path(datetime.now())
    check_output_file(path, "--json")  # an unusable path fails now, not after minutes of measuring
    report = run_benchmark(config)
    replaced = path.exists()
    write_json(path, report)
    print(f"{report['device_name']}; torch {report['torch']}, transformers {report['transformers']}, "
          f"tiktoken {report['tiktoken']}; {report['seconds']} s")
    print(format_table(report))
    print(f"{'replaced the earlier report' if replaced else 'wrote'} {path}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
