"""`nodeipam` with bad input: one line naming the problem and the fix, exit 2; 3 when the cluster cannot answer.

These call `controller.cli.main` in-process. The API server here is an
in-process fake (stdlib http.server) that only answers with errors; how the
commands behave against the real kube-apiserver is covered in
tests/integration/test_cli_errors.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from controller import cli, lifecycle
from controller.config import Settings
from controller.credentials import Credentials, CredentialsError

CIDR = "--cluster-cidr=10.244.0.0/16"

KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: {server}
    {tls}
users:
- name: u
  user:
    token: secret-token
contexts:
- name: x
  context: {{cluster: c, user: u}}
current-context: x
"""


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither a cluster, nor $KUBECONFIG, nor ~/.kube/config: only what a test passes counts."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before the controller starts."""

    async def run(settings: Settings, credentials: Credentials | None = None, *_: object) -> None:
        raise AssertionError("the controller started")

    monkeypatch.setattr(lifecycle, "run", run)


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """main(argv) -> (exit status, stderr).

    `run` without a metrics or a probe address gets none (0), so that no test depends on the default
    ports 9254 and 9255 being free on the machine that runs it.
    """
    for flag in ("--metrics-bind-address", "--health-probe-bind-address"):
        if argv[:1] == ("run",) and not any(arg.startswith(flag) for arg in argv):
            argv = (*argv, f"{flag}=0")
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def assert_one_line(stderr: str, command: str, *fragments: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"nodeipam {command}: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


def kubeconfig(server: str = "https://127.0.0.1:6443", tls: str = "insecure-skip-tls-verify: true") -> str:
    return KUBECONFIG.format(server=server, tls=tls)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- run: flags ------------------------------------------------------------------

RUN_FLAGS = [
    pytest.param(["--kube-api-qps=nan"], "--kube-api-qps", id="qps-nan"),
    pytest.param(["--kube-api-qps=inf"], "--kube-api-qps", id="qps-inf"),
    pytest.param(["--kube-api-qps=1e-300"], "--kube-api-qps", id="qps-tiny"),
    pytest.param(["--kube-api-qps=20", "--kube-api-burst=0"], "--kube-api-burst", id="burst-zero"),
    pytest.param(["--resync-period=1ns"], "--resync-period", id="resync-1ns"),
    pytest.param(["--resync-period=15"], "--resync-period", id="resync-unitless"),
    pytest.param(["--leader-elect-lease-duration=0"], "--leader-elect-lease-duration", id="lease-zero"),
    pytest.param(["--leader-elect-lease-duration=1500ms"], "--leader-elect-lease-duration", id="lease-sub-second"),
    pytest.param(["--leader-elect-renew-deadline=2s"], "--leader-elect-renew-deadline", id="renew-vs-retry"),
    pytest.param(["--leader-elect-resource-namespace=Kube_System"], "--leader-elect-resource-namespace", id="namespace"),
    pytest.param(["--leader-elect-resource-name=-nodeipam"], "--leader-elect-resource-name", id="name"),
    pytest.param(["--master=::::"], "--master", id="master-colons"),
    pytest.param(["--master=https://fd00::1:6443"], "--master", id="master-ipv6-no-brackets"),
    pytest.param(["--metrics-bind-address=:99999"], "--metrics-bind-address", id="bind-port"),
    pytest.param(["--metrics-bind-address=999.0.0.1:9254"], "--metrics-bind-address", id="bind-ipv4-host"),
    pytest.param(["--metrics-bind-address=[fd00::zz]:9254"], "--metrics-bind-address", id="bind-ipv6-host"),
    pytest.param(["--metrics-bind-address=192.0.2.1:9254"], "--metrics-bind-address", id="bind-ipv4-not-local"),
    pytest.param(["--metrics-bind-address=[2001:db8::1]:9254"], "--metrics-bind-address", id="bind-ipv6-not-local"),
    pytest.param(["--metrics-bind-address=host.invalid:9254"], "--metrics-bind-address", id="bind-unresolvable"),
    pytest.param(["--metrics-bind-address=$(POD_IP):9254"], "--metrics-bind-address", id="bind-pod-ip-unexpanded"),
    pytest.param(["--health-probe-bind-address=:99999"], "--health-probe-bind-address", id="probe-port"),
    pytest.param(["--health-probe-bind-address=[fd00::zz]:9255"], "--health-probe-bind-address", id="probe-ipv6-host"),
    pytest.param(
        ["--metrics-bind-address=127.0.0.1:9254", "--health-probe-bind-address=127.0.0.1:9254"],
        "--health-probe-bind-address",
        id="probe-port-is-metrics-port",
    ),
    pytest.param(["--cidr-allocator-type=CloudAllocator"], "--cidr-allocator-type", id="cloud-allocator"),
    pytest.param(["--cidr-allocator-type=IPAMFromCloud"], "--cidr-allocator-type", id="ipam-from-cloud"),
]


@pytest.mark.parametrize(("flags", "flag"), RUN_FLAGS)
def test_run_refuses_a_bad_flag_in_one_line(capsys: pytest.CaptureFixture[str], flags: list[str], flag: str) -> None:
    code, stderr = call(capsys, "run", CIDR, *flags)
    assert code == 2
    assert_one_line(stderr, "run", flag)


@pytest.mark.parametrize("flag", ["--metrics-bind-address", "--health-probe-bind-address"])
@pytest.mark.parametrize("host", [pytest.param("127.0.0.1", id="ipv4"), pytest.param("::1", id="ipv6")])
def test_run_refuses_a_port_in_use(capsys: pytest.CaptureFixture[str], host: str, flag: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        code, stderr = call(capsys, "run", CIDR, f"{flag}={address}")
    assert code == 2
    assert_one_line(stderr, "run", flag, "cannot listen", address)


def test_argparse_errors_still_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["run", CIDR, "--kube-api-qps=fast"])
    assert caught.value.code == 2
    assert "--kube-api-qps" in capsys.readouterr().err


# -- run: credentials ------------------------------------------------------------


def kubeconfig_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (--kubeconfig path, a fragment of the message)."""
    (tmp_path / "directory").mkdir()
    return {
        "missing": (str(tmp_path / "nope"), "no such file"),
        "not-yaml": (write(tmp_path / "bad.yaml", "clusters: [unclosed\n"), "not valid YAML at line 2"),
        "plain-text": (write(tmp_path / "text", "garbage\n"), "is a str, not a mapping"),
        "a-list": (write(tmp_path / "list", "- a\n- b\n"), "is a list, not a mapping"),
        "empty": (write(tmp_path / "empty", ""), "not a usable kubeconfig"),
        "no-current-context": (write(tmp_path / "noctx", "apiVersion: v1\nkind: Config\n"), "current-context"),
        "bad-base64": (
            write(tmp_path / "b64", kubeconfig(tls="certificate-authority-data: '!x'")),
            "not valid base64",
        ),
        "missing-ca": (
            write(tmp_path / "noca", kubeconfig(tls="certificate-authority: /nonexistent")),
            "/nonexistent",
        ),
        "garbage-ca": (
            write(tmp_path / "badca", kubeconfig(tls=f"certificate-authority: {write(tmp_path / 'ca.pem', 'garbage')}")),
            "cannot use its TLS files",
        ),
        "no-server": (write(tmp_path / "noserver", kubeconfig(server='""')), "has no server"),
        "a-directory": (str(tmp_path / "directory"), "cannot read it"),
    }


KUBECONFIG_CASES = [
    "missing",
    "not-yaml",
    "plain-text",
    "a-list",
    "empty",
    "no-current-context",
    "bad-base64",
    "missing-ca",
    "garbage-ca",
    "no-server",
    "a-directory",
]


@pytest.mark.parametrize("command", ["run", "status", "check"])
@pytest.mark.parametrize("case", KUBECONFIG_CASES)
def test_an_unusable_kubeconfig_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, case: str
) -> None:
    path, fragment = kubeconfig_cases(tmp_path)[case]
    code, stderr = call(capsys, command, CIDR, f"--kubeconfig={path}")
    assert code == 2
    assert_one_line(stderr, command, f"--kubeconfig={path}", fragment)


@pytest.mark.parametrize("command", ["run", "status", "check"])
def test_no_credentials_at_all_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, stderr = call(capsys, command, CIDR)
    assert code == 2
    assert_one_line(stderr, command, "no kubeconfig found", "--kubeconfig=PATH")


def test_an_unusable_kubeconfig_env_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", write(tmp_path / "bad.yaml", "{"))
    code, stderr = call(capsys, "run", CIDR)
    assert code == 2
    assert_one_line(stderr, "run", f"$KUBECONFIG={tmp_path / 'bad.yaml'}", "not valid YAML")


def test_a_kubeconfig_env_naming_no_file_is_named(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/a:/nonexistent/b")
    code, stderr = call(capsys, "status", CIDR)
    assert code == 2
    assert_one_line(stderr, "status", "$KUBECONFIG=/nonexistent/a:/nonexistent/b names no existing file")


@pytest.mark.parametrize(
    "server", [pytest.param("https://127.0.0.1:6443", id="ipv4"), pytest.param("https://[::1]:6443", id="ipv6")]
)
def test_run_loads_credentials_then_starts_with_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: str
) -> None:
    started: list[tuple[Settings, Credentials | None]] = []

    async def run(settings: Settings, credentials: Credentials | None = None, *_: object) -> None:
        started.append((settings, credentials))

    monkeypatch.setattr(lifecycle, "run", run)
    monkeypatch.setattr(lifecycle, "configure_logging", lambda level: None)
    path = write(tmp_path / "kubeconfig", kubeconfig(server))
    code, stderr = call(capsys, "run", CIDR, f"--kubeconfig={path}", "--metrics-bind-address=0")
    assert (code, stderr) == (0, "")
    ((settings, credentials),) = started
    assert credentials == Credentials(server=server, token="secret-token", insecure=True)
    assert str(settings.ranges[0].cluster_cidr) == "10.244.0.0/16"


@pytest.mark.parametrize(
    "master", [pytest.param("http://127.0.0.1:8080", id="ipv4"), pytest.param("https://[fd00::1]:6443/", id="ipv6")]
)
def test_master_alone_calls_the_server_without_credentials(master: str) -> None:
    assert Credentials.load(None, master) == Credentials(server=master.rstrip("/"))


def test_master_overrides_the_kubeconfig_server(tmp_path: Path) -> None:
    path = write(tmp_path / "kubeconfig", kubeconfig("https://10.0.0.1:6443"))
    loaded = Credentials.load(path, "10.0.0.2:6443")
    assert (loaded.server, loaded.token) == ("https://10.0.0.2:6443", "secret-token")


def test_credentials_error_is_what_load_raises(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="no such file"):
        Credentials.load(str(tmp_path / "nope"))


# -- status / check: the cluster ------------------------------------------------------


class FakeApiServer(BaseHTTPRequestHandler):
    """Answers every GET with the status and Status body set for its path (404 otherwise)."""

    answers: ClassVar[dict[str, tuple[int, dict[str, Any]]]] = {}

    def do_GET(self) -> None:
        status, body = self.answers.get(self.path.partition("?")[0], (404, {"reason": "NotFound", "message": "not found"}))
        payload = json.dumps({"kind": "Status", "apiVersion": "v1", "code": status, **body}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture(params=[pytest.param("127.0.0.1", id="ipv4"), pytest.param("::1", id="ipv6")])
def fake_api(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fake API server; set FakeApiServer.answers to choose what it says."""
    host = request.param
    server_class = _Server if ":" in host else ThreadingHTTPServer
    server = server_class((host, 0), FakeApiServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    yield f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    FakeApiServer.answers = {}


FORBIDDEN_NODES = (
    403,
    {"reason": "Forbidden", "message": 'nodes is forbidden: User "someone" cannot list resource "nodes" at the cluster scope'},
)


@pytest.mark.parametrize("command", ["status", "check"])
def test_forbidden_names_the_missing_permission_and_exits_3(
    capsys: pytest.CaptureFixture[str], fake_api: str, command: str
) -> None:
    FakeApiServer.answers = {"/api/v1/nodes": FORBIDDEN_NODES}
    code, stderr = call(capsys, command, CIDR, f"--master={fake_api}")
    assert code == 3
    assert_one_line(stderr, command, "forbids list on nodes", 'cannot list resource "nodes"', fake_api)


@pytest.mark.parametrize("command", ["status", "check"])
def test_unauthorized_says_so_and_exits_3(capsys: pytest.CaptureFixture[str], fake_api: str, command: str) -> None:
    FakeApiServer.answers = {"/api/v1/nodes": (401, {"reason": "Unauthorized", "message": "Unauthorized"})}
    code, stderr = call(capsys, command, CIDR, f"--master={fake_api}")
    assert code == 3
    assert_one_line(stderr, command, "401 Unauthorized", "check the kubeconfig's user")


@pytest.mark.parametrize("command", ["status", "check"])
def test_unreachable_api_server_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str], command: str) -> None:
    for host, url in (("127.0.0.1", "http://127.0.0.1:{}"), ("::1", "http://[::1]:{}")):
        master = url.format(free_port(host))
        code, stderr = call(capsys, command, CIDR, f"--master={master}")
        assert code == 3
        assert_one_line(stderr, command, f"cannot reach the API server at {master}", "check --kubeconfig/--master")


def test_deployment_on_an_unreachable_api_server_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    master = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    code, stderr = call(capsys, "status", f"--master={master}", "--deployment=kube-system/nodeipam")
    assert code == 3
    assert_one_line(stderr, "status", f"cannot reach the API server at {master}")


def test_deployment_not_found_is_bad_input(capsys: pytest.CaptureFixture[str], fake_api: str) -> None:
    code, stderr = call(capsys, "status", f"--master={fake_api}", "--deployment=kube-system/nodeipam")
    assert code == 2
    assert_one_line(stderr, "status", "--deployment", "no deployment nodeipam in namespace kube-system")


def test_deployment_forbidden_names_the_permission(capsys: pytest.CaptureFixture[str], fake_api: str) -> None:
    path = "/apis/apps/v1/namespaces/kube-system/deployments/nodeipam"
    FakeApiServer.answers = {path: (403, {"reason": "Forbidden", "message": "deployments.apps is forbidden"})}
    code, stderr = call(capsys, "check", f"--master={fake_api}", "--deployment=kube-system/nodeipam")
    assert code == 3
    assert_one_line(stderr, "check", "forbids get on deployments.apps in namespace kube-system")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param(["--deployment=nodeipam"], "--deployment", id="deployment-no-namespace"),
        pytest.param(["--deployment=Kube/nodeipam"], "--deployment", id="deployment-bad-namespace"),
        pytest.param([], "--cluster-cidr: is required", id="no-range"),
        pytest.param(["--cluster-cidr=garbage"], "--cluster-cidr", id="bad-range"),
        pytest.param([CIDR, "--master=::::"], "--master", id="bad-master-ipv4"),
        pytest.param(["--cluster-cidr=fd00::/48", "--master=https://[fd00::zz]"], "--master", id="bad-master-ipv6"),
        pytest.param([CIDR, "--node-cidr-mask-size=8"], "--node-cidr-mask-size", id="bad-mask-ipv4"),
        pytest.param(["--cluster-cidr=fd00::/48", "--node-cidr-mask-size=40"], "--node-cidr-mask-size", id="bad-mask-ipv6"),
    ],
)
@pytest.mark.parametrize("command", ["status", "check"])
def test_inspect_refuses_bad_flags_before_reading_credentials(
    capsys: pytest.CaptureFixture[str], command: str, argv: list[str], fragment: str
) -> None:
    code, stderr = call(capsys, command, *argv, "--kubeconfig=/nonexistent")
    assert code == 2
    assert_one_line(stderr, command, fragment)


# -- no demo ---------------------------------------------------------------------------


def test_demo_is_not_a_command_of_the_installation(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo needs a checkout's binaries, so it is `make demo` (localcluster.demo), not a command of the wheel."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo"])
    assert exit_.value.code == 2
    assert "invalid choice: 'demo'" in capsys.readouterr().err
    assert " demo " not in cli.build_parser().format_help()


# -- conventions: --version, exit statuses in --help, -o, --context ---------------------


@pytest.mark.parametrize("entry", [pytest.param(cli.main, id="nodeipam"), pytest.param(cli.kubectl_main, id="kubectl-ipam")])
def test_version_prints_the_package_version_and_exits_0(capsys: pytest.CaptureFixture[str], entry: Any) -> None:
    with pytest.raises(SystemExit) as exit_:
        entry(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"nodeipam {importlib.metadata.version('nodeipam')}\n"


@pytest.mark.parametrize(
    ("entry", "argv", "fragments"),
    [
        pytest.param(cli.main, ["--help"], ["1 problems found", "2 bad flags", "3 the cluster cannot be read"], id="top"),
        pytest.param(cli.main, ["status", "--help"], ["0 fine", "2 bad flags", "3 the cluster cannot be read"], id="status"),
        pytest.param(
            cli.main, ["check", "--help"], ["1 problems found", "2 bad flags", "3 the cluster cannot be read"], id="check"
        ),
        pytest.param(
            cli.main, ["explain", "--help"], ["NODE", "a Node that does not exist", "3 the cluster cannot be read"], id="explain"
        ),
        pytest.param(cli.main, ["run", "--help"], ["1 the Lease was lost", "2 bad flags", "accepted and ignored"], id="run"),
        pytest.param(
            cli.main, ["plan", "--help"], ["0 safe to switch", "1 conflicts", "3 the cluster cannot be read"], id="plan"
        ),
        pytest.param(
            cli.kubectl_main, ["plan", "--help"], ["0 safe to switch", "2 bad flags", "-n NAMESPACE"], id="kubectl-plan"
        ),
        pytest.param(
            cli.kubectl_main,
            ["check", "--help"],
            ["1 problems found", "3 the cluster cannot be read", "-n NAMESPACE"],
            id="kubectl-check",
        ),
    ],
)
def test_help_documents_the_exit_statuses(
    capsys: pytest.CaptureFixture[str], entry: Any, argv: list[str], fragments: list[str]
) -> None:
    with pytest.raises(SystemExit):
        entry(argv)
    out = " ".join(capsys.readouterr().out.split())
    for fragment in fragments:
        assert fragment in out


@pytest.mark.parametrize("command", [["status"], ["check"], ["explain", "node-a"]])
def test_output_is_text_json_or_yaml(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, CIDR, "-o", "xml"])
    assert exit_.value.code == 2
    assert "invalid choice: 'xml' (choose from" in capsys.readouterr().err


TWO_CONTEXTS = """apiVersion: v1
kind: Config
clusters:
- {name: one, cluster: {server: "https://10.0.0.1:6443", insecure-skip-tls-verify: true}}
- {name: two, cluster: {server: "https://[fd00::2]:6443", insecure-skip-tls-verify: true}}
users:
- {name: u1, user: {token: token-one}}
- {name: u2, user: {token: token-two}}
contexts:
- {name: first, context: {cluster: one, user: u1}}
- {name: second, context: {cluster: two, user: u2}}
current-context: first
"""


@pytest.mark.parametrize(
    ("context", "server", "token"),
    [
        pytest.param(None, "https://10.0.0.1:6443", "token-one", id="current-context"),
        pytest.param("second", "https://[fd00::2]:6443", "token-two", id="another-context"),
    ],
)
@pytest.mark.parametrize("where", ["flag", "env"])
def test_context_picks_the_kubeconfig_context(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, context: str | None, server: str, token: str, where: str
) -> None:
    path = write(tmp_path / "kubeconfig", TWO_CONTEXTS)
    if where == "env":
        monkeypatch.setenv("KUBECONFIG", path)
    loaded = Credentials.load(path if where == "flag" else None, context=context)
    assert (loaded.server, loaded.token) == (server, token)


@pytest.mark.parametrize("command", ["run", "status", "check"])
def test_an_unknown_context_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str) -> None:
    path = write(tmp_path / "kubeconfig", TWO_CONTEXTS)
    code, stderr = call(capsys, command, CIDR, f"--kubeconfig={path}", "--context=third")
    assert code == 2
    assert_one_line(stderr, command, f"--kubeconfig={path}", "has no context 'third'", "first, second")


def test_a_context_never_means_the_in_cluster_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--context names a kubeconfig context, so a Pod's service account must not silently stand in for it."""
    from kubernetes import config

    def in_a_pod(client_configuration: Any) -> None:
        client_configuration.host = "https://10.96.0.1:443"
        client_configuration.api_key = {"authorization": "Bearer in-cluster-token"}

    monkeypatch.setattr(config, "load_incluster_config", in_a_pod)
    monkeypatch.setenv("KUBECONFIG", write(tmp_path / "kubeconfig", TWO_CONTEXTS))
    assert Credentials.load(None).token == "in-cluster-token"
    assert Credentials.load(None, context="second").token == "token-two"


# -- run: kube-controller-manager's flags pasted ---------------------------------------------


def started_settings(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The Settings the controller starts with (nothing starts)."""
    started: list[Settings] = []

    async def run(settings: Settings, *_: object) -> None:
        started.append(settings)

    monkeypatch.setattr(lifecycle, "run", run)
    monkeypatch.setattr(lifecycle, "configure_logging", lambda level: None)
    return started


PASTED = [
    "--v=2",
    "--secure-port=10257",
    "--bind-address=127.0.0.1",
    "--profiling",
    "--use-service-account-credentials=true",
    "--controllers=*,bootstrapsigner,tokencleaner",
    "--cloud-provider=external",
    "--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf",
    "--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt",
    "--root-ca-file=/etc/kubernetes/pki/ca.crt",
    "--service-account-private-key-file=/etc/kubernetes/pki/sa.key",
    "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt",
    "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key",
    "--feature-gates=SomeGate=true",
    "--logtostderr",
    "--port=0",
    "--cluster-name=kubernetes",
    "--leader-elect-resource-lock=leases",
]


def test_run_starts_with_pasted_kube_controller_manager_flags_noting_each(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started = started_settings(monkeypatch)
    path = write(tmp_path / "kubeconfig", kubeconfig())
    code, stderr = call(capsys, "run", CIDR, f"--kubeconfig={path}", *PASTED, "--allocate-node-cidrs=true", "--kube-api-qps=20")
    assert code == 0, stderr
    assert len(started) == 1
    lines = stderr.splitlines()
    assert len(lines) == len(PASTED), stderr
    for line, flag in zip(lines, PASTED, strict=True):
        assert line.startswith(f"nodeipam run: note: {flag} ignored: kube-controller-manager's flag for "), line
    assert (started[0].kube_api_qps, started[0].kube_api_burst) == (20.0, 30)


def test_allocate_node_cidrs_false_is_said_and_nodeipam_allocates(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """kube-controller-manager is run with it when nodeipam takes over; pasted here, it must not pass in silence."""
    started = started_settings(monkeypatch)
    path = write(tmp_path / "kubeconfig", kubeconfig())
    code, stderr = call(capsys, "run", CIDR, f"--kubeconfig={path}", "--allocate-node-cidrs=false")
    assert code == 0, stderr
    assert len(started) == 1
    (line,) = stderr.splitlines()
    assert line.startswith("nodeipam run: note: --allocate-node-cidrs=false ignored: nodeipam allocates regardless")


@pytest.mark.parametrize(
    ("flags", "noted"),
    [([], True), (["--leader-elect=true"], True), (["--leader-elect=false"], False)],
    ids=["leader-elect-by-default", "leader-elect-given", "leader-elect-off"],
)
def test_a_dry_run_notes_that_it_takes_no_lease(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: list[str], noted: bool
) -> None:
    """--leader-elect defaults to true: the chart's dry run passes it, and it must not read as if a Lease were taken."""
    started = started_settings(monkeypatch)
    path = write(tmp_path / "kubeconfig", kubeconfig())
    code, stderr = call(capsys, "run", CIDR, f"--kubeconfig={path}", "--dry-run", *flags)
    assert code == 0, stderr
    assert [(settings.dry_run, settings.leader_election.enabled) for settings in started] == [(True, False)]
    note = "nodeipam run: note: --leader-elect ignored: a dry run takes no Lease and writes nothing"
    assert (note in stderr) == noted


# -- kubectl ipam ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "namespace", "name"),
    [
        pytest.param([], "kube-system", "nodeipam", id="default"),
        pytest.param(["-n", "ipam"], "ipam", "nodeipam", id="short-namespace"),
        pytest.param(["--namespace=ipam"], "ipam", "nodeipam", id="long-namespace"),
        pytest.param(["-n", "ipam", "--deployment=mine"], "ipam", "mine", id="name-in-namespace"),
        pytest.param(["-n", "ipam", "--deployment=other/mine"], "other", "mine", id="namespace-in-deployment-wins"),
    ],
)
@pytest.mark.parametrize("command", ["status", "check", "plan"])
def test_kubectl_ipam_reads_the_ranges_of_the_deployment_in_the_namespace(
    capsys: pytest.CaptureFixture[str], fake_api: str, command: str, argv: list[str], namespace: str, name: str
) -> None:
    code = cli.kubectl_main([command, *argv, f"--server={fake_api}"])
    assert code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(
        f"kubectl ipam {command}: error: --deployment: there is no deployment {name} in namespace {namespace};"
    )


def test_kubectl_ipam_has_no_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.kubectl_main(["run", CIDR])
    assert exit_.value.code == 2
    assert "invalid choice: 'run'" in capsys.readouterr().err


def test_the_krew_manifest_names_the_console_script() -> None:
    """kubectl finds `kubectl ipam` as kubectl-ipam on PATH: the manifest's bin and the package's script agree."""
    import tomllib

    import yaml

    root = Path(__file__).resolve().parents[2]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-ipam"] == "controller.cli:kubectl_main"
    manifest = yaml.safe_load((root / "manifests" / "krew" / "ipam.yaml").read_text())
    assert (manifest["kind"], manifest["metadata"]["name"]) == ("Plugin", "ipam")
    assert manifest["spec"]["version"] == "v" + tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    for platform in manifest["spec"]["platforms"]:
        assert platform["bin"] == "kubectl-ipam"
        assert len(platform["sha256"]) == 64
