"""Convert between our checkpoints and Hugging Face GPT-2 model folders, and export GGUF files for llama.cpp.

    python export.py --model results/checkpoints/best_model.pth --out hf_model/   # ours -> Hugging Face
    python export.py --from_hf hf_model/ --out model.pth                          # Hugging Face -> ours
    python export.py --model results/checkpoints/best_model.pth --format gguf --out model.gguf [--outtype f16]

--from_hf also takes a hub repo id of any GPT-2-architecture model whose sizes fit our Config.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tinystories.checkpoint import load_model, model_checkpoint, save_checkpoint
from tinystories.cli import ArgumentParser
from tinystories.errors import UserError, run_main
from tinystories.files import check_not_an_input, check_output_file, folders_removed_on_failure
from tinystories.interop.gguf import EXACT_GELU_WARNING, OUTTYPES, save_gguf
from tinystories.interop.hf_folders import check_output_folder, load_hf, save_hf


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="our checkpoint (.pth) to export (see --format)")
    source.add_argument("--from_hf", metavar="DIR_OR_REPO",
                        help="Hugging Face GPT-2 model folder or hub repo id to import as our checkpoint")
    parser.add_argument("--out", required=True,
                        help="the folder (--model, --format hf), .gguf file (--format gguf) or .pth file "
                             "(--from_hf) to write")
    parser.add_argument("--format", choices=["hf", "gguf"], default="hf",
                        help="with --model: a Hugging Face model folder, or one GGUF file for llama.cpp, Ollama, "
                             "LM Studio")
    parser.add_argument("--outtype", choices=OUTTYPES, default=None,
                        help="GGUF weight type (default f32): f16 halves the file, q8_0 quarters it; vectors stay f32")
    args = parser.parse_args()
    if args.outtype is not None and (args.model is None or args.format != "gguf"):
        raise UserError("--outtype applies to --format gguf only")
    if args.from_hf is not None and args.format != "hf":
        raise UserError("--format applies to --model only (--from_hf always writes our .pth checkpoint)")

    # Refused before any work: an output that would overwrite an input (the same file, also through `..` or a
    # link, a file inside the Hugging Face folder read, or a model folder holding the checkpoint).
    if args.model is not None:
        check_not_an_input(args.out, "--out", [args.model], folder=args.format == "hf")
    elif Path(args.from_hf).exists():  # else a hub repo id, read from the Hub's cache
        check_not_an_input(args.out, "--out", [args.from_hf])

    writes_folder = args.model is not None and args.format == "hf"
    # A failed run leaves none of the folders it made for --out (the checks below make its parents).
    with folders_removed_on_failure(Path(args.out) if writes_folder else Path(args.out).parent):
        if args.model is not None and args.format == "gguf":
            check_output_file(args.out, "--out")
            model, _ = load_model(args.model)
            save_gguf(model, args.out, args.outtype or "f32")
            if model.config.activation == "gelu":
                print(EXACT_GELU_WARNING, file=sys.stderr)
            print(f"wrote GGUF file {args.out} ({args.outtype or 'f32'}, "
                  f"{Path(args.out).stat().st_size / 1e6:.1f} MB) for llama.cpp's gpt2 architecture with GPT-2's "
                  f"tokenizer")
        elif args.model is not None:
            check_output_folder(args.out)
            model, _ = load_model(args.model)
            files = save_hf(model, args.out)
            print(f"wrote Hugging Face model folder {args.out}: {', '.join(file.name for file in files)}")
        else:
            check_output_file(args.out, "--out")
            model = load_hf(args.from_hf)
            save_checkpoint(args.out, model_checkpoint(model))
            print(f"wrote checkpoint {args.out} ({model.num_parameters():,} parameters, config {model.config})")



if __name__ == "__main__":
    run_main(main)
