"""The object store batch files live in, on a local directory and on a local S3-compatible
server (moto's), through the same tests: streams in and out, whole-or-nothing writes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.object_store import PART_BYTES, LocalObjectStore, ObjectStore, S3ObjectStore

#: Credentials for the local server (it checks none); boto3 wants some.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        for name, value in S3_ENV.items():
            env.setenv(name, value)
        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        yield f"http://127.0.0.1:{port}"
        server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "files")
    import boto3

    endpoint = request.getfixturevalue("s3_endpoint")
    client = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"b-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    client.create_bucket(Bucket=bucket)
    return S3ObjectStore(bucket, "loraq", client=client)


def test_a_stream_goes_in_and_comes_out_line_by_line(store: ObjectStore) -> None:
    lines = [f"line {i} ".encode() * (1 + i % 7) + b"\n" for i in range(400_000)]
    with store.open_write("files/f1") as out:
        for line in lines:
            out.write(line)
        assert out.tell() == sum(map(len, lines))
    total = sum(map(len, lines))
    assert total > 2 * PART_BYTES  # several S3 parts
    assert store.size("files/f1") == total
    with store.open_read("files/f1") as stream:
        for want in lines[:1000]:
            assert stream.readline() == want
        rest = stream.read()
    assert rest == b"".join(lines[1000:])


def test_a_failed_write_leaves_nothing(store: ObjectStore) -> None:

    def upload_that_stops() -> None:
        with store.open_write("files/broken") as out:
            out.write(b"x" * (PART_BYTES + 10))
            raise RuntimeError("the upload stopped")

    with pytest.raises(RuntimeError):
        upload_that_stops()
    assert store.size("files/broken") is None
    with pytest.raises(FileNotFoundError), store.open_read("files/broken"):
        pass


def test_a_small_and_an_empty_object(store: ObjectStore) -> None:
    with store.open_write("batches/b1/out/0") as out:
        out.write(b"{}\n")
    with store.open_write("batches/b1/out/1"):
        pass
    assert store.size("batches/b1/out/0") == 3
    assert store.size("batches/b1/out/1") == 0
    with store.open_read("batches/b1/out/1") as stream:
        assert stream.read() == b""


def test_delete_prefix_takes_a_batch_and_nothing_beside_it(store: ObjectStore) -> None:
    for key in ("batches/b1/in/0", "batches/b1/out/0", "batches/b12/out/0", "files/f"):
        with store.open_write(key) as out:
            out.write(b"data")
    store.delete_prefix("batches/b1")
    assert store.size("batches/b1/in/0") is None
    assert store.size("batches/b1/out/0") is None
    assert store.size("batches/b12/out/0") == 4
    assert store.size("files/f") == 4
    store.delete_prefix("files/f")
    assert store.size("files/f") is None


@pytest.mark.parametrize("key", ["../x", "a/../../b", "/abs", "a//b", "a\\b", ""])
def test_keys_stay_inside_the_store(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="bad object key"), store.open_write(key):
        pass
