"""An S3-compatible bucket (AWS, MinIO, R2 ...) as object storage; downloads are presigned GET URLs (SigV4).

Retention: configure a bucket lifecycle rule expiring ``inputs/``, ``outputs/`` and ``uploads/`` after the
retention period; the store does it better than a sweep could (``delete_older_than`` is a no-op here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve.storage.errors import DownloadsNotServed, ObjectNotFound
from serve.storage.keys import validate_key
from serve.storage.local import check_expires_in


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


class S3Storage:
    """An S3-compatible bucket (AWS, MinIO, R2 ...); downloads are presigned GET URLs (SigV4)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: S3Credentials | None = None,
        prefix: str = "",
        client: Any | None = None,
    ) -> None:
        """Without ``credentials`` boto3's default chain is used; ``client`` replaces the boto3 client."""
        if not bucket:
            raise ValueError("S3Storage needs a bucket")
        self.bucket = bucket
        self._prefix = f"{validate_key(prefix.strip('/'))}/" if prefix.strip("/") else ""
        if client is None:
            import boto3
            from botocore.config import Config

            kwargs: dict[str, Any] = {}
            if credentials is not None:
                kwargs = {
                    "aws_access_key_id": credentials.access_key_id,
                    "aws_secret_access_key": credentials.secret_access_key,
                    "aws_session_token": credentials.session_token,
                }
            # Path-style addressing: S3-compatible stores behind a custom endpoint rarely have
            # per-bucket DNS names.
            config = Config(
                signature_version="s3v4",
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            )
            client = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config, **kwargs
            )
        self._client = client

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self._prefix!r})"

    def _object(self, key: str) -> str:
        return self._prefix + validate_key(key)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._client.put_object(
            Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=content_type
        )

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str) -> None:
        # upload_file switches to multipart for large files.
        self._client.upload_file(
            os.fspath(path), self.bucket, self._object(key), ExtraArgs={"ContentType": content_type}
        )

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as error:
            if _is_missing(error):
                raise ObjectNotFound(key) from None
            raise
        body = response["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def url_for(self, key: str, expires_in: int) -> str:
        return self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._object(key)},
            ExpiresIn=check_expires_in(expires_in),
        )

    def open_download(self, key: str, query: Mapping[str, str]) -> Path:
        raise DownloadsNotServed()

    def keys_under(self, prefix: str) -> list[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._object(prefix) + "/"
        )
        found = (item["Key"][len(self._prefix) :] for page in pages for item in page.get("Contents", ()))
        return sorted(found)

    def delete_older_than(self, cutoff: float) -> int:
        return 0


def _is_missing(error: Any) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}
