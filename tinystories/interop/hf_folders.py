"""Hugging Face model folders on disk and on the Hub: loading one into our Model (load_hf) or as any causal LM
(load_causal_lm), each checked before anything is built, and writing ours as a folder (save_hf) that appears
whole or not at all. transformers is imported lazily (hf.py)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from model.model import Model
from tinystories.data.hub import hub_resolves
from tinystories.errors import UserError, first_line
from tinystories.files import default_mode, ensure_folder, folders_removed_on_failure, fsync_folder
from tinystories.interop.hf import config_from_gpt2, from_hf, import_transformers, to_hf

if TYPE_CHECKING:
    import transformers
from tinystories.tokenizer import EOT_ID, EOT_TOKEN, VOCAB_SIZE, bpe_file_paths, get_tokenizer

# Below half a byte of stored weights per parameter (4-bit quantization), config.json cannot describe the
# weights: building its model would only fill memory with random values before the load is refused.
_MIN_STORED_BYTES_PER_PARAMETER = 0.5


# A sentence whose ids the saved tokenizer must reproduce (it covers spaces, digits, punctuation, unicode).
_TOKENIZER_PROBE = "Hello world! Once upon a time, 3 little cats said: \"don't\" — café 🐈\n\n  end"


@contextlib.contextmanager
def _quiet_transformers(progress_bars: bool) -> Iterator[None]:
    """Silence transformers' warnings (our checks replace its load report) and optionally its progress bars."""
    logging = import_transformers().utils.logging
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
        config_dict, _ = import_transformers().PretrainedConfig.get_config_dict(path_or_repo_id, **offline)
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
    transformers = import_transformers()
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
    transformers = import_transformers()
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
    return import_transformers().GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def save_hf(model: Model, out_dir: str | os.PathLike) -> list[Path]:
    """Write a Hugging Face model folder (config, safetensors weights, tokenizer); return the files written.

    Everything is written to a hidden temporary folder (beside `out_dir`, or inside it if it exists) and checked
    there, then moved into place: a failure (a full disk) leaves `out_dir` as it was. Files of `out_dir` that
    the export does not write are kept. `GPT2LMHeadModel.from_pretrained(out_dir)` and
    `AutoTokenizer.from_pretrained(out_dir)` load it offline.
    """
    transformers = import_transformers()
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
            os.chmod(staging, default_mode(folder=True))  # mkdtemp's owner-only mode would stay with the renamed folder
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


def _move_into_place(staging: Path, target: Path, names: list[str]) -> None:
    """Give the files `names` written in `staging` ordinary permissions, make them durable and move them to
    `target`: the whole folder in one rename where `target` does not exist, else file by file (each rename
    replaces one file in one step)."""
    mode = default_mode()  # a plain open()'s; transformers writes model.safetensors owner-only
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
    fsync_folder(synced)
