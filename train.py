"""Train the TinyStories model: `python train.py` (see README, Training). Flags come from TrainConfig and DataConfig."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from tinystories.cli import ArgumentParser, add_dataclass_arguments, checked_settings, explicit_values, load_config_file
from tinystories.data import DataConfig
from tinystories.errors import UserError, run_main
from tinystories.files import folders_removed_on_failure
from tinystories.paths import RunPaths
from tinystories.training.config import TrainConfig
from tinystories.training.run_state import SPLIT_SEED  # --seed is training's; the split's seed is prepare.py's --seed
from tinystories.training.trainer import Trainer, train  # noqa: F401  (the specification's train(...) entry point)


def _data_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The DataConfig fields among `settings`, with split_seed renamed to DataConfig's seed."""
    data_names = {f.name for f in dataclasses.fields(DataConfig)} - {"seed"}
    picked = {name: value for name, value in settings.items() if name in data_names}
    if SPLIT_SEED in settings:
        picked["seed"] = settings[SPLIT_SEED]
    return picked


def parse_arguments(argv: list[str] | None = None) -> tuple[TrainConfig, DataConfig]:
    """Defaults, then --config FILE (JSON or YAML), then explicit flags."""
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of settings; explicit flags override it")
    add_dataclass_arguments(parser, TrainConfig, title="training")
    data_group = add_dataclass_arguments(parser, DataConfig, title="data", exclude=("seed",))
    data_group.add_argument(f"--{SPLIT_SEED}", type=int, default=argparse.SUPPRESS,
                            help="seed of the train/validation split, prepare.py's --seed "
                                 f"(default: {DataConfig().seed})")
    namespace = parser.parse_args(argv)
    file_settings: dict[str, Any] = load_config_file(namespace.config) if namespace.config else {}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(file_settings) - train_names - set(_data_settings(file_settings)) - {SPLIT_SEED})
    if unknown:
        raise UserError(f"config file {namespace.config}: unknown setting(s) {', '.join(unknown)}")
    source = f"config file {namespace.config}"
    from_file = {k: v for k, v in file_settings.items() if k in train_names}
    train_settings = {**checked_settings(TrainConfig, from_file, source),
                      **checked_settings(TrainConfig, explicit_values(TrainConfig, namespace), "command line")}
    renamed = {"seed": SPLIT_SEED}
    data_settings = {**checked_settings(DataConfig, _data_settings(file_settings), source, renamed),
                     **checked_settings(DataConfig, _data_settings(vars(namespace)), "command line", renamed)}
    return TrainConfig(**train_settings), DataConfig(**data_settings)


def main() -> None:
    train_config, data_config = parse_arguments()
    paths = RunPaths(Path(train_config.out_dir))
    with folders_removed_on_failure(paths.checkpoints, paths.logs):
        summary = Trainer(train_config, data_config).run()
    if summary["stopped_by_signal"] is not None:  # the status a shell reports for a process that signal ended
        sys.exit(128 + summary["stopped_by_signal"])


if __name__ == "__main__":
    run_main(main)
