"""The training section: tokens/s of a full optimizer step, ours (eager, compiled) against Hugging Face's
GPT2LMHeadModel, and the model FLOPs utilisation against the peak measured in the same rounds."""
from __future__ import annotations

import copy
from typing import Callable

import torch

from model.model import Model
from tinystories.bench.harness import (
    HF_MODEL,
    PEAK,
    Contender,
    Figure,
    Settings,
    compared,
    hf_twin,
    interleave,
    peak_matmul,
    random_batch,
)
from tinystories.hardware import (
    autocast,
    flops_per_token,
    peak_flops,
)
from tinystories.training.trainer import TrainConfig, make_optimizer


def training_figures(settings: Settings, rounds: int, seed: int) -> tuple[list[Figure], dict[str, float]]:
    """Tokens/s of forward + backward + gradient clipping + fused AdamW step, the model FLOPs utilisation
    against the peak measured in the same rounds, and the seconds of each contender's warm-up."""
    torch.manual_seed(seed)
    ours = Model(settings.model_config).to(settings.device).train()
    models = {"ours, eager": (ours, True)}
    if settings.compile:
        models["ours, compiled"] = (torch.compile(copy.deepcopy(ours)), True)
    models[HF_MODEL] = (hf_twin(ours), False)
    x, y = random_batch(settings, torch.Generator().manual_seed(seed))
    train_config = TrainConfig()

    def trainer(model: torch.nn.Module, is_ours: bool) -> Callable[[], None]:
        optimizer = make_optimizer(model, train_config, settings.device)

        def steps() -> None:
            for _ in range(settings.steps):
                with autocast(settings.device, settings.dtype):
                    loss = model(x, y, return_logits=False)[1] if is_ours else model(input_ids=x, labels=y).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return steps

    tokens = settings.steps * settings.batch_size * settings.seq_len
    contenders = [Contender(name, trainer(model, is_ours), tokens) for name, (model, is_ours) in models.items()]
    rates, warmup = interleave(contenders + [peak_matmul(settings.device, settings.dtype)], rounds, settings.device,
                               "training")
    peak = rates.pop(PEAK)
    figures = compared("training", "tokens/s", rates, HF_MODEL, "HF")
    per_token = flops_per_token(settings.model_config, settings.seq_len)
    peaks = {"MFU": peak}
    datasheet = peak_flops(settings.device)
    if datasheet is not None:
        peaks[f"MFU of datasheet {datasheet / 1e12:,.0f} TFLOP/s"] = [datasheet] * rounds
    figures += [Figure("training", f"{label}, {name}", "% of peak",
                       [100 * per_token * rate / round_peak for rate, round_peak in zip(samples, peak_samples)])
                for label, peak_samples in peaks.items() for name, samples in rates.items()]
    figures.append(Figure("hardware", f"peak matmul ({str(settings.dtype).removeprefix('torch.')})", "TFLOP/s",
                          [rate / 1e12 for rate in peak]))
    return figures, warmup
