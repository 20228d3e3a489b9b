"""The Hub code path on local files (only the download is replaced), and the download's own checks."""
import hashlib

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub.utils import LocalEntryNotFoundError

from tinystories.data import DataConfig, load_tokens, prepare_data, read_meta
from tinystories.data import hub
from tinystories.data.synthetic import synthetic_stories
from tinystories.errors import UserError
from tinystories.tokenizer import EOT_TOKEN, get_tokenizer


def fake_hub(tmp_path, monkeypatch, dataset):
    """Writes small stand-ins for the dataset's Hub files; download_hub_file returns them."""
    stories = {}
    local = {}
    for index, hub_file in enumerate(hub.HUB_FILES[dataset]):
        stories[hub_file.filename] = list(synthetic_stories(f"{hub_file.role}{index}", 60))
        path = tmp_path / "hub" / hub_file.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            pq.write_table(pa.table({"text": stories[hub_file.filename]}), path)
        else:
            path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories[hub_file.filename]), encoding="utf-8")
        local[hub_file.filename] = path
    downloads = []

    def download(hub_file):
        downloads.append(hub_file.filename)
        return local[hub_file.filename], hub.sha256_of(local[hub_file.filename])

    monkeypatch.setattr(hub, "download_hub_file", download)
    return stories, downloads


def decoded(data_dir, split):
    return get_tokenizer().decode(load_tokens(data_dir, split).tolist()).split(EOT_TOKEN)[:-1]


@pytest.mark.parametrize("dataset", ["tinystories", "tinystories-v2"])
def test_hub_files_become_train_validation_and_test(tmp_path, monkeypatch, capsys, dataset):
    stories, downloads = fake_hub(tmp_path, monkeypatch, dataset)
    monkeypatch.chdir(tmp_path)
    data_dir = prepare_data(DataConfig(dataset=dataset), progress=False)
    assert str(data_dir) == f"data/{dataset}"
    training = [s for f in hub.HUB_FILES[dataset] if f.role == "train" for s in stories[f.filename]]
    held_out = [s for f in hub.HUB_FILES[dataset] if f.role == "test" for s in stories[f.filename]]
    assert sorted(decoded(data_dir, "train") + decoded(data_dir, "validation")) == sorted(training)
    assert decoded(data_dir, "test") == held_out
    meta = read_meta(data_dir)
    assert meta["inputs"]["source"]["revision"] == hub.REVISION
    assert [f["name"] for f in meta["files"]] == [f.filename for f in hub.HUB_FILES[dataset]]
    assert all(len(f["sha256"]) == 64 for f in meta["files"])

    downloads.clear()
    capsys.readouterr()
    prepare_data(DataConfig(dataset=dataset), progress=False)
    assert "up to date" in capsys.readouterr().out
    assert downloads == []  # the cache check needs no network


def test_max_stories_downloads_only_what_it_reads(tmp_path, monkeypatch):
    _, downloads = fake_hub(tmp_path, monkeypatch, "tinystories")
    prepare_data(DataConfig(max_stories=50, data_dir=str(tmp_path / "out")), progress=False)
    assert downloads == [hub.HUB_FILES["tinystories"][0].filename, hub.HUB_FILES["tinystories"][-1].filename]


def test_unreachable_hub_is_one_line_naming_data_path(monkeypatch):
    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub.\nmore text")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(UserError) as caught:
        hub.download_hub_file(hub.HUB_FILES["tinystories"][0])
    message = str(caught.value)
    assert "unreachable" in message and "--data_path" in message and "\n" not in message


def test_download_is_checked_against_its_sha256(tmp_path, monkeypatch):
    tampered = tmp_path / "validation.parquet"
    tampered.write_bytes(b"not the real file")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *args, **kwargs: str(tampered))
    with pytest.raises(UserError, match="has sha256 .* expected 33406a62"):
        hub.download_hub_file(hub.HUB_FILES["tinystories"][-1])


def test_unpinned_file_is_checked_against_its_cache_blob_name(tmp_path, monkeypatch):
    content = b"stories\n<|endoftext|>\n"
    blob = tmp_path / "blobs" / hashlib.sha256(content).hexdigest()  # how huggingface_hub names LFS blobs
    blob.parent.mkdir()
    blob.write_bytes(content)
    link = tmp_path / "snapshot.txt"
    link.symlink_to(blob)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *args, **kwargs: str(link))
    path, sha256 = hub.download_hub_file(hub.HUB_FILES["tinystories-v2"][1])
    assert sha256 == blob.name and path == link
    blob.write_bytes(b"changed")
    with pytest.raises(UserError, match="expected"):
        hub.download_hub_file(hub.HUB_FILES["tinystories-v2"][1])


def test_pinned_files_look_right():
    for files in hub.HUB_FILES.values():
        assert {f.role for f in files} == {"train", "test"}
        assert all(f.sha256 is None or len(f.sha256) == 64 for f in files)
    assert len(hub.REVISION) == 40


def test_cached_file_is_used_without_network(tmp_path, monkeypatch):
    cached = tmp_path / "validation.parquet"
    cached.write_bytes(b"cached bytes")
    calls = []

    def cache_only(*args, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        if not local_files_only:
            raise AssertionError("the network was used for a cached file")
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cache_only)
    path, sha256 = hub.download_hub_file(hub.HUB_FILES["tinystories-v2"][0])
    assert (path, sha256, calls) == (cached, hashlib.sha256(b"cached bytes").hexdigest(), [True])
