"""The cpu-inference section: single-stream decoding on the CPU in each weight format against llama.cpp on the GGUF
export in each type, and how far each format's logits are from float32's."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from model.model import Model
from tinystories.bench.data import benchmark_stories
from tinystories.bench.harness import PROMPT, BenchConfig, Contender, Figure, compared, interleave
from tinystories.checkpoint import load_model
from tinystories.checks import preset_config
from tinystories.errors import UserError
from tinystories.generation.decoders import decoding_model
from tinystories.generation.engine import Engine
from tinystories.generation.requests import GenerationRequest
from tinystories.generation.sampling import SamplingConfig
from tinystories.generation.weight_formats import WEIGHT_FORMATS, rounded_copy
from tinystories.tokenizer import get_tokenizer

LLAMA_F32 = "llama.cpp f32"


REFERENCE = "ours float32"


def cpu_inference_model(config: BenchConfig) -> Model:
    if config.model is not None:
        return load_model(config.model)[0].eval()
    torch.manual_seed(config.seed)
    return Model(preset_config(config.preset, dropout=0.0)).eval()


@dataclass
class Agreement:
    """How a mode's next-token logits compare with ours in float32 over the same positions."""
    nll: float = 0.0  # summed cross-entropy of the actual next tokens
    positions: int = 0
    same_argmax: int = 0  # positions whose most likely token is ours float32's
    max_difference: float = 0.0  # largest |logit - ours float32 logit|


def agreements(reference: Callable[[list[int]], np.ndarray], modes: dict[str, Callable[[list[int]], np.ndarray]],
               text: np.ndarray, block_size: int) -> tuple[Agreement, dict[str, Agreement]]:
    """Every mode's logits (T, V) against the reference's, window by window in the windows evaluate.py scores:
    consecutive windows of block_size inputs, each read from its own start (one window's logits at a time)."""
    ours, results = Agreement(), {name: Agreement() for name in modes}
    for start in range(0, len(text) - 1, block_size):
        window = text[start:start + block_size + 1].astype(np.int64)
        inputs, targets = window[:-1].tolist(), window[1:]
        expected = reference(inputs)
        rows = np.arange(len(targets))
        for name, logits in [(REFERENCE, expected)] + [(name, mode(inputs)) for name, mode in modes.items()]:
            result = ours if name == REFERENCE else results[name]
            scores = logits.astype(np.float64)
            peak = scores.max(axis=1)
            log_sum = peak + np.log(np.exp(scores - peak[:, None]).sum(axis=1))
            result.nll += float((log_sum - scores[rows, targets]).sum())
            result.positions += len(targets)
            result.same_argmax += int((logits.argmax(axis=1) == expected.argmax(axis=1)).sum())
            result.max_difference = max(result.max_difference, float(np.abs(logits - expected).max()))
    return ours, results


def torch_logits(model: Model) -> Callable[[list[int]], np.ndarray]:
    @torch.inference_mode()
    def logits(ids: list[int]) -> np.ndarray:
        return model(torch.tensor([ids]))[0][0].numpy()
    return logits


def cpu_inference_figures(config: BenchConfig, rounds: int) -> tuple[list[Figure], dict[str, str], int]:
    """Single-stream tokens/s on the CPU of our decoder in each precision and of llama.cpp on the GGUF export in
    each weight type, interleaved, same prompt, sampling settings and threads; and how far each mode's logits
    are from ours in float32 on the same text (loss, largest difference, greedy agreement). Also the llama.cpp
    modes that cannot run here, with the reason, and the number of positions compared."""
    from tinystories.data.pipeline import encode_stories
    from tinystories.interop import llama_cpp
    from tinystories.interop.gguf import OUTTYPES, save_gguf

    model = cpu_inference_model(config)
    block_size = model.config.block_size
    prompt = get_tokenizer().encode_ordinary(PROMPT)
    if len(prompt) + config.new_tokens > block_size:  # llama.cpp has no sliding window past its positions
        raise UserError(f"--new_tokens {config.new_tokens} plus the {len(prompt)}-token prompt exceed the model's "
                        f"block_size {block_size}; lower --new_tokens")
    text = encode_stories(get_tokenizer(), benchmark_stories(config))[:config.compare_tokens + 1]
    sampling = SamplingConfig()
    request = GenerationRequest(prompt, config.new_tokens, sampling, seed=config.seed, stop_at_eos=False)
    contenders, modes, skipped = [], {}, {}

    for weight_format in WEIGHT_FORMATS:
        decoder = decoding_model(model, weight_format)

        def ours(engine: Engine = Engine(decoder, max_batch=1)) -> None:  # noqa: B008 (one engine per format)
            [result] = engine.generate([request])
            count = len(result.token_ids)
            assert count == config.new_tokens, f"ours generated {count} tokens, not {config.new_tokens}"
        contenders.append(Contender(f"ours {weight_format}", ours, config.new_tokens))
        if weight_format != "float32":
            modes[f"ours {weight_format}"] = torch_logits(rounded_copy(model, weight_format))

    with tempfile.TemporaryDirectory() as folder:
        for outtype in OUTTYPES:
            name, path = f"llama.cpp {outtype}", Path(folder) / f"model-{outtype}.gguf"
            save_gguf(model, path, outtype)
            reason = llama_cpp.failure(path)
            if reason is not None:
                skipped[name] = reason
                continue
            scorer = llama_cpp.load(path, n_ctx=block_size, logits_all=True)
            modes[name] = lambda ids, scorer=scorer: llama_cpp.logits(scorer, ids)
            llm = llama_cpp.load(path, n_ctx=block_size)

            def theirs(llm: Any = llm) -> None:
                count = len(llama_cpp.sample(llm, prompt, config.new_tokens, sampling))
                assert count == config.new_tokens, f"llama.cpp generated {count} tokens, not {config.new_tokens}"
            contenders.append(Contender(name, theirs, config.new_tokens))
        if LLAMA_F32 not in modes:
            raise UserError(f"llama.cpp cannot run the f32 GGUF file here: {skipped[LLAMA_F32]}")
        reference, results = agreements(torch_logits(model), modes, text, block_size)
        rates, _ = interleave(contenders, rounds, torch.device("cpu"), "cpu-inference")
    figures = compared("cpu-inference", "tokens/s", rates, LLAMA_F32, LLAMA_F32)
    for name, result in results.items():
        figures += [
            Figure("cpu-inference", f"loss - {REFERENCE}, {name}", "nats/token",
                   [(result.nll - reference.nll) / result.positions]),
            Figure("cpu-inference", f"max |logit - {REFERENCE}|, {name}", "logit", [result.max_difference]),
            Figure("cpu-inference", f"greedy token = {REFERENCE}'s, {name}", "% of positions",
                   [100 * result.same_argmax / result.positions])]
    return figures, skipped, reference.positions
