"""Storage: signing keys and rotation, keys that cannot escape, local round trips and signed download links,
retention, configuration, the HTTP meaning of storage errors, and S3 against moto."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

import serve.storage
import serve.storage.local as local_module
from serve.api.errors import api_error_from
from serve.config import StorageConfig
from serve.storage import (
    MAX_URL_SECONDS,
    DownloadLinkExpired,
    DownloadLinkInvalid,
    DownloadsNotServed,
    InvalidStorageKey,
    LocalStorage,
    ObjectNotFound,
    S3Credentials,
    S3Storage,
    SigningKeys,
    StorageError,
    build_storage,
    input_key,
    load_or_create_signing_key,
    output_key,
    outputs_of,
    upload_key,
    validate_key,
)
from serve.storage.signing import key_id

KEY_A = b"a" * 32
KEY_B = b"b" * 32
KEY = "outputs/tenantA/req123/run1/video.mp4"
NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def local(tmp_path: Path, clock: Clock) -> LocalStorage:
    keys = SigningKeys(KEY_A)
    return LocalStorage(
        tmp_path / "store", signing_keys=keys, public_base_url="https://api.test/", clock=clock
    )


def _link(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, {name: values[0] for name, values in parse_qs(parts.query).items()}


def test_sign_and_verify() -> None:
    keys = SigningKeys(KEY_A)
    kid, sig = keys.sign(KEY, 2000)
    assert kid == key_id(KEY_A) == keys.current_id
    assert len(kid) == 16 and len(sig) == 64
    assert keys.verify(KEY, 2000, kid, sig) is True
    assert keys.verify(KEY, 2001, kid, sig) is False
    assert keys.verify("outputs/other/req/run/video.mp4", 2000, kid, sig) is False
    assert SigningKeys(KEY_A.decode()).sign(KEY, 2000) == (kid, sig)


def test_previous_key_still_verifies_what_it_signed() -> None:
    kid, sig = SigningKeys(KEY_A).sign(KEY, 2000)
    rotated = SigningKeys(KEY_B, [KEY_A])
    assert rotated.current_id == key_id(KEY_B) != kid
    assert rotated.verify(KEY, 2000, kid, sig) is True
    assert rotated.sign(KEY, 2000)[0] == key_id(KEY_B)
    assert rotated.verify(KEY, 2000, key_id(KEY_B), sig) is False
    assert SigningKeys(KEY_B).verify(KEY, 2000, kid, sig) is False


def test_unknown_key_ids_and_malformed_signatures_never_verify() -> None:
    keys = SigningKeys(KEY_A)
    kid, sig = keys.sign(KEY, 2000)
    bad_kids = ["0" * 16, key_id(KEY_B), kid.upper(), kid[:-1], kid + "0", ""]
    bad_sigs = ["0" * 64, "z" * 64, sig.upper(), sig[:-1], sig + "0", ""]
    for bad_kid in bad_kids:
        assert keys.verify(KEY, 2000, bad_kid, sig) is False
    for bad_sig in bad_sigs:
        assert keys.verify(KEY, 2000, kid, bad_sig) is False
    assert keys.verify(KEY, 2000, kid, sig) is True


def test_short_keys_are_refused_naming_which() -> None:
    cases = [((b"short",), "the URL signing key"), (("x" * 15,), "the URL signing key")]
    cases += [
        ((KEY_A, [KEY_B, b"tiny"]), "previous signing key #2"),
        ((KEY_A, ["tiny"]), "previous signing key #1"),
    ]
    for args, which in cases:
        with pytest.raises(ValueError) as caught:
            SigningKeys(*args)
        assert str(caught.value) == f"{which} must be at least 16 bytes"
    assert SigningKeys("x" * 16, [b"y" * 16]).current_id == key_id(b"x" * 16)


def test_key_shapes() -> None:
    assert input_key("tenantA", "req1", "image") == "inputs/tenantA/req1/image"
    assert output_key("tenantA", "req1", "run1") == "outputs/tenantA/req1/run1/video.mp4"
    assert upload_key("tenantA", "file_" + "a" * 32) == "uploads/tenantA/file_" + "a" * 32
    assert output_key("tenantA", "req1", "run1") != output_key("tenantA", "req1", "run2")
    assert output_key("tenantA", "req1", "run1") != output_key("tenantB", "req1", "run1")
    for key in (input_key("t", "r", "audio"), upload_key("t", "f"), "/".join(["a"] * 8), "a-b_c.d/E9"):
        assert validate_key(key) == key
    with pytest.raises(InvalidStorageKey):
        validate_key(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "/abs", "", ".hidden", "a b", "ä", "x" * 129])
def test_key_helpers_refuse_bad_segments(bad: str) -> None:
    helpers = ((input_key, ["t", "r", "image"]), (output_key, ["t", "r", "run1"]), (upload_key, ["t", "f"]))
    for make, args in helpers:
        for position in range(len(args)):
            with pytest.raises(InvalidStorageKey):
                make(*args[:position], bad, *args[position + 1 :])


def test_key_helper_errors_name_the_segment() -> None:
    with pytest.raises(InvalidStorageKey, match=r"invalid run for a storage key: '\.\.'"):
        output_key("tenantA", "req1", "..")
    with pytest.raises(InvalidStorageKey, match="invalid tenant"):
        upload_key("a/b", "file1")


BAD_KEYS = ["", "/etc/passwd", "../secret", "a/../../b", "a/./b", "a//b", "a/b/", "a\\b", ".signing_key"]
BAD_KEYS += ["a/.tmp", "a/b\x00c", "a/b\nc", "a/b c", "ä/b", "/".join(["a"] * 9), "a" * 513]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_refused_everywhere(local: LocalStorage, key: str) -> None:
    with pytest.raises(InvalidStorageKey):
        validate_key(key)
    for call in (
        lambda: local.put_bytes(key, b"x", "application/octet-stream"),
        lambda: local.get_bytes(key),
        lambda: local.delete(key),
        lambda: local.url_for(key, 60),
    ):
        with pytest.raises(InvalidStorageKey):
            call()
    assert sorted(p.name for p in local.root.rglob("*")) == []


def test_local_round_trip(local: LocalStorage, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        local.get_bytes(KEY)
    local.put_bytes(KEY, b"video bytes", "video/mp4")
    assert (local.root / KEY).read_bytes() == b"video bytes"
    assert local.get_bytes(KEY) == b"video bytes"
    source = tmp_path / "in.bin"
    source.write_bytes(b"\x00\x01" * 1_000_000)
    local.put_file("inputs/tenantA/req123/audio", source, "audio/mpeg")
    assert local.get_bytes("inputs/tenantA/req123/audio") == source.read_bytes()
    local.put_bytes(KEY, b"replaced", "video/mp4")
    assert local.get_bytes(KEY) == b"replaced"
    assert [p.name for p in (local.root / KEY).parent.iterdir()] == ["video.mp4"]
    local.delete(KEY)
    local.delete(KEY)
    assert not (local.root / KEY).exists()
    with pytest.raises(ObjectNotFound) as caught:
        local.get_bytes(KEY)
    assert str(caught.value) == KEY


def test_delete_of_what_holds_no_object_is_a_no_op(local: LocalStorage) -> None:
    local.put_bytes("outputs/a", b"x", "video/mp4")
    local.put_bytes("outputs/dir/b", b"y", "video/mp4")
    local.delete("outputs/a/below")
    local.delete("outputs/dir")
    assert local.get_bytes("outputs/a") == b"x"
    assert local.get_bytes("outputs/dir/b") == b"y"
    with pytest.raises(ObjectNotFound):
        local.get_bytes("outputs/a/below")
    with pytest.raises(ObjectNotFound):
        local.get_bytes("outputs/dir")


def test_symlink_escape_is_refused(local: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (local.root / "uploads").mkdir()
    os.symlink(outside, local.root / "uploads" / "tenantA")
    with pytest.raises(InvalidStorageKey, match="resolves outside the storage root"):
        local.get_bytes("uploads/tenantA/secret")
    with pytest.raises(InvalidStorageKey):
        local.put_bytes("uploads/tenantA/new", b"x", "application/octet-stream")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    os.symlink(outside / "secret", local.root / "uploads" / "link")
    with pytest.raises(InvalidStorageKey):
        local.get_bytes("uploads/link")
    query = _link(local.url_for("uploads/link", 60))[1]
    with pytest.raises(InvalidStorageKey):
        local.open_download("uploads/link", query)


def test_download_link_round_trip(local: LocalStorage, clock: Clock) -> None:
    url = local.url_for(KEY, expires_in=600)
    assert url.startswith(f"https://api.test/v1/{KEY}?expires={int(NOW) + 600}&kid={key_id(KEY_A)}&sig=")
    path, query = _link(url)
    assert path == f"/v1/{KEY}" == "/v1/outputs/tenantA/req123/run1/video.mp4"
    assert sorted(query) == ["expires", "kid", "sig"]
    with pytest.raises(ObjectNotFound):
        local.open_download(KEY, query)
    (local.root / KEY).mkdir(parents=True)
    with pytest.raises(ObjectNotFound):
        local.open_download(KEY, query)
    (local.root / KEY).rmdir()
    local.put_bytes(KEY, b"video", "video/mp4")
    assert local.open_download(KEY, query) == local.root / KEY
    clock.now += 599
    assert local.open_download(KEY, query).read_bytes() == b"video"
    clock.now += 1
    with pytest.raises(DownloadLinkExpired):
        local.open_download(KEY, query)


def test_tampered_download_links_are_invalid(local: LocalStorage) -> None:
    local.put_bytes(KEY, b"video", "video/mp4")
    other = "outputs/tenantB/req123/run1/video.mp4"
    local.put_bytes(other, b"theirs", "video/mp4")
    good = _link(local.url_for(KEY, 600))[1]
    sig = good["sig"]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    cases = [
        (other, good),
        (KEY, {**good, "expires": str(int(good["expires"]) + 3600)}),
        (KEY, {**good, "sig": flipped}),
        (KEY, {**good, "sig": _link(local.url_for(other, 600))[1]["sig"]}),
        (KEY, {**good, "sig": sig.upper()}),
        (KEY, {**good, "sig": sig[:-1]}),
        (KEY, {**good, "kid": "0" * 16}),
        (KEY, {**good, "expires": "-1"}),
        (KEY, {**good, "expires": "1e9"}),
        (KEY, {**good, "expires": "9" * 13}),
        ("../" + KEY, good),
        ("outputs/../" + KEY, good),
        (KEY, {"expires": "1000", "kid": good["kid"], "sig": "0" * 64}),
    ]
    cases += [(KEY, {k: v for k, v in good.items() if k != missing}) for missing in good]
    cases.append((KEY, {}))
    for key, query in cases:
        # Invalid even where also expired: only a link the server signed may learn that it expired.
        with pytest.raises(DownloadLinkInvalid):
            local.open_download(key, query)
    assert local.open_download(KEY, good) == local.root / KEY


def test_links_survive_rotation_until_the_old_key_is_dropped(tmp_path: Path, clock: Clock) -> None:
    before = LocalStorage(tmp_path, signing_keys=SigningKeys(KEY_A), clock=clock)
    before.put_bytes(KEY, b"video", "video/mp4")
    query = _link(before.url_for(KEY, 600))[1]
    rotated = LocalStorage(tmp_path, signing_keys=SigningKeys(KEY_B, [KEY_A]), clock=clock)
    assert rotated.open_download(KEY, query) == rotated.root / KEY
    assert _link(rotated.url_for(KEY, 600))[1]["kid"] == key_id(KEY_B)
    dropped = LocalStorage(tmp_path, signing_keys=SigningKeys(KEY_B), clock=clock)
    with pytest.raises(DownloadLinkInvalid):
        dropped.open_download(KEY, query)


def test_url_without_public_base_is_a_path_and_lifetimes_are_bounded(tmp_path: Path, clock: Clock) -> None:
    storage = LocalStorage(tmp_path, signing_keys=SigningKeys(KEY_A), clock=clock)
    assert storage.url_for(KEY, 60).startswith(f"/v1/{KEY}?expires={int(NOW) + 60}&")
    assert f"?expires={int(NOW) + 7 * 86400}&" in storage.url_for(KEY, MAX_URL_SECONDS)
    for bad in (0, -1, MAX_URL_SECONDS + 1, 1.5, True, "60"):
        with pytest.raises(ValueError, match=r"expires_in must be 1\.\.604800 seconds"):
            storage.url_for(KEY, bad)  # type: ignore[arg-type]


def test_delete_older_than(local: LocalStorage, clock: Clock) -> None:
    old, new = "outputs/tenantA/old/run1/video.mp4", "outputs/tenantA/new/run1/video.mp4"
    local.put_bytes(old, b"o", "video/mp4")
    local.put_bytes(new, b"n", "video/mp4")
    os.utime(local.root / old, (1000.0, 1000.0))
    stale_temp = local.root / "outputs/tenantA/new/run1/.video.mp4.dead.tmp"
    stale_temp.write_bytes(b"half")
    os.utime(stale_temp, (1000.0, 1000.0))
    (local.root / ".signing_key").write_bytes(b"k" * 64)
    os.utime(local.root / ".signing_key", (1000.0, 1000.0))
    assert local.delete_older_than(2000.0) == 2
    with pytest.raises(ObjectNotFound):
        local.get_bytes(old)
    assert local.get_bytes(new) == b"n"
    assert not stale_temp.exists()
    assert not (local.root / "outputs/tenantA/old").exists()
    assert (local.root / ".signing_key").read_bytes() == b"k" * 64
    assert local.delete_older_than(2000.0) == 0
    assert local.delete_older_than(NOW + 10**9) == 1
    assert sorted(p.name for p in local.root.iterdir()) == [".signing_key"]


def test_signing_key_file_is_created_once_private(tmp_path: Path) -> None:
    root = tmp_path / "new" / "root"
    first = load_or_create_signing_key(root)
    assert len(first) == 64
    assert load_or_create_signing_key(root) == first
    assert (root / ".signing_key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in root.iterdir()) == [".signing_key"]
    (root / ".signing_key").write_bytes(b"x" * 15)
    with pytest.raises(ValueError, match=r"signing key file .*\.signing_key is too short"):
        load_or_create_signing_key(root)


def test_concurrent_creators_adopt_the_first_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    winner = b"w" * 64
    real_link = os.link

    def lose_the_race(source: str, target: str) -> None:
        Path(target).write_bytes(winner)
        real_link(source, target)

    monkeypatch.setattr(serve.storage.os, "link", lose_the_race)
    assert load_or_create_signing_key(tmp_path) == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == [".signing_key"]


def test_signing_keys_from_the_environment(tmp_path: Path) -> None:
    config = StorageConfig(root=str(tmp_path), signing_key_env="SIGN", previous_signing_keys_env="OLD")
    old_kid, old_sig = SigningKeys(KEY_A).sign(KEY, 2000)
    older_kid, older_sig = SigningKeys("c" * 20).sign(KEY, 2000)
    keys = serve.storage.signing_keys(
        config, {"SIGN": KEY_B.decode(), "OLD": f" {KEY_A.decode()} ,, {'c' * 20},"}
    )
    assert keys.current_id == key_id(KEY_B)
    assert keys.verify(KEY, 2000, old_kid, old_sig) is True
    assert keys.verify(KEY, 2000, older_kid, older_sig) is True
    assert not (tmp_path / ".signing_key").exists()
    without_previous = serve.storage.signing_keys(config, {"SIGN": KEY_B.decode()})
    assert without_previous.verify(KEY, 2000, old_kid, old_sig) is False
    with pytest.raises(ValueError, match="previous signing key #1 must be at least 16 bytes"):
        serve.storage.signing_keys(config, {"SIGN": KEY_B.decode(), "OLD": "tiny"})
    from_file = serve.storage.signing_keys(config, {"OLD": KEY_A.decode()})
    assert from_file.current_id == key_id((tmp_path / ".signing_key").read_bytes())
    assert from_file.verify(KEY, 2000, old_kid, old_sig) is True


def test_build_local_storage(tmp_path: Path, clock: Clock) -> None:
    config = StorageConfig(kind="local", root=str(tmp_path / "s"), signing_key_env="SIGN")
    from_env = build_storage(
        config, public_base_url="https://x.test", environ={"SIGN": KEY_B.decode()}, clock=clock
    )
    assert isinstance(from_env, LocalStorage)
    assert from_env.root == (tmp_path / "s").resolve()
    url = from_env.url_for(KEY, 60)
    assert url.startswith(f"https://x.test/v1/{KEY}?expires={int(NOW) + 60}&kid={key_id(KEY_B)}&")
    assert not (tmp_path / "s" / ".signing_key").exists()
    generated = build_storage(config, environ={})
    assert isinstance(generated, LocalStorage)
    stored = (tmp_path / "s" / ".signing_key").read_bytes()
    assert _link(generated.url_for(KEY, 60))[1]["kid"] == key_id(stored)
    assert generated.delete_older_than(1e12) == 0


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (DownloadLinkExpired(), 410, "expired"),
        (DownloadLinkInvalid(), 404, "not_found"),
        (ObjectNotFound("outputs/t/r/run/video.mp4"), 404, "not_found"),
        (DownloadsNotServed(), 404, "not_found"),
        (InvalidStorageKey("bad"), 404, "not_found"),
    ],
)
def test_storage_errors_map_to_http(error: StorageError, status: int, code: str) -> None:
    assert isinstance(error, StorageError)
    api = api_error_from(error)
    assert (api.status, api.code) == (status, code)
    assert api.to_body()["error"]["code"] == code
    assert "outputs/" not in api.message


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto intercepts botocore in process; any real connection attempt is a test failure."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"unexpected network connection: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, no_network: None) -> Iterator[Any]:
    moto = pytest.importorskip("moto")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        import boto3

        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="videos")
        yield client


@pytest.fixture
def s3(aws: Any) -> S3Storage:
    return S3Storage(
        "videos", region="us-east-1", credentials=S3Credentials("testing", "testing"), prefix="/prod/"
    )


def test_s3_round_trip(s3: S3Storage, aws: Any, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound) as caught:
        s3.get_bytes(KEY)
    assert str(caught.value) == KEY
    s3.put_bytes(KEY, b"video bytes", "video/mp4")
    assert s3.get_bytes(KEY) == b"video bytes"
    head = aws.head_object(Bucket="videos", Key=f"prod/{KEY}")
    assert head["ContentType"] == "video/mp4"
    source = tmp_path / "v.mp4"
    source.write_bytes(b"file bytes")
    s3.put_file("inputs/tenantA/req9/audio", source, "audio/mpeg")
    assert s3.get_bytes("inputs/tenantA/req9/audio") == b"file bytes"
    assert (
        aws.head_object(Bucket="videos", Key="prod/inputs/tenantA/req9/audio")["ContentType"] == "audio/mpeg"
    )
    s3.delete(KEY)
    s3.delete(KEY)
    with pytest.raises(ObjectNotFound):
        s3.get_bytes(KEY)
    listed = aws.list_objects_v2(Bucket="videos")["Contents"]
    assert [item["Key"] for item in listed] == ["prod/inputs/tenantA/req9/audio"]
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as no_bucket:
        S3Storage("no-such-bucket", region="us-east-1").get_bytes(KEY)
    assert no_bucket.value.response["Error"]["Code"] == "NoSuchBucket"


def test_s3_without_prefix(aws: Any) -> None:
    storage = S3Storage("videos", region="us-east-1", credentials=S3Credentials("testing", "testing"))
    storage.put_bytes(KEY, b"v", "video/mp4")
    assert aws.get_object(Bucket="videos", Key=KEY)["Body"].read() == b"v"
    assert repr(storage) == "S3Storage(bucket='videos', prefix='')"


def test_s3_presigned_url(s3: S3Storage) -> None:
    url = s3.url_for(KEY, expires_in=900)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert url.startswith(f"https://videos.s3.amazonaws.com/prod/{KEY}?")
    assert query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].startswith("testing/")
    assert len(query["X-Amz-Signature"][0]) == 64
    with pytest.raises(ValueError, match="expires_in"):
        s3.url_for(KEY, expires_in=MAX_URL_SECONDS + 1)
    minio = S3Storage("videos", endpoint_url="http://minio.test:9000", region="us-east-1", prefix="p")
    assert minio.url_for(KEY, 60).startswith(f"http://minio.test:9000/videos/p/{KEY}?X-Amz-Algorithm=")


def test_s3_refuses_invalid_keys_and_serves_no_downloads(s3: S3Storage) -> None:
    for key in ("../escape", "/abs", "a//b", ""):
        with pytest.raises(InvalidStorageKey):
            s3.put_bytes(key, b"x", "application/octet-stream")
        with pytest.raises(InvalidStorageKey):
            s3.url_for(key, 60)
    with pytest.raises(DownloadsNotServed):
        s3.open_download(KEY, {"expires": "1", "kid": "0" * 16, "sig": "0" * 64})
    assert s3.delete_older_than(1e12) == 0
    with pytest.raises(ValueError, match="needs a bucket"):
        S3Storage("", client=object())
    with pytest.raises(InvalidStorageKey):
        S3Storage("videos", prefix="../up", client=object())
    assert "hunter2" not in repr(S3Credentials("AKIA", "hunter2", "session"))
    assert "session" not in repr(S3Credentials("AKIA", "hunter2", "session"))


def test_build_s3_storage(aws: Any) -> None:
    names = {"access_key_env": "AK", "secret_key_env": "SK"}
    config = StorageConfig(kind="s3", bucket="videos", region="us-east-1", prefix="tenant-data", **names)
    storage = build_storage(config, environ={"AK": "AKIDBUILD", "SK": "built-secret"})
    assert isinstance(storage, S3Storage)
    assert repr(storage) == "S3Storage(bucket='videos', prefix='tenant-data/')"
    storage.put_bytes(KEY, b"v", "video/mp4")
    assert aws.get_object(Bucket="videos", Key=f"tenant-data/{KEY}")["Body"].read() == b"v"
    assert "X-Amz-Credential=AKIDBUILD%2F" in storage.url_for(KEY, 60)
    with pytest.raises(ValueError, match=r"needs storage\.bucket"):
        StorageConfig(kind="s3")


def runs_of_one_job(storage: Any) -> list[str]:
    """Two runs' outputs of job req123, another job's, and an input of req123: what ``keys_under`` sorts."""
    runs = [output_key("tenantA", "req123", run) for run in ("run2", "run1")]
    for key in [*runs, output_key("tenantA", "req1234", "run1"), "inputs/tenantA/req123/image"]:
        storage.put_bytes(key, b"v", "video/mp4")
    return sorted(runs)


def test_keys_under_a_prefix_local(local: LocalStorage) -> None:
    runs = runs_of_one_job(local)
    (local.root / "outputs/tenantA/req123/run3").mkdir()
    (local.root / "outputs/tenantA/req123/run3/.video.mp4.x.tmp").write_bytes(b"half")  # being written
    assert local.keys_under(outputs_of("tenantA", "req123")) == runs
    assert local.keys_under(outputs_of("tenantA", "nothing")) == []
    with pytest.raises(InvalidStorageKey):
        local.keys_under("../outside")


def test_keys_under_a_prefix_s3(s3: S3Storage) -> None:
    runs = runs_of_one_job(s3)
    assert s3.keys_under(outputs_of("tenantA", "req123")) == runs
    assert s3.keys_under(outputs_of("tenantA", "nothing")) == []


def test_a_write_whose_new_folder_the_sweep_removed_makes_it_again(local: LocalStorage, monkeypatch) -> None:
    real_open, opened = open, []

    def sweep_first(path, mode="r", *args, **kwargs):
        if mode == "xb" and not opened:  # the retention sweep's rmdir lands between mkdir and open
            opened.append(path)
            Path(path).parent.rmdir()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(local_module, "open", sweep_first, raising=False)
    local.put_bytes(KEY, b"video", "video/mp4")
    assert len(opened) == 1 and local.get_bytes(KEY) == b"video"
