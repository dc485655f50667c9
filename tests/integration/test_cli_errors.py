"""The real `nodeipam` process given bad input or a cluster that cannot answer: one line, no traceback.

Exit status 2 for bad input (flags, kubeconfig), 3 for an API server that
cannot be reached or refuses; the message names the problem and the fix.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from localcluster.cluster import LocalControlPlane
from tests.integration.conftest import Cluster, run_cli

pytestmark = pytest.mark.integration

CIDR = "--cluster-cidr=10.244.0.0/16"


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The process exited with `code` and said one line on stderr holding every fragment."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def kubeconfig_like(plane: LocalControlPlane, path: Path, server: str | None = None, token: str | None = None) -> str:
    """The control plane's kubeconfig with another server or token."""
    text = Path(plane.kubeconfig).read_text()
    if server is not None:
        text = text.replace(plane.server, server)
    if token is not None:
        (line,) = [line for line in text.splitlines() if line.strip().startswith("token:")]
        text = text.replace(line, line.split("token:")[0] + f"token: {token}")
    path.write_text(text)
    return str(path)


def dead_server(host: str) -> str:
    """https://HOST:PORT where nothing listens (a port just freed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


@pytest.mark.parametrize("command", ["run", "status", "check"])
def test_a_missing_kubeconfig_is_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nonexistent")
    result = run_cli(command, CIDR, kubeconfig=missing)
    assert_one_line(result, 2, f"--kubeconfig={missing}", "no such file")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param("clusters: [unclosed\n", "not valid YAML at line 2", id="not-yaml"),
        pytest.param("garbage\n", "not a mapping", id="plain-text"),
        pytest.param("", "not a usable kubeconfig", id="empty"),
    ],
)
@pytest.mark.parametrize("command", ["run", "status", "check"])
def test_a_garbage_kubeconfig_is_one_line_and_exit_2(command: str, content: str, fragment: str, tmp_path: Path) -> None:
    garbage = tmp_path / "kubeconfig"
    garbage.write_text(content)
    result = run_cli(command, CIDR, kubeconfig=str(garbage))
    assert_one_line(result, 2, f"--kubeconfig={garbage}", fragment)


@pytest.mark.parametrize("host", [pytest.param("127.0.0.1", id="ipv4"), pytest.param("::1", id="ipv6")])
@pytest.mark.parametrize("command", ["status", "check"])
def test_an_unreachable_api_server_is_one_line_and_exit_3(
    control_plane: LocalControlPlane, tmp_path: Path, command: str, host: str
) -> None:
    server = dead_server(host)
    result = run_cli(command, CIDR, kubeconfig=kubeconfig_like(control_plane, tmp_path / "kubeconfig", server=server))
    assert_one_line(result, 3, f"cannot reach the API server at {server}", "check --kubeconfig/--master")


@pytest.mark.parametrize("command", ["status", "check"])
def test_master_pointing_nowhere_is_one_line_and_exit_3(control_plane: LocalControlPlane, command: str) -> None:
    server = dead_server("127.0.0.1")
    result = run_cli(command, CIDR, f"--master={server}", kubeconfig=control_plane.kubeconfig)
    assert_one_line(result, 3, f"cannot reach the API server at {server}")


@pytest.mark.parametrize("command", ["status", "check"])
def test_a_token_the_api_server_does_not_know_is_one_line_and_exit_3(
    control_plane: LocalControlPlane, tmp_path: Path, command: str
) -> None:
    kubeconfig = kubeconfig_like(control_plane, tmp_path / "kubeconfig", token="not-a-known-token")
    result = run_cli(command, CIDR, kubeconfig=kubeconfig)
    assert_one_line(result, 3, "401 Unauthorized")


@pytest.mark.parametrize("command", ["status", "check"])
def test_a_user_without_list_nodes_is_told_the_permission(control_plane: LocalControlPlane, tmp_path: Path, command: str) -> None:
    account = f"no-rights-{command}-{int(time.time())}"
    control_plane.kubectl("create", "serviceaccount", account, "-n", "default")
    token = control_plane.kubectl("create", "token", account, "-n", "default").strip()
    kubeconfig = kubeconfig_like(control_plane, tmp_path / "kubeconfig", token=token)
    result = run_cli(command, CIDR, kubeconfig=kubeconfig)
    line = assert_one_line(result, 3, "forbids list on nodes (cluster-wide)", 'cannot list resource "nodes"')
    assert f"system:serviceaccount:default:{account}" in line


@pytest.mark.parametrize("command", ["status", "check"])
def test_a_deployment_that_does_not_exist_is_bad_input(control_plane: LocalControlPlane, command: str) -> None:
    result = run_cli(command, "--deployment=kube-system/no-such-nodeipam", kubeconfig=control_plane.kubeconfig)
    assert_one_line(result, 2, "--deployment", "no deployment no-such-nodeipam in namespace kube-system")


@pytest.mark.parametrize(
    ("cluster_cidr", "pod_cidr"),
    [
        pytest.param("10.244.0.0/16", "10.244.7.0/24", id="ipv4"),
        pytest.param("fd00:10:244::/48", "fd00:10:244:7::/64", id="ipv6"),
    ],
)
def test_valid_calls_work(cluster: Cluster, cluster_cidr: str, pod_cidr: str) -> None:
    cluster.create_nodes(["valid-a"], pod_cidrs=(pod_cidr,))
    status = run_cli("status", f"--cluster-cidr={cluster_cidr}", "-o", "json", kubeconfig=cluster.plane.kubeconfig)
    assert (status.returncode, status.stderr) == (0, ""), status.stderr
    assert json.loads(status.stdout)["ranges"][0]["allocated"] == 1
    check = run_cli("check", f"--cluster-cidr={cluster_cidr}", kubeconfig=cluster.plane.kubeconfig)
    assert (check.returncode, check.stderr) == (0, ""), check.stderr
    assert check.stdout.splitlines()[-1] == "checked 1 nodes: 0 problem(s)"
