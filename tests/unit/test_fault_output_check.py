"""The fault runner's output check reads the keys of the download links the real storage hands out."""

from __future__ import annotations

from pathlib import Path

from loadtest.faults import _check_stored_output, _storage_key
from serve.storage.keys import output_key
from serve.storage.local import LocalStorage
from serve.storage.signing import SigningKeys

RID = "0123456789abcdef0123456789abcdef"


def _storage(root: Path, base: str | None) -> LocalStorage:
    return LocalStorage(root, signing_keys=SigningKeys("k" * 32), public_base_url=base)


def test_one_runs_video_passes(tmp_path: Path) -> None:
    for base in (None, "http://127.0.0.1:8000"):
        storage = _storage(tmp_path / ("with-base" if base else "bare"), base)
        key = output_key("local", RID, "run1")
        storage.put_bytes(key, b"video", "video/mp4")
        assert _storage_key(storage.url_for(key, 60)) == key
        assert _check_stored_output(storage.root, RID, key) == []


def test_a_second_runs_video_is_reported(tmp_path: Path) -> None:
    storage = _storage(tmp_path, None)
    first, second = output_key("local", RID, "run1"), output_key("local", RID, "run2")
    storage.put_bytes(first, b"a", "video/mp4")
    storage.put_bytes(second, b"b", "video/mp4")
    (problem,) = _check_stored_output(storage.root, RID, second)
    assert "run1" in problem


def test_a_key_outside_the_jobs_folder_is_reported(tmp_path: Path) -> None:
    (problem,) = _check_stored_output(tmp_path, RID, f"local/{RID}/run1/video.mp4")
    assert "is not outputs/<tenant>" in problem
