"""Train the TinyStories model: `python train.py` (see README, Training). Flags come from TrainConfig and DataConfig."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from tinystories.cli import ArgumentParser, add_dataclass_arguments, explicit_values, load_config_file, merge_dataclass
from tinystories.data import DataConfig
from tinystories.errors import UserError, run_main
from tinystories.training import TrainConfig, Trainer, train  # noqa: F401  (the seed's train(...) entry point)

# --seed is training's (initialisation, data order, dropout); the split's seed (prepare.py's --seed) is
# --split_seed here, and `split_seed` in a --config file.
SPLIT_SEED = "split_seed"


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
                            help=f"seed of the train/validation split, prepare.py's --seed (default: {DataConfig().seed})")
    namespace = parser.parse_args(argv)
    file_settings: dict[str, Any] = load_config_file(namespace.config) if namespace.config else {}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(file_settings) - train_names - set(_data_settings(file_settings)) - {SPLIT_SEED})
    if unknown:
        raise UserError(f"config file {namespace.config}: unknown setting(s) {', '.join(unknown)}")
    source = f"config file {namespace.config}"
    train_config = merge_dataclass(TrainConfig(), {k: v for k, v in file_settings.items() if k in train_names}, source)
    data_config = merge_dataclass(DataConfig(), _data_settings(file_settings), source)
    train_config = merge_dataclass(train_config, explicit_values(TrainConfig, namespace), "command line")
    data_config = merge_dataclass(data_config, _data_settings(vars(namespace)), "command line")
    return train_config, data_config


def main() -> None:
    train_config, data_config = parse_arguments()
    Trainer(train_config, data_config).run()


if __name__ == "__main__":
    run_main(main)
