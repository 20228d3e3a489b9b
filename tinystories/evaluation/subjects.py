"""The models that evaluate.py measures ("subjects"): one of our checkpoints, or any Hugging Face causal LM
(a folder or a Hub id: our export.py folders, GPT-2, GPT-Neo such as the paper's TinyStories-33M), behind one
interface, so both land in one comparable table.

Both are scored on the same windows (`block_size` tokens, 512 by default or the model's context if smaller)
and complete prompts with the same sampling settings. Our checkpoints decode with our batched engine, which
slides each sequence's window past the context; Hugging Face models decode with transformers' `generate()`,
batched with left padding, which cannot slide: their completions stop at the model's context. Prompts are encoded, and
completions decoded, with our tokenizer in both cases: load_causal_lm refuses a model whose tokenizer
encodes differently.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from model.loss import output_cross_entropy
from model.model import Model
from tinystories.checkpoint import load_model
from tinystories.errors import UserError
from tinystories.generation.decoders import decoding_model
from tinystories.generation.engine import complete_all
from tinystories.generation.requests import SequenceResult, sequence_seed
from tinystories.generation.sampling import SamplingConfig
from tinystories.generation.weight_formats import Float16Linear, rounded_copy
from tinystories.tokenizer import EOT_ID, get_tokenizer

DEFAULT_BLOCK_SIZE = 512
# Architectures whose logits are exactly final hidden state @ lm_head.weight.T: their loss is computed a chunk
# of positions at a time, without the (windows, block_size, vocab) logits (3.3 GB in fp32 at batch 32).
_PLAIN_OUTPUT_LAYER = {"gpt2", "gpt_neo"}


class Subject(ABC):
    """A model to evaluate: its exact per-token losses on windows, and completions of text prompts."""

    name: str  # as given on the command line
    kind: str  # "checkpoint" or "hugging face"
    step: Optional[int]  # the training step of a checkpoint that recorded one
    block_size: int  # tokens per scoring window
    vocab_size: int
    device: torch.device

    @abstractmethod
    def token_losses(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """inputs, targets (rows, length) int64 -> -ln p(target | its window's inputs up to it), (rows, length)."""

    @abstractmethod
    def complete(self, prompts: list[str], max_new_tokens: int, sampling: SamplingConfig, seed: int,
                 batch_size: int, progress: bool = False) -> list[SequenceResult]:
        """One completion per prompt, `batch_size` decoded together, stopping at <|endoftext|>; the same seed
        gives the same completions."""


class CheckpointSubject(Subject):
    kind = "checkpoint"

    def __init__(self, model: Model, name: str = "model", step: Optional[int] = None,
                 block_size: int = DEFAULT_BLOCK_SIZE, weight_format: str = "float32") -> None:
        self.model = model.eval()
        self.weight_format = weight_format
        if weight_format == "float16":
            # The decoder's own check, now: a finite weight beyond float16's range would become infinite in the
            # rounded copy, and the loss would then blame the checkpoint instead of the precision.
            for module in self.model.modules():
                if isinstance(module, torch.nn.Linear):
                    Float16Linear(module)
        self._scored = rounded_copy(self.model, weight_format)  # the loss is that of the weights the decoder uses
        self.name, self.step = name, step
        self.block_size = min(block_size, model.config.block_size)
        self.vocab_size = model.config.vocab_size
        self.device = model.token_embedding.weight.device

    def token_losses(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return output_cross_entropy(self._scored.hidden_states(inputs), self._scored.lm_head.weight, targets,
                                    reduction="none")

    def complete(self, prompts: list[str], max_new_tokens: int, sampling: SamplingConfig, seed: int,
                 batch_size: int, progress: bool = False) -> list[SequenceResult]:
        """Through the batched engine: prompt k is seeded with sequence_seed(seed, k), so each completion is
        what the prompt alone would get, whatever the batch."""
        return complete_all(decoding_model(self.model, self.weight_format), prompts, max_new_tokens, sampling, seed,
                            batch_size, progress=progress)


def hf_context(config) -> int:
    """The number of positions a transformers model config allows (GPT-2 calls it n_positions)."""
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not context:
        raise UserError(f"cannot tell the context length of this {config.model_type!r} model")
    return int(context)


class HuggingFaceSubject(Subject):
    kind = "hugging face"
    step = None

    def __init__(self, hf_model, name: str = "model", block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.hf_model = hf_model.eval()
        self.name = name
        self.context = hf_context(hf_model.config)
        self.block_size = min(block_size, self.context)
        self.vocab_size = hf_model.config.vocab_size
        self.device = next(hf_model.parameters()).device
        output_layer = hf_model.get_output_embeddings()
        self._chunked_loss = (hf_model.config.model_type in _PLAIN_OUTPUT_LAYER
                              and isinstance(output_layer, torch.nn.Linear) and output_layer.bias is None)

    def token_losses(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self._chunked_loss:
            hidden = self.hf_model.base_model(input_ids=inputs).last_hidden_state
            return output_cross_entropy(hidden, self.hf_model.get_output_embeddings().weight, targets,
                                        reduction="none")
        logits = self.hf_model(input_ids=inputs).logits.float()
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")

    @torch.inference_mode()
    def complete(self, prompts: list[str], max_new_tokens: int, sampling: SamplingConfig, seed: int,
                 batch_size: int, progress: bool = False, num_beams: int = 1,
                 stop_at_eos: bool = True) -> list[SequenceResult]:
        """Batches of `batch_size` prompts through generate(); batch k samples from torch's global generator
        seeded with sequence_seed(seed, k) (restored afterwards), so a run is repeatable for the same prompts
        and batch size."""
        from tinystories.interop.hf import generation_config, left_padded

        tokenizer = get_tokenizer()
        completions: list[SequenceResult] = []
        with tqdm(total=len(prompts), desc="completions", unit="story", disable=not progress) as bar:
            for number, start in enumerate(range(0, len(prompts), batch_size)):
                batch = prompts[start:start + batch_size]
                encoded = [tokenizer.encode_ordinary(prompt)[-self.context + 1:] for prompt in batch]
                if not all(encoded):
                    raise UserError("a prompt is empty; give at least one token of text")
                input_ids, attention_mask = left_padded(encoded, self.device)
                width = input_ids.shape[1]
                settings = generation_config(sampling, min(max_new_tokens, self.context - width), num_beams,
                                             stop_at_eos)
                started = time.perf_counter()
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(sequence_seed(seed, number))
                    output = self.hf_model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                                    generation_config=settings)
                seconds = (time.perf_counter() - started) / len(batch)
                for prompt, ids, row in zip(batch, encoded, output[:, width:].tolist()):
                    if stop_at_eos and EOT_ID in row:
                        row = row[:row.index(EOT_ID) + 1]  # what follows is padding
                    ended = stop_at_eos and bool(row) and row[-1] == EOT_ID
                    text = tokenizer.decode(row[:-1] if ended else row)
                    completions.append(SequenceResult(row, text, "stop" if ended else "length", len(ids), seconds,
                                                      prompt))
                bar.update(len(batch))
        return completions


def is_checkpoint_file(name: str) -> bool:
    """A file is one of our checkpoints; a folder or anything else is a Hugging Face model (folder or Hub id)."""
    return Path(name).is_file() or (not Path(name).exists() and name.endswith((".pth", ".pt")))


def load_subject(name: str, device: torch.device, block_size: int = DEFAULT_BLOCK_SIZE,
                 weight_format: str = "float32") -> Subject:
    """Our checkpoint file, or a Hugging Face causal LM folder or Hub id, on `device`; `weight_format` other than
    float32 (tinystories.generation.weight_formats) applies to our checkpoints only."""
    if is_checkpoint_file(name):
        model, checkpoint = load_model(name, device)
        return CheckpointSubject(model, name, checkpoint.get("step"), block_size, weight_format)
    if weight_format != "float32":
        raise UserError(f"--precision {weight_format} applies to this project's checkpoints only; {name} is a Hugging "
                        f"Face model (use --precision float32)")
    if not Path(name).exists() and name.count("/") != 1:
        raise UserError(f"{name} not found: give a checkpoint file (.pth), a Hugging Face model folder, or a Hub "
                        f"id such as roneneldan/TinyStories-33M")
    from tinystories.interop.hf_folders import load_causal_lm

    return HuggingFaceSubject(load_causal_lm(name).to(device), name, block_size)
