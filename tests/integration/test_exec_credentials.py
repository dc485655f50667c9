"""A kubeconfig whose user's token comes from an exec plugin, with the real `nodeipam` process.

A plugin that fails stops the start with one line (exit 2). A plugin whose
tokens expire is run again before they do: against the real API server, each
token is a ServiceAccount token bound to a Secret the plugin deletes two runs
later, so that a client still sending an old token is refused.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from localcluster.cluster import ADMIN_TOKEN, LocalControlPlane
from tests.conftest import wait_for
from tests.integration.conftest import Cluster, ControllerProcess, run_cli
from tests.integration.test_cli_errors import assert_one_line

pytestmark = pytest.mark.integration

CIDR = "--cluster-cidr=10.244.0.0/16"
ACCOUNT = "nodeipam-exec"
TOKEN_LIFETIME = 4  # seconds the plugin says its tokens live; the controller renews them halfway

#: Run N: a Secret exec-N, a token of ACCOUNT bound to it, the Secret of run N-2 deleted (its token refused from then on).
PLUGIN = """
import datetime, json, pathlib, ssl, sys, urllib.request
server, admin, counter, lifetime = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), int(sys.argv[4])
run = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(run))
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE

def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": "Bearer " + admin, "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(server + path, data, headers, method=method), context=context) as answer:
        return json.load(answer)

secret = call("POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": f"exec-{run}"}})
bound = {"kind": "Secret", "apiVersion": "v1", "name": f"exec-{run}", "uid": secret["metadata"]["uid"]}
request = {"spec": {"expirationSeconds": 600, "boundObjectRef": bound}}
token = call("POST", "/api/v1/namespaces/default/serviceaccounts/ACCOUNT/token", request)["status"]["token"]
if run > 2:
    call("DELETE", f"/api/v1/namespaces/default/secrets/exec-{run - 2}")
expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=lifetime)
status = {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status}))
""".replace("ACCOUNT", ACCOUNT)


def exec_kubeconfig(path: Path, server: str, command: str, args: list[str]) -> str:
    exec_config = {"apiVersion": "client.authentication.k8s.io/v1", "command": command, "args": args, "interactiveMode": "Never"}
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "plugged", "user": {"exec": exec_config}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "plugged"}}],
                "current-context": "local",
            }
        )
    )
    return str(path)


@pytest.mark.parametrize(
    ("plugin", "fragment"),
    [
        pytest.param(None, "process returned 1", id="bin-false"),
        pytest.param("#!/bin/sh\necho 'the token service is down' >&2\nexit 1\n", "the token service is down", id="says-why"),
    ],
)
@pytest.mark.parametrize("command", ["run", "status", "check"])
def test_a_failing_exec_plugin_is_one_line_and_exit_2(command: str, plugin: str | None, fragment: str, tmp_path: Path) -> None:
    program = "/bin/false"
    if plugin is not None:
        program = str(tmp_path / "plugin")
        Path(program).write_text(plugin)
        Path(program).chmod(0o755)
    kubeconfig = exec_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", program, [])
    result = run_cli(command, CIDR, *(["--metrics-bind-address=0"] if command == "run" else []), kubeconfig=kubeconfig)
    line = assert_one_line(result, 2, f"--kubeconfig={kubeconfig}", 'user "plugged"', program, fragment)
    assert "ERROR:root" not in result.stderr and "by hand" in line


def test_exec_tokens_are_renewed_before_they_expire(
    control_plane: LocalControlPlane, cluster: Cluster, start_controller: Callable[..., ControllerProcess], tmp_path: Path
) -> None:
    control_plane.kubectl("create", "serviceaccount", ACCOUNT, "-n", "default", check=False)
    control_plane.kubectl(
        "create", "clusterrolebinding", ACCOUNT, "--clusterrole=cluster-admin", f"--serviceaccount=default:{ACCOUNT}", check=False
    )
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    counter = tmp_path / "runs"
    args = [str(script), control_plane.server, ADMIN_TOKEN, str(counter), str(TOKEN_LIFETIME)]
    kubeconfig = exec_kubeconfig(tmp_path / "kubeconfig", control_plane.server, sys.executable, args)

    def runs() -> int:
        return int(counter.read_text()) if counter.exists() else 0

    # The later --kubeconfig wins over the control plane's; leader election puts the Lease client on its own thread.
    controller = start_controller(
        f"--kubeconfig={kubeconfig}",
        CIDR,
        "--leader-elect=true",
        "--leader-elect-resource-namespace=default",
        f"--leader-elect-resource-name=exec-{int(time.time())}",
    )
    names: list[str] = []

    def served_while_renewing() -> bool:
        """One more Node, served; true once the plugin has run often enough."""
        names.append(f"exec-{len(names)}")
        cluster.create_nodes([names[-1]])
        cluster.wait_assigned(names)
        assert controller.process.poll() is None, controller.log()
        return runs() >= 12

    # Nodes keep coming while token after token expires and the Secrets of old ones go: every client (Nodes,
    # Lease, kopf's watch) must have moved on, or its requests are refused.
    wait_for(served_while_renewing, timeout=120, interval=0.5, what="12 runs of the plugin while Nodes are served")
    log = controller.log()
    assert "Unauthorized" not in log and "could not renew" not in log, log
    assert "token renewed" in log, log
    # The metrics port's process reviews a scraper's token with the controller's token of the moment: the first
    # ones are refused by now, so a scrape answers only if every renewal reached it.
    assert controller.get("/metrics") == 200, controller.log()
