"""Convert between our checkpoints and Hugging Face GPT-2 model folders.

    python export.py --model results/checkpoints/best_model.pth --out hf_model/   # ours -> Hugging Face
    python export.py --from_hf hf_model/ --out model.pth                          # Hugging Face -> ours

--from_hf also takes a hub repo id of any GPT-2-architecture model whose sizes fit our Config.
"""
from __future__ import annotations

from pathlib import Path

from tinystories.checkpoint import load_model, model_checkpoint, save_checkpoint
from tinystories.cli import ArgumentParser
from tinystories.errors import UserError, run_main
from tinystories.hf import load_hf, save_hf


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="our checkpoint (.pth) to export as a Hugging Face model folder")
    source.add_argument("--from_hf", metavar="DIR_OR_REPO",
                        help="Hugging Face GPT-2 model folder or hub repo id to import as our checkpoint")
    parser.add_argument("--out", required=True, help="the folder (with --model) or .pth file (with --from_hf) to write")
    args = parser.parse_args()

    if args.model is not None:
        model, _ = load_model(args.model)
        files = save_hf(model, args.out)
        print(f"wrote Hugging Face model folder {args.out}: {', '.join(file.name for file in files)}")
    else:
        if Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a folder; pass the path of the .pth file to write")
        model = load_hf(args.from_hf)
        save_checkpoint(args.out, model_checkpoint(model))
        print(f"wrote checkpoint {args.out} ({model.num_parameters():,} parameters, config {model.config})")


if __name__ == "__main__":
    run_main(main)
