"""Prepare token files: `python prepare.py` (TinyStories from the Hub), `--data_path FILES`, or `--dataset synthetic`.

Writes train.bin, validation.bin, test.bin (when the source has held-out stories) and meta.json under
data/<dataset>/ or --out_dir, and reuses them while the inputs are unchanged. See README, Data.
"""
from __future__ import annotations

import argparse

from tinystories.cli import ArgumentParser, parse_dataclasses
from tinystories.data import DataConfig, prepare_data
from tinystories.errors import run_main


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", dest="data_dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="the same as --data_dir")
    [config] = parse_dataclasses(parser, [(DataConfig, "data")])
    prepare_data(config)


if __name__ == "__main__":
    run_main(main)
