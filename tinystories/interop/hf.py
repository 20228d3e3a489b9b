"""Hugging Face interop: our Model to and from `transformers.GPT2LMHeadModel`, and model folders on disk.

The two networks compute the same function; only names and layouts differ. GPT-2's `Conv1D` stores weights
as (in, out) where nn.Linear stores (out, in), so those are transposed; q|k|v are concatenated in the same
order in both. transformers is a dev dependency (training never needs it), so it is imported lazily.
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from model.model import Config, Model
from tinystories.errors import UserError
from tinystories.generation.sampling import SamplingConfig
from tinystories.tokenizer import EOT_ID

if TYPE_CHECKING:
    import transformers

# Our activation name -> GPT-2's; on import, GPT-2's "gelu_pytorch_tanh" is the same tanh approximation.
ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_new": "gelu_new"}
ACTIVATION_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new"}

# (our name, GPT-2's name, transposed?) for the parameters of block N.
_BLOCK_PARAMETERS = [
    ("attn_norm.weight", "ln_1.weight", False),
    ("attn_norm.bias", "ln_1.bias", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True),
    ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.out_proj.weight", "attn.c_proj.weight", True),
    ("attn.out_proj.bias", "attn.c_proj.bias", False),
    ("mlp_norm.weight", "ln_2.weight", False),
    ("mlp_norm.bias", "ln_2.bias", False),
    ("mlp.fc.weight", "mlp.c_fc.weight", True),
    ("mlp.fc.bias", "mlp.c_fc.bias", False),
    ("mlp.proj.weight", "mlp.c_proj.weight", True),
    ("mlp.proj.bias", "mlp.c_proj.bias", False),
]
# lm_head is absent: both models tie it to the token embedding.
_OTHER_PARAMETERS = [
    ("token_embedding.weight", "transformer.wte.weight", False),
    ("position_embedding.weight", "transformer.wpe.weight", False),
    ("final_norm.weight", "transformer.ln_f.weight", False),
    ("final_norm.bias", "transformer.ln_f.bias", False),
]


def _parameter_names(n_layer: int) -> list[tuple[str, str, bool]]:
    names = list(_OTHER_PARAMETERS)
    for layer in range(n_layer):
        names += [(f"blocks.{layer}.{ours}", f"transformer.h.{layer}.{theirs}", transposed)
                  for ours, theirs, transposed in _BLOCK_PARAMETERS]
    return names


def import_transformers() -> ModuleType:
    try:
        import transformers
    except ModuleNotFoundError:
        raise UserError("Hugging Face interop needs transformers: pip install -r requirements-dev.txt") from None
    return transformers


def gpt2_config(config: Config) -> "transformers.GPT2Config":
    """The GPT2Config of a network identical to `Model(config)`."""
    eot = EOT_ID if config.vocab_size > EOT_ID else None  # an id outside the vocabulary would be invalid
    return import_transformers().GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_ctx=config.block_size,
        n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head, n_inner=None,
        activation_function=ACTIVATION_TO_HF[config.activation], layer_norm_epsilon=config.layer_norm_epsilon,
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot)


def config_from_gpt2(hf_config: "transformers.GPT2Config") -> Config:
    """Our Config for a GPT-2 config; a GPT-2 variant our Model cannot represent exactly is a UserError."""
    def refuse(reason: str) -> UserError:
        return UserError(f"this GPT-2 model cannot be converted: {reason}")

    if hf_config.activation_function not in ACTIVATION_FROM_HF:
        raise refuse(f"activation {hf_config.activation_function!r} is not one of {', '.join(ACTIVATION_FROM_HF)}")
    if hf_config.n_inner is not None and hf_config.n_inner != 4 * hf_config.n_embd:
        raise refuse(f"n_inner is {hf_config.n_inner}, but the MLP must be 4 * n_embd = {4 * hf_config.n_embd} wide")
    if getattr(hf_config, "add_cross_attention", False):
        raise refuse("it has cross-attention layers")
    if not getattr(hf_config, "scale_attn_weights", True) or getattr(hf_config, "scale_attn_by_inverse_layer_idx",
                                                                      False):
        raise refuse("its attention scores are not scaled by 1/sqrt(head size)")
    try:
        return Config(vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions, n_layer=hf_config.n_layer,
                      n_head=hf_config.n_head, n_embd=hf_config.n_embd,
                      dropout=hf_config.resid_pdrop,  # our single dropout rate; inference ignores it anyway
                      bias=True, activation=ACTIVATION_FROM_HF[hf_config.activation_function],
                      layer_norm_epsilon=hf_config.layer_norm_epsilon)
    except (TypeError, ValueError) as error:
        raise refuse(str(error)) from None


def _copy_parameters(target: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy `values` into `target`'s parameters (a tied parameter is named once); all must be given."""
    parameters = dict(target.named_parameters())
    if parameters.keys() != values.keys():
        missing, extra = sorted(parameters.keys() - values.keys()), sorted(values.keys() - parameters.keys())
        raise ValueError(f"parameter names differ: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, value in values.items():
            if parameters[name].shape != value.shape:
                raise UserError(f"{name} has shape {tuple(value.shape)}, expected {tuple(parameters[name].shape)}")
            parameters[name].copy_(value)


def to_hf(model: Model) -> "transformers.GPT2LMHeadModel":
    """A GPT2LMHeadModel (fp32, CPU, eval mode) that computes the same logits as `model`."""
    hf_model = import_transformers().GPT2LMHeadModel(gpt2_config(model.config))
    hf_parameters = dict(hf_model.named_parameters())
    state = model.state_dict()
    values = {}
    for ours, theirs, transposed in _parameter_names(model.config.n_layer):
        if ours in state:
            values[theirs] = state[ours].t() if transposed else state[ours]
        else:
            # bias=False models: GPT-2 always has biases, and zero biases compute the same function.
            values[theirs] = torch.zeros_like(hf_parameters[theirs])
    _copy_parameters(hf_model, values)
    return hf_model.eval()


def from_hf(hf_model: "transformers.GPT2LMHeadModel") -> Model:
    """Our Model (fp32, CPU, eval mode) computing the same logits as a GPT-2-architecture `hf_model`."""
    config = config_from_gpt2(hf_model.config)
    parameters = dict(hf_model.named_parameters())
    output = hf_model.get_output_embeddings().weight
    if output is not hf_model.transformer.wte.weight and not torch.equal(output, hf_model.transformer.wte.weight):
        raise UserError("this GPT-2 model cannot be converted: its output layer is not tied to the token embedding")
    values = {}
    for ours, theirs, transposed in _parameter_names(config.n_layer):
        if theirs not in parameters:
            raise UserError(f"this GPT-2 model cannot be converted: it has no parameter {theirs}")
        values[ours] = parameters[theirs].t() if transposed else parameters[theirs]
    model = Model(config)
    _copy_parameters(model, values)
    return model.eval()


def left_padded(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one batch for generate(): input ids padded on the left with
    <|endoftext|>, and the attention mask. Left padding keeps every prompt's last token in the last column,
    where generation continues."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[EOT_ID] * (width - len(ids)) + ids for ids in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
    return input_ids, attention_mask


def generation_config(sampling: SamplingConfig, max_new_tokens: int, num_beams: int = 1,
                      stop_at_eos: bool = True) -> "transformers.GenerationConfig":
    """Our sampling settings as transformers' GenerationConfig: greedy at temperature 0 or with beams."""
    greedy = sampling.temperature == 0.0 or num_beams > 1
    return import_transformers().GenerationConfig(
        max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=not greedy,
        eos_token_id=EOT_ID if stop_at_eos else None, pad_token_id=EOT_ID,
        **({} if greedy else {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}))


