"""The Hub code path end to end against a local HTTP server (tests/hub_server.py): huggingface_hub's real
download, cache layout, retries and errors, and the download's own checks."""
import hashlib
import io

import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinystories.data import DataConfig, hub, load_tokens, prepare_data, read_meta
from tinystories.data.synthetic import synthetic_stories
from tinystories.errors import UserError
from tinystories.tokenizer import EOT_TOKEN, get_tokenizer

REPO = f"datasets/{hub.REPOSITORY}"
V2_TRAIN, V2_VALID = (f.filename for f in hub.HUB_FILES["tinystories-v2"])


def serve_dataset(fake_hub, monkeypatch, dataset):
    """Small stand-ins for the dataset's files on the fake Hub; the pinned digest follows the stand-in."""
    stories = {}
    for index, hub_file in enumerate(hub.HUB_FILES[dataset]):
        stories[hub_file.filename] = list(synthetic_stories(f"{hub_file.role}{index}", 60))
        if hub_file.filename.endswith(".parquet"):
            buffer = io.BytesIO()
            pq.write_table(pa.table({"text": stories[hub_file.filename]}), buffer)
            content = buffer.getvalue()
        else:
            content = "".join(f"{s}\n<|endoftext|>\n" for s in stories[hub_file.filename]).encode()
        fake_hub.add(REPO, hub_file.filename, content, commit=hub.REVISION)
    pinned = [hub.HubFile(f.filename, f.role, f.sha256 and hashlib.sha256(fake_hub.files[f"{REPO}/{f.filename}"]
                                                                            .content).hexdigest())
              for f in hub.HUB_FILES[dataset]]
    monkeypatch.setitem(hub.HUB_FILES, dataset, pinned)
    return stories


def decoded(data_dir, split):
    return get_tokenizer().decode(load_tokens(data_dir, split).tolist()).split(EOT_TOKEN)[:-1]


@pytest.mark.parametrize("dataset", ["tinystories", "tinystories-v2"])
def test_hub_files_are_downloaded_cached_and_become_train_validation_and_test(fake_hub, tmp_path, monkeypatch,
                                                                             capsys, dataset):
    stories = serve_dataset(fake_hub, monkeypatch, dataset)
    monkeypatch.chdir(tmp_path)
    data_dir = prepare_data(DataConfig(dataset=dataset), progress=False)
    assert str(data_dir) == f"data/{dataset}"
    files = hub.HUB_FILES[dataset]
    training = [s for f in files if f.role == "train" for s in stories[f.filename]]
    held_out = [s for f in files if f.role == "test" for s in stories[f.filename]]
    assert sorted(decoded(data_dir, "train") + decoded(data_dir, "validation")) == sorted(training)
    assert decoded(data_dir, "test") == held_out
    assert "downloading" in capsys.readouterr().err
    # One metadata request and one download per file, each at the pinned revision.
    assert sorted(fake_hub.requests) == sorted((method, f"{REPO}/{f.filename}") for f in files
                                               for method in ("GET", "HEAD"))
    # huggingface_hub's cache: blobs named by sha256, the snapshot of the pinned commit linking to them.
    snapshot = fake_hub.cache / "datasets--roneneldan--TinyStories" / "snapshots" / hub.REVISION
    meta = read_meta(data_dir)
    assert meta["inputs"]["source"]["revision"] == hub.REVISION
    for f, recorded in zip(files, meta["files"]):
        sha256 = hashlib.sha256(fake_hub.files[f"{REPO}/{f.filename}"].content).hexdigest()
        assert recorded["name"] == f.filename and recorded["sha256"] == sha256
        assert (snapshot / f.filename).is_symlink() and (snapshot / f.filename).resolve().name == sha256
        assert (snapshot / f.filename).resolve().parent.name == "blobs"

    requests = len(fake_hub.requests)
    capsys.readouterr()
    prepare_data(DataConfig(dataset=dataset), progress=False)
    assert "up to date" in capsys.readouterr().out
    # A new folder reads every file again, from the cache: the revision is a commit, so no request at all.
    prepare_data(DataConfig(dataset=dataset, data_dir=str(tmp_path / "again")), progress=False)
    assert (tmp_path / "again" / "train.bin").read_bytes() == (data_dir / "train.bin").read_bytes()
    assert len(fake_hub.requests) == requests


def test_offline_mode_works_once_files_are_cached(fake_hub, monkeypatch):
    serve_dataset(fake_hub, monkeypatch, "tinystories-v2")
    path, sha256 = hub.download_hub_file(hub.HUB_FILES["tinystories-v2"][1])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    fake_hub.stop()
    assert hub.download_hub_file(hub.HUB_FILES["tinystories-v2"][1]) == (path, sha256)
    with pytest.raises(UserError, match="unreachable .* not in its cache; use local story files with --data_path"):
        hub.download_hub_file(hub.HUB_FILES["tinystories-v2"][0])


def test_max_stories_downloads_only_what_it_reads(fake_hub, tmp_path, monkeypatch):
    serve_dataset(fake_hub, monkeypatch, "tinystories")
    prepare_data(DataConfig(max_stories=50, data_dir=str(tmp_path / "out")), progress=False)
    files = hub.HUB_FILES["tinystories"]
    assert sorted({path for _, path in fake_hub.requests}) == sorted(f"{REPO}/{f.filename}"
                                                                     for f in (files[0], files[-1]))


def test_a_server_error_is_retried(fake_hub, monkeypatch):
    serve_dataset(fake_hub, monkeypatch, "tinystories-v2")
    fake_hub.failures[f"{REPO}/{V2_VALID}"] = [500]
    path, sha256 = hub.download_hub_file(hub.HUB_FILES["tinystories-v2"][1])
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [method for method, _ in fake_hub.requests] == ["HEAD", "HEAD", "GET"]


def test_a_hub_that_keeps_failing_is_one_line_naming_data_path(fake_hub, monkeypatch):
    serve_dataset(fake_hub, monkeypatch, "tinystories-v2")
    fake_hub.failures[f"{REPO}/{V2_VALID}"] = [503] * 10
    with pytest.raises(UserError) as caught:
        hub.download_hub_file(hub.HUB_FILES["tinystories-v2"][1])
    message = str(caught.value)
    assert "unreachable" in message and "--data_path" in message and "\n" not in message


def test_a_refused_download_is_one_line_saying_why(fake_hub, monkeypatch):
    serve_dataset(fake_hub, monkeypatch, "tinystories-v2")
    fake_hub.failures[f"{REPO}/{V2_VALID}"] = [401]
    with pytest.raises(UserError) as caught:
        hub.download_hub_file(hub.HUB_FILES["tinystories-v2"][1])
    message = str(caught.value)
    assert message.startswith(f"downloading {V2_VALID} from the Hugging Face Hub failed (")
    assert "401 Unauthorized" in message
    assert "--data_path" in message and "\n" not in message


def test_download_is_checked_against_its_pinned_sha256(fake_hub):
    pinned = hub.HUB_FILES["tinystories"][-1]
    fake_hub.add(REPO, pinned.filename, b"not the real file", commit=hub.REVISION)
    with pytest.raises(UserError, match="has sha256 .* expected 33406a62.*delete it and run again"):
        hub.download_hub_file(pinned)


def test_unpinned_file_is_checked_against_its_lfs_sha256(fake_hub):
    # The server's LFS digest (the name of the cached blob) disagrees with the bytes it sends.
    fake_hub.add(REPO, V2_TRAIN, b"stories\n<|endoftext|>\n", commit=hub.REVISION,
                 etag=hashlib.sha256(b"other bytes").hexdigest())
    with pytest.raises(UserError, match=f"expected {hashlib.sha256(b'other bytes').hexdigest()}"):
        hub.download_hub_file(hub.HUB_FILES["tinystories-v2"][0])


def test_pinned_files_look_right():
    for files in hub.HUB_FILES.values():
        assert {f.role for f in files} == {"train", "test"}
        assert all(f.sha256 is None or len(f.sha256) == 64 for f in files)
    assert len(hub.REVISION) == 40
