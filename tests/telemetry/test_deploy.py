"""Static checks of the Dockerfile and the Cloud Run service YAML.

No Docker engine is needed: the Dockerfile is parsed here and held to these
rules (hadolint numbers where one exists):

* D1 every FROM names a pinned tag, never ``latest`` or no tag (DL3006, DL3007);
* D2 the build is multi-stage, and the last stage copies from an earlier one;
* D3 the final stage sets USER to a non-root user before ENTRYPOINT/CMD (DL3002);
* D4 every ``apt-get install`` uses ``-y --no-install-recommends`` and the
  same RUN removes /var/lib/apt/lists (DL3015, DL3009); no ``apt-get upgrade``
  (DL3005); no ``apt`` (DL3027);
* D5 ADD is never used for URLs or archives; COPY is used instead (DL3020);
* D6 a HEALTHCHECK is present in the final stage and uses exec form;
* D7 EXPOSE includes 8080 (gRPC) and 9090 (metrics);
* D8 no ENV/ARG looks like a secret (key, token, password, secret);
* D9 ENTRYPOINT uses exec (JSON) form so signals reach the server (DL3025);
* D10 pip installs use ``--no-cache-dir`` (DL3042);
* D11 no ``cd`` inside RUN, WORKDIR is used instead (DL3003); WORKDIR paths
  are absolute (DL3000).

apt package versions are deliberately not pinned (DL3008 is waived): the base
image pins the Debian release, and pinning exact versions breaks rebuilds
whenever Debian ships a security update.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):  # comments inside a continuation
            continue
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer.append(line[:-1].strip())
            continue
        buffer.append(stripped)
        joined = " ".join(part for part in buffer if part)
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        buffer = []
    assert not buffer, "Dockerfile ends inside a line continuation"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        assert result, f"line {ins.line}: {ins.keyword} before FROM"
        result[-1].append(ins)
    return result


def is_exec_form(args: str) -> bool:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return False
    return isinstance(value, list) and all(isinstance(v, str) for v in value) and bool(value)


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    path = Path(__file__).resolve().parents[2] / "Dockerfile"
    return parse_dockerfile(path.read_text())


def test_parser_handles_continuations_and_comments() -> None:
    text = "FROM a:1 AS b\n# c\nRUN x \\\n  # inner\n  && y\nUSER 1\n"
    assert [(i.keyword, i.args) for i in parse_dockerfile(text)] == [
        ("FROM", "a:1 AS b"),
        ("RUN", "x && y"),
        ("USER", "1"),
    ]


def test_d1_pinned_base_images(dockerfile: list[Instruction]) -> None:
    names = {s[0].args.split()[-1] for s in stages(dockerfile) if " AS " in s[0].args.upper()}
    for ins in dockerfile:
        if ins.keyword != "FROM":
            continue
        image = next(a for a in ins.args.split() if not a.startswith("--"))
        if image in names:
            continue
        assert ":" in image or "@sha256:" in image, f"line {ins.line}: untagged {image}"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest", f"line {ins.line}: {image}"
        assert re.match(r"\d+\.\d+", tag), f"line {ins.line}: tag should pin a version: {image}"


def test_d2_multi_stage(dockerfile: list[Instruction]) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2
    final = all_stages[-1]
    assert any(i.keyword == "COPY" and "--from=" in i.args for i in final)


def test_d3_non_root_user_before_entrypoint(dockerfile: list[Instruction]) -> None:
    final = stages(dockerfile)[-1]
    users = [i for i in final if i.keyword == "USER"]
    assert users, "final stage must set USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    starts = [i for i in final if i.keyword in ("ENTRYPOINT", "CMD")]
    assert starts
    assert all(users[-1].line < s.line for s in starts)


def test_d4_apt_hygiene(dockerfile: list[Instruction]) -> None:
    runs = [i for i in dockerfile if i.keyword == "RUN"]
    installs = [r for r in runs if "apt-get install" in r.args]
    assert installs, "bubblewrap must be installed with apt-get"
    for run in installs:
        assert "--no-install-recommends" in run.args, run.line
        assert re.search(r"apt-get install[^&;]*\s-y\b", run.args), run.line
        assert "rm -rf /var/lib/apt/lists" in run.args, run.line
        assert "apt-get update" in run.args, f"line {run.line}: update in the same layer"
    assert any("bubblewrap" in r.args for r in installs)
    assert any("ca-certificates" in r.args for r in installs)
    for run in runs:
        assert "apt-get upgrade" not in run.args and "dist-upgrade" not in run.args
        assert not re.search(r"(^|[;&|]\s*)apt\s", run.args), run.line


def test_d5_no_add(dockerfile: list[Instruction]) -> None:
    for ins in dockerfile:
        if ins.keyword == "ADD":
            assert not re.search(r"https?://|\.tar|\.gz|\.zip", ins.args), ins.line
    assert not [i for i in dockerfile if i.keyword == "ADD"], "use COPY"


def test_d6_healthcheck(dockerfile: list[Instruction]) -> None:
    final = stages(dockerfile)[-1]
    (health,) = [i for i in final if i.keyword == "HEALTHCHECK"]
    assert " CMD " in f" {health.args} "
    cmd = health.args.split(" CMD ", 1)[1] if " CMD " in health.args else health.args
    assert is_exec_form(cmd)
    assert json.loads(cmd)[-1] == "rlm_service.healthcheck"


def test_d7_expose(dockerfile: list[Instruction]) -> None:
    ports = {p.split("/")[0] for i in dockerfile if i.keyword == "EXPOSE" for p in i.args.split()}
    assert {"8080", "9090"} <= ports


def test_d8_no_secrets_in_env(dockerfile: list[Instruction]) -> None:
    secretish = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL)", re.I)
    for ins in dockerfile:
        if ins.keyword not in ("ENV", "ARG"):
            continue
        for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", ins.args):
            assert not secretish.search(name), f"line {ins.line}: {name}"


def test_d9_exec_form_entrypoint(dockerfile: list[Instruction]) -> None:
    final = stages(dockerfile)[-1]
    (entry,) = [i for i in final if i.keyword == "ENTRYPOINT"]
    assert is_exec_form(entry.args)
    assert json.loads(entry.args) == ["rlm-server"]
    for ins in final:
        if ins.keyword == "CMD":
            assert is_exec_form(ins.args)


def test_d10_pip_no_cache(dockerfile: list[Instruction]) -> None:
    pips = [i for i in dockerfile if i.keyword == "RUN" and re.search(r"\bpip3? install", i.args)]
    assert pips
    for ins in pips:
        assert "--no-cache-dir" in ins.args, ins.line


def test_d11_workdir_not_cd(dockerfile: list[Instruction]) -> None:
    for ins in dockerfile:
        if ins.keyword == "RUN":
            assert not re.search(r"(^|&&|;)\s*cd\s", ins.args), ins.line
        if ins.keyword == "WORKDIR":
            assert ins.args.startswith("/"), ins.line


def test_dockerignore_keeps_context_small() -> None:
    root = Path(__file__).resolve().parents[2]
    entries = {
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", ".pytest_cache", ".mypy_cache", ".env"} <= entries
    assert "rlm_service" not in entries and "pyproject.toml" not in entries


def test_console_script_matches_entrypoint() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["rlm-server"] == "rlm_service.cli:server_main"


# --- Cloud Run --------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    path = Path(__file__).resolve().parents[2] / "deploy/cloudrun/service.yaml"
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _container(service: dict[str, Any]) -> dict[str, Any]:
    containers = service["spec"]["template"]["spec"]["containers"]
    # With sidecars only the ingress container may declare a port.
    (ingress,) = [c for c in containers if c.get("ports")]
    return ingress  # type: ignore[no-any-return]


def test_cloudrun_kind(service: dict[str, Any]) -> None:
    assert service["apiVersion"] == "serving.knative.dev/v1"
    assert service["kind"] == "Service"


def test_cloudrun_h2c_port(service: dict[str, Any]) -> None:
    (port,) = _container(service)["ports"]
    assert port == {"name": "h2c", "containerPort": 8080}


def test_cloudrun_gen2_and_timeouts(service: dict[str, Any]) -> None:
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["run.googleapis.com/execution-environment"] == "gen2"
    spec = template["spec"]
    assert spec["timeoutSeconds"] == 3600
    assert 1 <= spec["containerConcurrency"] <= 32
    env = {e["name"]: e for e in _container(service)["env"]}
    # Concurrency and the server's own admission limit agree.
    assert int(env["MAX_CONCURRENT_RUNS"]["value"]) == spec["containerConcurrency"]
    # Cloud Run allows 10 s after SIGTERM; the drain must fit inside it.
    assert float(env["SHUTDOWN_GRACE_SECONDS"]["value"]) < 10


def test_cloudrun_grpc_probes(service: dict[str, Any]) -> None:
    container = _container(service)
    for probe_name in ("startupProbe", "livenessProbe"):
        probe = container[probe_name]
        assert probe["grpc"] == {"port": 8080, "service": ""}, probe_name
        assert "httpGet" not in probe and "tcpSocket" not in probe
    startup = container["startupProbe"]
    # Enough budget for a cold start with sandbox pre-warming (<= 240 s).
    assert 10 <= startup["periodSeconds"] * startup["failureThreshold"] <= 240


def test_cloudrun_resources_and_secret(service: dict[str, Any]) -> None:
    container = _container(service)
    limits = container["resources"]["limits"]
    assert {"cpu", "memory"} <= set(limits)
    env = {e["name"]: e for e in container["env"]}
    ref = env["GEMINI_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
    assert "value" not in env["GEMINI_API_KEY"]
    # No literal secret values anywhere in the manifest.
    for item in container["env"]:
        if re.search(r"KEY|TOKEN|SECRET|PASSWORD", item["name"]):
            assert "valueFrom" in item, item["name"]
