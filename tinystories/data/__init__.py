"""The data: from stories (the Hub, local files or a generated corpus) to token files to training batches.

    prepare_data(DataConfig(...)) -> folder with train.bin, validation.bin, test.bin and meta.json
    load_tokens(folder, split)    -> the split's token ids (a checked, read-only memmap)
    read_stories(paths)           -> the stories of local files, as --data_path reads them
    batches.WindowBatches         -> seeded, resumable, rank-aware training batches
"""
from tinystories.data.preparation import DataConfig, prepare_data
from tinystories.data.readers import read_stories
from tinystories.data.token_files import load_tokens, read_meta

__all__ = ["DataConfig", "prepare_data", "read_stories", "load_tokens", "read_meta"]
