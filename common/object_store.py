"""Where batch files live: a local directory (the embedded default) or an S3-compatible bucket,
through one interface, read and written as streams so memory stays flat whatever the file size.

Redis holds only the records and counters that point here. Keys are loraq's own (`files/<id>`,
`batches/<id>/...`), never a tenant's words, so they need no escaping. A write becomes visible
whole or not at all: a local write goes to a temporary file renamed on success, an S3 write is a
multipart upload completed on success and aborted on failure, so a reader never sees half a file
and a crash leaves nothing to clean up but the temporary parts.

Blocking calls: the gateway runs them on worker threads, never on its event loop.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

#: S3 parts (every part but the last must be at least 5 MiB).
PART_BYTES = 8 * 1024 * 1024
_KEY_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


def check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key) or any(p in (".", "..") for p in key.split("/")):
        raise ValueError(f"bad object key {key!r}")
    return key


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def tell(self) -> int: ...


class ObjectStore(Protocol):
    def open_write(self, key: str) -> contextlib.AbstractContextManager[Writer]: ...

    def open_read(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...

    def size(self, key: str) -> int | None: ...

    def delete_prefix(self, prefix: str) -> None: ...


def open_store(uri: str, s3_endpoint: str | None = None) -> ObjectStore:
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return S3ObjectStore(bucket, prefix.strip("/"), endpoint=s3_endpoint)
    return LocalObjectStore(Path(uri.removeprefix("file://")))


class LocalObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[Writer]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[IO[bytes]]:
        with self._path(key).open("rb") as stream:
            yield stream

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete_prefix(self, prefix: str) -> None:
        target = self._path(prefix)
        if target.is_dir():
            for path in sorted(target.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
            target.rmdir()
        else:
            target.unlink(missing_ok=True)


class _S3Writer:
    """Buffers one part at a time: memory stays at one part whatever the object's size."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._written = 0
        self._upload_id: str | None = None

    def write(self, data: bytes, /) -> int:
        self._buffer += data
        self._written += len(data)
        while len(self._buffer) >= PART_BYTES:
            self._send(bytes(self._buffer[:PART_BYTES]))
            del self._buffer[:PART_BYTES]
        return len(data)

    def tell(self) -> int:
        return self._written

    def _send(self, body: bytes) -> None:
        if self._upload_id is None:
            created = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        sent = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number,
            Body=body,
        )  # fmt: skip
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    def complete(self) -> None:
        if self._upload_id is None:  # small: one plain put
            self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
            return
        if self._buffer:
            self._send(bytes(self._buffer))
        self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )  # fmt: skip

    def abort(self) -> None:
        if self._upload_id is not None:
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
            )


class _S3Body(io.RawIOBase):
    """boto3's streaming body as a raw stream, so a BufferedReader gives it `readline`."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


class S3ObjectStore:
    def __init__(
        self, bucket: str, prefix: str = "", endpoint: str | None = None, client: Any = None
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint)
        self._client, self._bucket, self._prefix = client, bucket, prefix

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[Writer]:
        writer = _S3Writer(self._client, self._bucket, self._key(key))
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        writer.complete()

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[IO[bytes]]:
        try:
            got = self._client.get_object(Bucket=self._bucket, Key=self._key(key))
        except self._client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        with io.BufferedReader(_S3Body(got["Body"]), buffer_size=1024 * 1024) as stream:
            yield stream

    def size(self, key: str) -> int | None:
        try:
            head = self._client.head_object(Bucket=self._bucket, Key=self._key(key))
        except self._client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def delete_prefix(self, prefix: str) -> None:
        full = self._key(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=full):
            keys = [
                {"Key": o["Key"]}
                for o in page.get("Contents", [])
                if o["Key"] == full or o["Key"].startswith(full + "/")
            ]
            if keys:
                self._client.delete_objects(Bucket=self._bucket, Delete={"Objects": keys})
