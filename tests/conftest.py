"""Shared test settings: the repository root on sys.path, no network, a fixed seed per test."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hugging Face hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A small prepared synthetic corpus (train/validation/test token files), shared by the whole session."""
    from tinystories.data import DataConfig, prepare_data

    data_dir = tmp_path_factory.mktemp("synthetic_data")
    return prepare_data(DataConfig(dataset="synthetic", max_stories=400, data_dir=str(data_dir)), progress=False)
