"""The generation section: the engine at 1, 8 and 32 sequences against Hugging Face's generate at the same batch,
with the bounds that memory bandwidth and the weight products alone put on decoding."""
from __future__ import annotations

import statistics
from typing import Any, Callable

import torch

from model.model import Model
from tinystories.bench.harness import (
    BANDWIDTH,
    BOUND,
    PRODUCTS,
    Contender,
    Figure,
    Settings,
    hf_twin,
    interleave,
    read_bandwidth,
)
from tinystories.generation.decoders import decoding_model
from tinystories.generation.engine import Engine
from tinystories.generation.requests import GenerationRequest, sequence_seed
from tinystories.generation.sampling import SamplingConfig
from tinystories.tokenizer import get_tokenizer


def weight_bytes_per_token(model: Model) -> int:
    """Bytes of weights one decoding step reads: every parameter but the position embedding (one row of it,
    and of the token embedding, is gathered; the tied token embedding is read whole as the output layer)."""
    position = model.position_embedding.weight
    return (model.num_parameters() - position.numel()) * position.element_size()


def weight_products(decoder: Model) -> Callable[[], None]:
    """One token's matrix-vector products through the decoder's own layers, back to back: decoding without
    attention, sampling, and the Python between the products."""
    config = decoder.config
    device = decoder.token_embedding.weight.device
    inputs = {width: torch.randn(1, 1, width, device=device) for width in (config.n_embd, config.ffn_size)}
    layers = [(layer, config.n_embd) for block in decoder.blocks
              for layer in (block.attn.qkv, block.attn.out_proj, block.mlp.fc)]
    layers += [(block.mlp.proj, config.ffn_size) for block in decoder.blocks] + [(decoder.lm_head, config.n_embd)]

    @torch.inference_mode()
    def products() -> None:
        for layer, width in layers:
            layer(inputs[width])
    return products


def generation_figures(settings: Settings, rounds: int, seed: int, new_tokens: int) -> list[Figure]:
    """Tokens/s of the engine sampling `new_tokens` tokens per sequence at 1, 8 and 32 sequences against Hugging
    Face's generate, with the bounds that memory bandwidth and the matrix-vector products alone put on one
    sequence."""
    from tinystories.interop.hf import generation_config

    torch.manual_seed(seed)
    model = Model(settings.model_config).to(settings.device).eval()
    decoder = decoding_model(model)
    batched = batched_generation(decoder, hf_twin(model), generation_config(SamplingConfig(), new_tokens,
                                                                              stop_at_eos=False),
                                 settings, seed, new_tokens)
    rates, _ = interleave([*batched, Contender(PRODUCTS, weight_products(decoder), 1), read_bandwidth(settings.device)],
                          rounds, settings.device, "generation")
    bandwidth = rates.pop(BANDWIDTH)
    rates[BOUND] = [rate / weight_bytes_per_token(model) for rate in bandwidth]
    medians = {name: statistics.median(samples) for name, samples in rates.items()}
    ratios = {PRODUCTS: {"bound": medians[PRODUCTS] / medians[BOUND]}, **batched_ratios(medians)}
    figures = [Figure("generation", name, "tokens/s", samples, ratios.get(name, {})) for name, samples in rates.items()]
    return figures + [Figure("hardware", BANDWIDTH, "GB/s", [rate / 1e9 for rate in bandwidth])]


GENERATION_BATCHES = (1, 8, 32)


BATCH_PROMPT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with "
                "her big red ball. One day, she saw a small dog under a tree, and the dog looked sad.")


def engine_name(batch: int) -> str:
    return f"ours, engine, {batch} seq"


def hf_batch_name(batch: int) -> str:
    return f"HF generate, {batch} seq"


def batched_prompts(count: int, longest: int) -> list[list[int]]:
    """`count` prompts of 4 to `longest` tokens (the start of one story), lengths spread over that range."""
    ids = get_tokenizer().encode_ordinary(BATCH_PROMPT)[:longest]
    return [ids[:4 + (number * 7) % (len(ids) - 3)] for number in range(count)]


def batched_generation(decoder: Model, hf: torch.nn.Module, hf_config: Any, settings: Settings, seed: int,
                       new_tokens: int) -> list[Contender]:
    """Aggregate tokens/s of decoding 1, 8 and 32 sequences together from prompts of different lengths: our
    engine against Hugging Face's batched generate (prompts left-padded), the same sampling settings."""
    from tinystories.interop.hf import left_padded

    longest = min(32, settings.model_config.block_size - new_tokens)
    contenders = []
    for batch in GENERATION_BATCHES:
        prompts = batched_prompts(batch, longest)
        requests = [GenerationRequest(prompt, new_tokens, SamplingConfig(), seed=sequence_seed(seed, number),
                                      stop_at_eos=False) for number, prompt in enumerate(prompts)]
        engine = Engine(decoder, max_batch=batch)
        padded, mask = left_padded(prompts, settings.device)

        def ours(engine: Engine = engine, requests: list[GenerationRequest] = requests) -> None:
            counts = [len(result.token_ids) for result in engine.generate(requests)]
            assert counts == [new_tokens] * len(requests), f"ours generated {counts} tokens"

        @torch.inference_mode()
        def theirs(padded: torch.Tensor = padded, mask: torch.Tensor = mask) -> None:
            output = hf.generate(padded, attention_mask=mask, generation_config=hf_config)
            assert output.shape == (padded.shape[0], padded.shape[1] + new_tokens), f"HF gave {tuple(output.shape)}"

        contenders += [Contender(engine_name(batch), ours, batch * new_tokens),
                       Contender(hf_batch_name(batch), theirs, batch * new_tokens)]
    return contenders


def batched_ratios(medians: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each engine row against Hugging Face at the same batch and against our own single sequence; the
    single sequence against the bandwidth bound."""
    single = medians[engine_name(1)]
    ratios = {engine_name(batch): {"HF": medians[engine_name(batch)] / medians[hf_batch_name(batch)],
                                   "ours at 1 seq": medians[engine_name(batch)] / single}
              for batch in GENERATION_BATCHES}
    ratios[engine_name(1)] = {"HF": ratios[engine_name(1)]["HF"], "bound": single / medians[BOUND]}
    return ratios
