"""Train the TinyStories model: `python train.py` (see README, Training). Flags come from TrainConfig and DataConfig."""
from __future__ import annotations

import dataclasses
from typing import Any

from tinystories.cli import ArgumentParser, add_dataclass_arguments, explicit_values, load_config_file, merge_dataclass
from tinystories.data import DataConfig
from tinystories.errors import UserError, run_main
from tinystories.training import TrainConfig, Trainer, train  # noqa: F401  (the seed's train(...) entry point)

# --seed belongs to training; the data split keeps its own seed (prepare.py --seed).
SHARED_FLAGS = ("seed",)


def parse_arguments(argv: list[str] | None = None) -> tuple[TrainConfig, DataConfig]:
    """Defaults, then --config FILE (JSON or YAML), then explicit flags."""
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of settings; explicit flags override it")
    add_dataclass_arguments(parser, TrainConfig, title="training")
    add_dataclass_arguments(parser, DataConfig, title="data", exclude=SHARED_FLAGS)
    namespace = parser.parse_args(argv)
    file_settings: dict[str, Any] = load_config_file(namespace.config) if namespace.config else {}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    data_names = {f.name for f in dataclasses.fields(DataConfig)} - set(SHARED_FLAGS)
    unknown = sorted(set(file_settings) - train_names - data_names)
    if unknown:
        raise UserError(f"config file {namespace.config}: unknown setting(s) {', '.join(unknown)}")
    source = f"config file {namespace.config}"
    train_config = merge_dataclass(TrainConfig(), {k: v for k, v in file_settings.items() if k in train_names}, source)
    data_config = merge_dataclass(DataConfig(), {k: v for k, v in file_settings.items() if k in data_names}, source)
    train_config = merge_dataclass(train_config, explicit_values(TrainConfig, namespace), "command line")
    data_flags = {k: v for k, v in explicit_values(DataConfig, namespace).items() if k in data_names}
    data_config = merge_dataclass(data_config, data_flags, "command line")
    return train_config, data_config


def main() -> None:
    train_config, data_config = parse_arguments()
    Trainer(train_config, data_config).run()


if __name__ == "__main__":
    run_main(main)
