"""Serve a trained model over HTTP: OpenAI's completions API and a playground page, on the batched engine.

    python serve.py --model results/checkpoints/best_model.pth            # http://127.0.0.1:8000/
    TINYSTORIES_API_KEY=... python serve.py --host 0.0.0.0 --port 8000      # reachable from other machines

Concurrent requests decode together, one forward per step. SIGTERM or Ctrl-C ends open streams and exits 0.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

from tinystories.checkpoint import load_model
from tinystories.cli import ArgumentParser, parse_dataclasses
from tinystories.errors import run_main
from tinystories.generation.decoders import decoding_model
from tinystories.generation.engine import Engine
from tinystories.generation.weight_formats import WEIGHT_FORMAT_HELP, WEIGHT_FORMATS
from tinystories.hardware import DEVICE_HELP, resolve_device
from tinystories.paths import DEFAULT_MODEL
from tinystories.serving.app import create_app, serve
from tinystories.serving.service import ServerConfig


@dataclass
class ModelConfig:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "checkpoint to serve"})
    served_model_name: Optional[str] = field(default=None, metadata={
        "help": "the name requests give as \"model\" (None: the --model path, as written)"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    precision: str = field(default="float32", metadata={"choices": list(WEIGHT_FORMATS), "help": WEIGHT_FORMAT_HELP})


def main(argv: Optional[list[str]] = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    model_config, server_config = parse_dataclasses(
        parser, [(ModelConfig, "model"), (ServerConfig, "server")], argv)
    device = resolve_device(model_config.device)
    model, checkpoint = load_model(model_config.model, device)
    name = model_config.served_model_name or model_config.model
    engine = Engine(decoding_model(model, model_config.precision), max_batch=server_config.max_batch)
    app = create_app(engine, name, server_config, vocab_size=model.config.vocab_size,
                     context_length=model.config.block_size)
    print(f"serving {name} (step {checkpoint.get('step')}, {model.config.block_size}-token context) on {device}; "
          f"{server_config.max_batch} slots, {server_config.max_queue} queued sequences at most", file=sys.stderr)
    serve(app, server_config)
    print("stopped", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
