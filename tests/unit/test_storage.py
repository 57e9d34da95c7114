"""Storage: local round trips, keys that cannot escape, signed URLs, retention, and S3 against moto."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from serve.api.errors import Gone, NotFound, ObjectNotFound
from serve.config import StorageConfig
from serve.storage import (
    InvalidStorageKey,
    LocalStorage,
    S3Credentials,
    S3Storage,
    Storage,
    build_storage,
    input_key,
    load_or_create_signing_key,
    output_key,
    upload_key,
    validate_key,
)

SIGNING_KEY = b"k" * 32
KEY = "outputs/tenantA/req123/video.mp4"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.0)


@pytest.fixture
def local(tmp_path: Path, clock: Clock) -> LocalStorage:
    return LocalStorage(
        tmp_path / "store", signing_key=SIGNING_KEY, public_base_url="https://api.test/", clock=clock
    )


def test_key_helpers() -> None:
    assert input_key("tenantA", "req1", "image") == "inputs/tenantA/req1/image"
    assert output_key("tenantA", "req1") == "outputs/tenantA/req1/video.mp4"
    assert upload_key("tenantA", "file_" + "a" * 32) == "uploads/tenantA/file_" + "a" * 32
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(InvalidStorageKey):
            input_key(bad, "req1", "image")
        with pytest.raises(InvalidStorageKey):
            upload_key("tenantA", bad)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../secret",
        "a/../../b",
        "a/./b",
        "a//b",
        "a/b/",
        "a\\b",
        ".signing_key",
        "a/.tmp",
        "a/b\x00c",
        "a/b c",
        "ä/b",
        "/".join(["a"] * 9),
        "a" * 600,
    ],
)
def test_invalid_keys_are_refused(local: LocalStorage, key: str) -> None:
    with pytest.raises(InvalidStorageKey):
        validate_key(key)
    with pytest.raises(InvalidStorageKey):
        local.put_bytes(key, b"x", "application/octet-stream")
    with pytest.raises(InvalidStorageKey):
        local.get_bytes(key)


def test_local_round_trip(local: LocalStorage, tmp_path: Path) -> None:
    assert isinstance(local, Storage)
    assert not local.exists(KEY)
    local.put_bytes(KEY, b"video bytes", "video/mp4")
    assert local.exists(KEY)
    assert local.get_bytes(KEY) == b"video bytes"
    assert local.local_path(KEY) == local.root / KEY
    source = tmp_path / "in.bin"
    source.write_bytes(b"\x00\x01" * 1000)
    local.put_file("inputs/tenantA/req123/audio", source, "audio/mpeg")
    assert local.get_bytes("inputs/tenantA/req123/audio") == source.read_bytes()
    local.put_bytes(KEY, b"replaced", "video/mp4")
    assert local.get_bytes(KEY) == b"replaced"
    assert not [p for p in (local.root / "outputs/tenantA/req123").iterdir() if p.name.startswith(".")]
    local.delete(KEY)
    local.delete(KEY)  # idempotent
    assert not local.exists(KEY)
    with pytest.raises(ObjectNotFound):
        local.get_bytes(KEY)
    with pytest.raises(ObjectNotFound):
        local.local_path(KEY)


def test_missing_object_is_a_404(local: LocalStorage) -> None:
    with pytest.raises(NotFound) as caught:
        local.get_bytes("uploads/tenantB/file_x")
    assert caught.value.status == 404


def test_symlink_escape_is_refused(local: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (local.root / "uploads").mkdir()
    os.symlink(outside, local.root / "uploads" / "tenantA")
    with pytest.raises(InvalidStorageKey):
        local.get_bytes("uploads/tenantA/secret")
    with pytest.raises(InvalidStorageKey):
        local.put_bytes("uploads/tenantA/new", b"x", "application/octet-stream")
    assert not (outside / "new").exists()
    os.symlink(outside / "secret", local.root / "uploads" / "link")
    with pytest.raises(InvalidStorageKey):
        local.get_bytes("uploads/link")


def test_short_signing_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="signing key"):
        LocalStorage(tmp_path, signing_key="short")


def _query(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return parts.path, query["expires"][0], query["sig"][0]


def test_signed_url_valid_then_expired(local: LocalStorage, clock: Clock) -> None:
    url = local.url_for(KEY, expires_in=600)
    assert url.startswith(f"https://api.test/v1/outputs/{KEY}?expires=")
    path, expires, sig = _query(url)
    assert path == f"/v1/outputs/{KEY}"
    assert int(expires) == int(clock.now) + 600
    local.verify_signature(KEY, expires, sig)
    local.verify_signature(KEY, int(expires), sig)
    clock.now += 599
    local.verify_signature(KEY, expires, sig)
    clock.now += 1
    with pytest.raises(Gone) as caught:
        local.verify_signature(KEY, expires, sig)
    assert caught.value.status == 410


def test_tampered_signed_urls_are_404(local: LocalStorage) -> None:
    _path, expires, sig = _query(local.url_for(KEY, expires_in=600))
    other_sig = _query(local.url_for("outputs/tenantB/req123/video.mp4", expires_in=600))[2]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    cases = [
        ("outputs/tenantB/req123/video.mp4", expires, sig),  # another key
        (KEY, str(int(expires) + 3600), sig),  # extended expiry
        (KEY, expires, flipped),
        (KEY, expires, other_sig),
        (KEY, expires, sig.upper()),
        (KEY, expires, sig[:-1]),
        (KEY, expires, ""),
        (KEY, "-1", sig),
        (KEY, "1e9", sig),
        (KEY, True, sig),
        ("../" + KEY, expires, sig),
    ]
    for key, exp, signature in cases:
        with pytest.raises(NotFound) as caught:
            local.verify_signature(key, exp, signature)  # type: ignore[arg-type]
        assert caught.value.status == 404


def test_expired_and_forged_is_404_not_410(local: LocalStorage) -> None:
    """Only a link the server signed can learn that it expired."""
    with pytest.raises(NotFound):
        local.verify_signature(KEY, "1000", "0" * 64)


def test_url_without_public_base_is_a_path(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, signing_key=SIGNING_KEY)
    assert storage.url_for(KEY, 60).startswith(f"/v1/outputs/{KEY}?expires=")
    with pytest.raises(ValueError):
        storage.url_for(KEY, 0)
    with pytest.raises(ValueError):
        storage.url_for(KEY, 8 * 86400)
    with pytest.raises(InvalidStorageKey):
        storage.url_for("../x", 60)


def test_signatures_differ_between_keys(tmp_path: Path, clock: Clock) -> None:
    one = LocalStorage(tmp_path / "a", signing_key=b"a" * 32, clock=clock)
    two = LocalStorage(tmp_path / "b", signing_key=b"b" * 32, clock=clock)
    _path, expires, sig = _query(one.url_for(KEY, 60))
    one.verify_signature(KEY, expires, sig)
    with pytest.raises(NotFound):
        two.verify_signature(KEY, expires, sig)


def test_delete_older_than(local: LocalStorage) -> None:
    old, new = "outputs/tenantA/old/video.mp4", "outputs/tenantA/new/video.mp4"
    local.put_bytes(old, b"o", "video/mp4")
    local.put_bytes(new, b"n", "video/mp4")
    os.utime(local.root / old, (1000.0, 1000.0))
    assert local.delete_older_than(2000.0) == 1
    assert not local.exists(old) and local.exists(new)
    assert not (local.root / "outputs/tenantA/old").exists()  # emptied directories go too
    assert local.root.exists()


def test_signing_key_file_is_created_once_private(tmp_path: Path) -> None:
    first = load_or_create_signing_key(tmp_path)
    assert len(first) >= 32
    assert load_or_create_signing_key(tmp_path) == first
    assert (tmp_path / ".signing_key").stat().st_mode & 0o777 == 0o600
    (tmp_path / ".signing_key").write_bytes(b"x")
    with pytest.raises(ValueError, match="too short"):
        load_or_create_signing_key(tmp_path)


def test_build_local_storage_from_config(tmp_path: Path, clock: Clock) -> None:
    config = StorageConfig(kind="local", root=str(tmp_path / "s"), signing_key_env="SIGN")
    from_env = build_storage(config, public_base_url="https://x.test", environ={"SIGN": "s" * 32})
    assert isinstance(from_env, LocalStorage)
    assert from_env.url_for(KEY, 60).startswith("https://x.test/v1/outputs/")
    generated = build_storage(config, environ={})
    assert isinstance(generated, LocalStorage)
    assert (tmp_path / "s" / ".signing_key").exists()
    # The key file is not an object and survives retention sweeps.
    assert generated.delete_older_than(1e12) == 0


# -- S3 (moto, in process) -----------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto intercepts botocore in process; any real connection attempt is a test failure."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"unexpected network connection: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, no_network: None):
    moto = pytest.importorskip("moto")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="videos")
        yield S3Storage(
            "videos",
            region="us-east-1",
            credentials=S3Credentials("testing", "testing"),
            prefix="prod/",
        )


def test_s3_round_trip(s3: S3Storage, tmp_path: Path) -> None:
    assert isinstance(s3, Storage)
    assert not s3.exists(KEY)
    s3.put_bytes(KEY, b"video bytes", "video/mp4")
    assert s3.exists(KEY)
    assert s3.get_bytes(KEY) == b"video bytes"
    source = tmp_path / "v.mp4"
    source.write_bytes(b"file bytes")
    s3.put_file("outputs/tenantA/req9/video.mp4", source, "video/mp4")
    assert s3.get_bytes("outputs/tenantA/req9/video.mp4") == b"file bytes"
    s3.delete(KEY)
    s3.delete(KEY)
    assert not s3.exists(KEY)
    with pytest.raises(ObjectNotFound):
        s3.get_bytes(KEY)
    assert s3.local_path("outputs/tenantA/req9/video.mp4") is None


def test_s3_uses_prefix_and_content_type(s3: S3Storage) -> None:
    import boto3

    s3.put_bytes(KEY, b"v", "video/mp4")
    head = boto3.client("s3", region_name="us-east-1").head_object(Bucket="videos", Key=f"prod/{KEY}")
    assert head["ContentType"] == "video/mp4"


def test_s3_presigned_url_has_key_and_expiry(s3: S3Storage) -> None:
    s3.put_bytes(KEY, b"v", "video/mp4")
    url = s3.url_for(KEY, expires_in=900)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.path.endswith(f"/prod/{KEY}")
    assert query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "X-Amz-Signature" in query
    with pytest.raises(ValueError):
        s3.url_for(KEY, expires_in=8 * 86400)


def test_s3_refuses_invalid_keys(s3: S3Storage) -> None:
    with pytest.raises(InvalidStorageKey):
        s3.put_bytes("../escape", b"x", "application/octet-stream")
    with pytest.raises(InvalidStorageKey):
        s3.url_for("/abs", 60)


def test_s3_repr_hides_secret() -> None:
    assert "hunter2" not in repr(S3Credentials("AKIA", "hunter2", "session"))
