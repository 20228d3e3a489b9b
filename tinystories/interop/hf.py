"""Hugging Face interop: our Model to and from `transformers.GPT2LMHeadModel`, and model folders on disk.

The two networks compute the same function; only names and layouts differ. GPT-2's `Conv1D` stores weights
as (in, out) where nn.Linear stores (out, in), so those are transposed; q|k|v are concatenated in the same
order in both. transformers is a dev dependency (training never needs it), so it is imported lazily.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn as nn

from model.model import Config, Model
from tinystories.data.hub import hub_resolves
from tinystories.errors import UserError, first_line
from tinystories.files import ensure_folder, folders_removed_on_failure
from tinystories.generation.sampling import SamplingConfig
from tinystories.tokenizer import EOT_ID, EOT_TOKEN, VOCAB_SIZE, bpe_file_paths, get_tokenizer

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
# Below half a byte of stored weights per parameter (4-bit quantization), config.json cannot describe the
# weights: building its model would only fill memory with random values before the load is refused.
_MIN_STORED_BYTES_PER_PARAMETER = 0.5
# A sentence whose ids the saved tokenizer must reproduce (it covers spaces, digits, punctuation, unicode).
_TOKENIZER_PROBE = "Hello world! Once upon a time, 3 little cats said: \"don't\" — café 🐈\n\n  end"


def _parameter_names(n_layer: int) -> list[tuple[str, str, bool]]:
    names = list(_OTHER_PARAMETERS)
    for layer in range(n_layer):
        names += [(f"blocks.{layer}.{ours}", f"transformer.h.{layer}.{theirs}", transposed)
                  for ours, theirs, transposed in _BLOCK_PARAMETERS]
    return names


def _transformers() -> ModuleType:
    try:
        import transformers
    except ModuleNotFoundError:
        raise UserError("Hugging Face interop needs transformers: pip install -r requirements-dev.txt") from None
    return transformers


def gpt2_config(config: Config) -> "transformers.GPT2Config":
    """The GPT2Config of a network identical to `Model(config)`."""
    eot = EOT_ID if config.vocab_size > EOT_ID else None  # an id outside the vocabulary would be invalid
    return _transformers().GPT2Config(
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
    hf_model = _transformers().GPT2LMHeadModel(gpt2_config(model.config))
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


@contextlib.contextmanager
def _quiet_transformers(progress_bars: bool) -> Iterator[None]:
    """Silence transformers' warnings (our checks replace its load report) and optionally its progress bars."""
    logging = _transformers().utils.logging
    verbosity, bars_enabled = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    if not progress_bars:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars_enabled:
            logging.enable_progress_bar()


def _last_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1].strip() if text else type(error).__name__


def _offline_options(path_or_repo_id: str) -> dict[str, bool]:
    """from_pretrained options: a local folder needs none; without a reachable Hub, only the cache can serve a
    repo id (asking the network would retry for 25 s)."""
    return {} if Path(path_or_repo_id).is_dir() or hub_resolves() else {"local_files_only": True}


def _config_dict(path_or_repo_id: str, offline: dict[str, bool]) -> dict:
    """The model's config.json as a dict; a folder or repo id without one is a UserError."""
    try:
        config_dict, _ = _transformers().PretrainedConfig.get_config_dict(path_or_repo_id, **offline)
    except OSError as error:
        where = "in the Hugging Face cache, and the Hub is unreachable" if offline else \
            f"a loadable Hugging Face repo: {first_line(error)}"
        raise UserError(f"{path_or_repo_id} is neither a model folder nor {where}") from None
    if not isinstance(config_dict, dict):
        raise UserError(f"{path_or_repo_id}: config.json must hold a JSON object of settings")
    if config_dict.get("model_type") is None:
        raise UserError(f"{path_or_repo_id} has no Hugging Face model config (config.json)")
    return config_dict


def _from_pretrained(model_class: type, path_or_repo_id: str, offline: dict[str, bool], **options):
    """model_class.from_pretrained, refusing what it would silently fill with random weights."""
    try:
        with warnings.catch_warnings():
            # torch warns (e.g. about a pickle protocol) before its own error; our one line says it all.
            warnings.simplefilter("ignore")
            hf_model, info = model_class.from_pretrained(path_or_repo_id, output_loading_info=True,
                                                         ignore_mismatched_sizes=True, **offline, **options)
    except Exception as error:  # OSError, safetensors' and torch's errors alike mean unreadable weights
        reason = first_line(error)
        if "weights_only" in reason:  # torch's advice to load the pickle unsafely would run the file's code
            reason = ("its pickled weights (pytorch_model.bin) hold something other than tensors and plain values, "
                      "which are never loaded, for safety")
        raise UserError(f"{path_or_repo_id}: weights could not be loaded: {reason}") from None
    if info["mismatched_keys"]:
        name, found, expected = sorted(info["mismatched_keys"])[0]
        raise UserError(f"{path_or_repo_id}: {name} has shape {tuple(found)} but its config.json implies "
                        f"{tuple(expected)}")
    if info["missing_keys"]:
        raise UserError(f"{path_or_repo_id}: weights are missing: {', '.join(sorted(info['missing_keys'])[:3])}")
    if info["unexpected_keys"]:  # e.g. n_layer smaller than the layers stored: a silently truncated model
        raise UserError(f"{path_or_repo_id} holds weights its config.json does not use: "
                        f"{', '.join(sorted(info['unexpected_keys'])[:3])}")
    return hf_model


def _stored_weight_bytes(path_or_repo_id: str, offline: dict[str, bool]) -> int | None:
    """The bytes of weights that from_pretrained would read (safetensors first, else pytorch_model*.bin), or None
    where that is not known without loading them (from_pretrained then reports what is wrong with them)."""
    folder = Path(path_or_repo_id)
    if folder.is_dir():
        for pattern in ("*.safetensors", "pytorch_model*.bin"):
            files = sorted(path for path in folder.glob(pattern) if path.is_file())
            if files:
                sizes = [_weight_file_bytes(path) for path in files]
                return None if None in sizes else sum(sizes)
        return None
    from transformers.utils import cached_file

    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json"):
        try:  # the download from_pretrained would make next; it then reads the file from the cache
            resolved = cached_file(path_or_repo_id, name, _raise_exceptions_for_missing_entries=False,
                                   _raise_exceptions_for_connection_errors=False, **offline)
        except Exception:
            return None
        if resolved is None:
            continue
        if not name.endswith(".json"):
            return _weight_file_bytes(Path(resolved))
        try:  # a sharded repo: its index states the total
            total = json.loads(Path(resolved).read_text(encoding="utf-8"))["metadata"]["total_size"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return total if isinstance(total, int) else None
    return None


def _weight_file_bytes(path: Path) -> int | None:
    """The tensor bytes a safetensors file's header declares, or a torch zip file's size; None for a file too
    damaged to say (a truncated one) or an old-style pickle."""
    try:
        if path.suffix != ".safetensors":
            return path.stat().st_size if zipfile.is_zipfile(path) else None
        with open(path, "rb") as file:
            header_size = int.from_bytes(file.read(8), "little")
            if header_size > 100_000_000:
                return None
            header = json.loads(file.read(header_size))
        spans = [entry["data_offsets"] for name, entry in header.items() if name != "__metadata__"]
        end = max((stop for _, stop in spans), default=0)
        if path.stat().st_size < 8 + header_size + end:  # truncated
            return None
        return sum(stop - start for start, stop in spans)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _check_config_fits_weights(path_or_repo_id: str, offline: dict[str, bool], hf_config, build) -> None:
    """Refuse, before any model is built in memory, a config.json that describes a model far larger than its
    stored weights (a wrong model_type builds that model from its defaults: 'llama' is 6.7 billion parameters,
    out of memory before any weight is read). `build(hf_config)` makes the model, here on the meta device."""
    model_type = hf_config.model_type
    try:
        with warnings.catch_warnings(), torch.device("meta"):  # no memory: shapes only
            warnings.simplefilter("ignore")
            meta_model = build(hf_config)
    except Exception as error:  # e.g. a model_type with no causal language model
        raise UserError(f"{path_or_repo_id}: transformers cannot build a causal language model of model_type "
                        f"{model_type!r}: {first_line(error)[:200]}") from None
    parameters = sum(parameter.numel() for parameter in meta_model.parameters())
    stored = _stored_weight_bytes(path_or_repo_id, offline)
    if stored is not None and parameters * _MIN_STORED_BYTES_PER_PARAMETER > stored:
        raise UserError(f"{path_or_repo_id}: config.json describes a {model_type!r} model of {parameters:,} "
                        f"parameters, far more than its {stored / 1e6:,.1f} MB of weights hold; check its "
                        f"model_type and sizes")


def load_hf(path_or_repo_id: str) -> Model:
    """Our Model from a GPT-2-architecture model folder or Hugging Face hub repo id."""
    transformers = _transformers()
    offline = _offline_options(path_or_repo_id)
    # A local folder needs no download, so its bars would only add noise before a possible error line.
    with _quiet_transformers(progress_bars=not Path(path_or_repo_id).is_dir()):
        config_dict = _config_dict(path_or_repo_id, offline)
        if config_dict["model_type"] != "gpt2":
            raise UserError(f"{path_or_repo_id} is a {config_dict['model_type']!r} model; only GPT-2-architecture "
                            f"models convert")
        try:
            hf_config = transformers.GPT2Config.from_dict(config_dict)
        except Exception as error:  # transformers' validation raises several types; the cause is the last line
            raise UserError(f"{path_or_repo_id}: config.json is invalid: {_last_line(error)}") from None
        try:
            config_from_gpt2(hf_config)  # refuse an unconvertible model before its weights are downloaded
        except UserError as error:
            raise UserError(f"{path_or_repo_id}: {error}") from None
        _check_config_fits_weights(path_or_repo_id, offline, hf_config, transformers.GPT2LMHeadModel)
        hf_model = _from_pretrained(transformers.GPT2LMHeadModel, path_or_repo_id, offline, config=hf_config)
    return from_hf(hf_model)


def encodes_like_gpt2(tokenizer: "transformers.PreTrainedTokenizerBase") -> bool:
    """Whether a transformers tokenizer has GPT-2's vocabulary size, end-of-text id and ids on a sample text."""
    probe_ids = tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    return (len(tokenizer) == VOCAB_SIZE and probe_ids == get_tokenizer().encode(_TOKENIZER_PROBE)
            and tokenizer.convert_tokens_to_ids(EOT_TOKEN) == EOT_ID)


def check_gpt2_tokenizer(tokenizer: "transformers.PreTrainedTokenizerBase", where: str) -> None:
    """Refuse a tokenizer that does not encode like ours: the prepared token files are GPT-2 BPE ids."""
    if not encodes_like_gpt2(tokenizer):
        raise UserError(f"{where}: its tokenizer does not encode like GPT-2's ({len(tokenizer):,} ids, different ids "
                        f"for a sample text); the prepared token files are GPT-2 ids, so its loss would be meaningless")


def load_causal_lm(path_or_repo_id: str) -> "transformers.PreTrainedModel":
    """Any transformers causal LM (GPT-2, GPT-Neo, ...) from a folder or Hub id, fp32, CPU, eval mode, after
    checking that its tokenizer encodes like GPT-2's and its vocabulary covers GPT-2's ids."""
    transformers = _transformers()
    offline = _offline_options(path_or_repo_id)
    with _quiet_transformers(progress_bars=not Path(path_or_repo_id).is_dir()):
        config_dict = _config_dict(path_or_repo_id, offline)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path_or_repo_id, **offline)
        except Exception as error:  # a missing file, an unknown tokenizer class or a corrupt JSON alike
            raise UserError(f"{path_or_repo_id}: no usable tokenizer, so it cannot be checked against GPT-2's: "
                            f"{first_line(error)}") from None
        check_gpt2_tokenizer(tokenizer, path_or_repo_id)
        try:
            hf_config = transformers.AutoConfig.for_model(**config_dict)
        except Exception as error:  # an unknown model_type, or settings its config class rejects
            model_type = config_dict["model_type"]
            if model_type not in transformers.CONFIG_MAPPING:  # transformers' message lists every known type
                raise UserError(f"{path_or_repo_id}: transformers {transformers.__version__} does not know the "
                                f"model_type {model_type!r} of its config.json") from None
            raise UserError(f"{path_or_repo_id}: config.json of model_type {model_type!r} is invalid: "
                            f"{_last_line(error)}") from None
        _check_config_fits_weights(path_or_repo_id, offline, hf_config, transformers.AutoModelForCausalLM.from_config)
        hf_model = _from_pretrained(transformers.AutoModelForCausalLM, path_or_repo_id, offline, dtype=torch.float32)
    if hf_model.config.vocab_size < VOCAB_SIZE:
        raise UserError(f"{path_or_repo_id}: its vocabulary of {hf_model.config.vocab_size:,} ids does not cover "
                        f"GPT-2's {VOCAB_SIZE:,}")
    return hf_model.eval()


def gpt2_tokenizer(model_max_length: int) -> "transformers.PreTrainedTokenizerBase":
    """GPT-2's tokenizer built from the local BPE files, so saving it needs no network."""
    paths = bpe_file_paths()
    vocab = json.loads(paths["encoder.json"].read_text(encoding="utf-8"))
    lines = paths["vocab.bpe"].read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # line 0 is "#version: 0.2"
    # In transformers 5, GPT2Tokenizer(vocab_file=..., merges_file=...) silently builds an empty tokenizer;
    # the vocabulary and merges must be passed as a dict and a list.
    return _transformers().GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


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
    return _transformers().GenerationConfig(
        max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=not greedy,
        eos_token_id=EOT_ID if stop_at_eos else None, pad_token_id=EOT_ID,
        **({} if greedy else {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}))


def save_hf(model: Model, out_dir: str | os.PathLike) -> list[Path]:
    """Write a Hugging Face model folder (config, safetensors weights, tokenizer); return the files written.

    Everything is written to a hidden temporary folder (beside `out_dir`, or inside it if it exists) and checked
    there, then moved into place: a failure (a full disk) leaves `out_dir` as it was. Files of `out_dir` that
    the export does not write are kept. `GPT2LMHeadModel.from_pretrained(out_dir)` and
    `AutoTokenizer.from_pretrained(out_dir)` load it offline.
    """
    transformers = _transformers()
    from safetensors import SafetensorError  # what transformers' weight writer raises, a full disk included
    target = Path(out_dir)
    with folders_removed_on_failure(target):
        check_output_folder(out_dir)
        kept = f"the previous files in {out_dir} are kept" if target.is_dir() else "nothing was written"
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                            dir=target if target.is_dir() else target.parent))
        except OSError as error:
            raise UserError(f"could not write the model folder {out_dir}: {error.strerror or error}") from None
        try:
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's owner-only mode would stay with the renamed folder
            with _quiet_transformers(progress_bars=False):  # a bar for one file would only add lines to stderr
                to_hf(model).save_pretrained(staging)
                gpt2_tokenizer(model.config.block_size).save_pretrained(staging)
            # The original files too, for tools that read a slow GPT-2 tokenizer from vocab.json and merges.txt.
            paths = bpe_file_paths()
            shutil.copyfile(paths["encoder.json"], staging / "vocab.json")
            shutil.copyfile(paths["vocab.bpe"], staging / "merges.txt")
            if not encodes_like_gpt2(transformers.AutoTokenizer.from_pretrained(staging)):
                raise UserError(f"the tokenizer saved for {out_dir} does not reproduce GPT-2's ids with "
                                f"transformers {transformers.__version__}; try another transformers version "
                                f"({kept})")
            names = sorted(path.name for path in staging.iterdir() if path.is_file())
            _move_into_place(staging, target, names)
        except (OSError, SafetensorError) as error:
            reason = getattr(error, "strerror", None) or first_line(error)
            raise UserError(f"could not write the model folder {out_dir}: {reason}; {kept} "
                            "(the checkpoint is unchanged)") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [target / name for name in names]


def check_output_folder(out_dir: str | os.PathLike) -> Path:
    """Check before any work that the model folder `out_dir` can be written: an existing folder that takes new
    files, or a path whose folder exists or can be made and takes new files (the folder itself is not made)."""
    target = Path(out_dir)
    if target.is_dir():
        return ensure_folder(target)
    if target.exists():
        raise UserError(f"{out_dir} is a file, not a folder; pass a folder path")
    ensure_folder(target.parent)
    return target


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _move_into_place(staging: Path, target: Path, names: list[str]) -> None:
    """Give the files `names` written in `staging` ordinary permissions, make them durable and move them to
    `target`: the whole folder in one rename where `target` does not exist, else file by file (each rename
    replaces one file in one step)."""
    mode = 0o666 & ~_umask()  # a plain open()'s; transformers writes model.safetensors owner-only
    for name in names:
        with open(staging / name, "rb+") as file:
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
    if not target.exists():
        os.rename(staging, target)
        synced = target.parent
    else:
        clashes = [name for name in names if (target / name).is_dir()]
        if clashes:
            raise UserError(f"{target / clashes[0]} is a folder; the model folder needs a file of that name")
        for name in names:
            os.replace(staging / name, target / name)
        synced = target
    directory = os.open(synced, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the renames themselves durable
    finally:
        os.close(directory)
