"""Shared test settings: the repository root on sys.path, no network (a connection or name lookup beyond this
machine fails the test), a fixed seed per test, and a local stand-in for the Hugging Face Hub."""
import ipaddress
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hugging Face hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: the workers share the cores, so each (and every script it starts) computes on one thread.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


class NetworkUsed(AssertionError):
    """Not an OSError, so code that treats a failed lookup as "offline" cannot swallow it."""


def _is_loopback(host) -> bool:
    if host in (None, "localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host)).is_loopback
    except ValueError:
        return False


_getaddrinfo, _connect = socket.getaddrinfo, socket.socket.connect


def _local_getaddrinfo(host, *args, **kwargs):
    if not _is_loopback(host):
        raise NetworkUsed(f"a test looked up {host!r}: the suite must not use the network")
    return _getaddrinfo(host, *args, **kwargs)


def _local_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        raise NetworkUsed(f"a test connected to {address!r}: the suite must not use the network")
    return _connect(self, address)


socket.getaddrinfo = _local_getaddrinfo
socket.socket.connect = _local_connect


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules that decode tiny models one short sequence at a time: a second thread only adds waiting,
    which on a busy machine made each step many times slower. Use with pytest.mark.usefixtures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A small prepared synthetic corpus (train/validation/test token files), shared by the whole session."""
    from tinystories.data import DataConfig, prepare_data

    data_dir = tmp_path_factory.mktemp("synthetic_data")
    return prepare_data(DataConfig(dataset="synthetic", max_stories=400, data_dir=str(data_dir)), progress=False)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A FakeHub (tests/hub_server.py) that huggingface_hub in this process downloads from, into an empty
    cache under tmp_path; `fake_hub.env` is the environment that does the same for a subprocess."""
    import huggingface_hub.constants as constants

    from tests.hub_server import FakeHub

    hub = FakeHub()
    endpoint = hub.start()
    cache = tmp_path / "hf_cache"
    # huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_CACHE once, at import.
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    hub.cache = cache
    hub.env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0",
               "TRANSFORMERS_OFFLINE": "0", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    yield hub
    hub.stop()


def _cannot_create_files_in(folder: Path) -> bool:
    try:
        (folder / ".write_probe").touch()
    except OSError:
        return True
    (folder / ".write_probe").unlink()
    return False


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """A folder in which this process cannot create files: a chmod 555 folder, or for root (whom permissions
    do not stop) a folder of the kernel's read-only sysfs."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys/kernel")):
        if candidate.is_dir() and _cannot_create_files_in(candidate):
            yield candidate
            break
    else:
        pytest.skip("no folder here refuses new files")
    folder.chmod(0o755)
