"""How settings become Redis clients (`common.redis_connection`): a plain URL stays as it was; with
Sentinels, the data nodes' credentials and database still come from `redis_url`, for redis-py and
for kombu's `sentinel://` transport alike."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from common.redis_connection import broker_options, broker_url, data_node_kwargs
from common.settings import SentinelSettings, Settings
from loraq.stack import free_port, needs_local_redis

pytestmark = pytest.mark.unit

SENTINELS = ["s1:26379", "s2.example:26380", "10.0.0.3:26379"]


def sentinel_settings(url: str = "redis://:p%40ss@ignored:6379/3", **fields: object) -> Settings:
    return Settings(
        redis_url=url, sentinel=SentinelSettings(addresses=SENTINELS, master_name="lq", **fields)
    )


def test_a_plain_url_is_the_broker_unchanged() -> None:
    settings = Settings(redis_url="rediss://u:pw@redis.example:6380/2")
    assert broker_url(settings) == "rediss://u:pw@redis.example:6380/2"
    assert broker_options(settings) == ({}, None)


def test_with_sentinels_every_one_is_a_broker_address_with_the_data_credentials() -> None:
    settings = sentinel_settings()
    assert broker_url(settings) == ";".join(
        f"sentinel://:p%40ss@{address}/3" for address in SENTINELS
    )
    options, use_ssl = broker_options(settings)
    assert options["master_name"] == "lq"
    assert "password" not in options["sentinel_kwargs"]
    assert use_ssl is None


def test_data_node_credentials_database_and_tls_come_from_the_url() -> None:
    kwargs = data_node_kwargs(sentinel_settings("rediss://app:p%40ss@ignored/5"))
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("app", "p@ss", 5)
    assert kwargs["ssl"] is True
    assert "host" not in kwargs and "port" not in kwargs
    _, use_ssl = broker_options(sentinel_settings("rediss://app:pw@ignored/5"))
    assert use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_the_sentinels_own_password_and_tls_go_to_the_sentinel_connections() -> None:
    options, _ = broker_options(sentinel_settings(password="sentinel-secret", tls=True))
    assert options["sentinel_kwargs"]["password"] == "sentinel-secret"
    assert options["sentinel_kwargs"]["ssl"] is True


@pytest.mark.parametrize("address", ["s1", "s1:", ":26379", "s1:port", "s1:70000"])
def test_a_sentinel_address_must_be_host_and_port(address: str) -> None:
    with pytest.raises(ValidationError, match="host:port"):
        SentinelSettings(addresses=[address])


def test_sentinel_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAQ_SENTINEL__ADDRESSES", '["a:1", "b:2", "c:3"]')
    monkeypatch.setenv("LORAQ_SENTINEL__MASTER_NAME", "jobs")
    monkeypatch.setenv("LORAQ_REDIS_REPLICA_ACKS", "1")
    settings = Settings()
    assert settings.sentinel.hosts() == [("a", 1), ("b", 2), ("c", 3)]
    assert settings.sentinel.master_name == "jobs"
    assert settings.redis_replica_acks == 1


def test_loraq_up_never_starts_a_redis_in_place_of_a_sentinel_deployment() -> None:
    unused = free_port()
    alone = Settings(redis_url=f"redis://127.0.0.1:{unused}/0")
    assert needs_local_redis(alone), "no Redis answers: `loraq up` starts one"
    behind = Settings(
        redis_url=alone.redis_url, sentinel=SentinelSettings(addresses=[f"127.0.0.1:{unused}"])
    )
    with pytest.raises(SystemExit, match="through the Sentinels"):
        needs_local_redis(behind)
