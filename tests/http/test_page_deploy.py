"""Static checks of how the HTTP face and page are deployed: the Dockerfile's port and
the second Cloud Run service (deploy/cloudrun/service-http.yaml), held against the
gRPC service's YAML and docs/operations.md."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlm_service.config import Settings
from tests.telemetry.test_deploy import Instruction, parse_dockerfile, stages

ROOT = Path(__file__).resolve().parents[2]
CLOUDRUN = ROOT / "deploy/cloudrun"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CLOUDRUN / name).read_text())
    return data


@pytest.fixture(scope="module")
def http_service() -> dict[str, Any]:
    return load("service-http.yaml")


@pytest.fixture(scope="module")
def grpc_service() -> dict[str, Any]:
    return load("service.yaml")


@pytest.fixture(scope="module")
def final_stage() -> list[Instruction]:
    return stages(parse_dockerfile((ROOT / "Dockerfile").read_text()))[-1]


def container(service: dict[str, Any]) -> dict[str, Any]:
    (only,) = service["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def env_of(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(service)["env"]}


def image_env(stage: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            values.update(item.split("=", 1) for item in shlex.split(ins.args) if "=" in item)
    return values


def test_image_exposes_and_defaults_the_http_port(final_stage: list[Instruction]) -> None:
    exposed = {p.split("/")[0] for i in final_stage if i.keyword == "EXPOSE"
               for p in i.args.split()}
    assert {"8080", "8081", "9090"} <= exposed
    env = image_env(final_stage)
    assert env["HTTP_PORT"] == "8081" == str(Settings.model_fields["http_port"].default)
    assert env["PORT"] == "8080"


def test_http_service_speaks_http1_on_the_http_port(http_service: dict[str, Any]) -> None:
    assert http_service["apiVersion"] == "serving.knative.dev/v1"
    assert http_service["kind"] == "Service"
    (port,) = container(http_service)["ports"]
    # Not h2c: that is --use-http2, which a browser-facing aiohttp port cannot answer.
    assert port == {"name": "http1", "containerPort": 8081}
    env = env_of(http_service)
    assert env["HTTP_PORT"]["value"] == str(port["containerPort"])
    # Cloud Run owns PORT (it is the container port); a service may not set it.
    assert "PORT" not in env


def test_http_service_moves_grpc_off_the_container_port(http_service: dict[str, Any],
                                                        final_stage: list[Instruction]) -> None:
    command = container(http_service)["command"]
    (entry,) = [i for i in final_stage if i.keyword == "ENTRYPOINT"]
    # `env VAR=... <the image's entrypoint>`: exec form end to end, so SIGTERM
    # reaches the server, and the server is the one the image runs.
    assert command[0] == "env" and command[-1:] == json.loads(entry.args)
    assignments = dict(a.split("=", 1) for a in command[1:-1])
    assert set(assignments) == {"PORT"}
    assert assignments["PORT"] != str(container(http_service)["ports"][0]["containerPort"])
    assert "args" not in container(http_service)


def test_http_service_probes_healthz(http_service: dict[str, Any]) -> None:
    c = container(http_service)
    for name in ("startupProbe", "livenessProbe"):
        assert c[name]["httpGet"] == {"path": "/healthz", "port": 8081}, name
        assert "grpc" not in c[name] and "tcpSocket" not in c[name]
    startup = c["startupProbe"]
    assert 10 <= startup["periodSeconds"] * startup["failureThreshold"] <= 240


def test_both_services_run_the_same_image_and_limits(http_service: dict[str, Any],
                                                     grpc_service: dict[str, Any]) -> None:
    http_c, grpc_c = container(http_service), container(grpc_service)
    assert http_c["image"] == grpc_c["image"]
    assert http_c["resources"] == grpc_c["resources"]
    http_t, grpc_t = http_service["spec"]["template"], grpc_service["spec"]["template"]
    assert http_t["metadata"]["annotations"] == grpc_t["metadata"]["annotations"]
    for key in ("containerConcurrency", "timeoutSeconds", "serviceAccountName"):
        assert http_t["spec"][key] == grpc_t["spec"][key], key
    env, grpc_env = env_of(http_service), env_of(grpc_service)
    assert int(env["MAX_CONCURRENT_RUNS"]["value"]) == http_t["spec"]["containerConcurrency"]
    assert float(env["SHUTDOWN_GRACE_SECONDS"]["value"]) < 10
    assert env["GEMINI_API_KEY"] == grpc_env["GEMINI_API_KEY"]
    for item in http_c["env"]:
        if re.search(r"KEY|TOKEN|SECRET|PASSWORD", item["name"]):
            assert "valueFrom" in item and "value" not in item, item["name"]
    assert http_service["metadata"]["name"] != grpc_service["metadata"]["name"]


def test_operations_doc_deploys_the_http_face_without_http2() -> None:
    doc = (ROOT / "docs/operations.md").read_text()
    assert "deploy/cloudrun/service-http.yaml" in doc
    commands = re.findall(r"gcloud run deploy rlm-http.*?(?:\n\n|```)", doc, re.S)
    assert len(commands) == 1, "docs/operations.md shows one `gcloud run deploy rlm-http`"
    (deploy,) = commands
    assert "--use-http2" not in deploy
    assert "--port=8081" in deploy
    assert "--command=env" in deploy and "--args=PORT=8080,rlm-server" in deploy
    assert "HTTP_PORT=8081" in deploy
