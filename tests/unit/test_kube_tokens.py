"""Tokens from a kubeconfig's exec plugin or auth provider: a failing plugin stops the start, and a token that
expires is renewed before it does, by every client and by kopf's login.

Renewal times are judged by a clock the test moves; only a renewal running in a
thread is waited for, by polling.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.server
import json
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controller import handlers
from controller.credentials import RENEW_AGAIN_SECONDS, Credentials, CredentialsError, RenewingToken, Token
from controller.kube import ApiError, KubeClient
from tests.fakeapi import FakeApi

T0 = 1_900_000_000.0  # "now" on the test's clock (2030)
NODES = "/api/v1/nodes"

#: An exec plugin that counts its runs in a file and prints token-<run>, expiring at the run's entry of a list.
PLUGIN = """
import json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
run = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(run))
expiries = json.loads(sys.argv[2])
status = {"token": f"token-{run}"}
if expiries:
    status["expirationTimestamp"] = expiries[min(run, len(expiries)) - 1]
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status}))
"""


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kubeconfig(path: Path, server: str, user: dict[str, Any]) -> str:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "alice", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "alice"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


def exec_user(tmp_path: Path, expiries: list[float]) -> tuple[dict[str, Any], Path]:
    """A kubeconfig user whose token comes from PLUGIN; and the file counting its runs."""
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    counter = tmp_path / "runs"
    exec_config = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": sys.executable,
        "args": [str(script), str(counter), json.dumps([rfc3339(at) for at in expiries])],
        "interactiveMode": "Never",
    }
    return {"exec": exec_config}, counter


def runs(counter: Path) -> int:
    return int(counter.read_text()) if counter.exists() else 0


@pytest.mark.parametrize(
    ("lifetime", "renewed_after"),
    [
        pytest.param(3600.0, 3240.0, id="a-tenth-of-an-hour-before"),
        pytest.param(300.0, 240.0, id="a-minute-before"),
        pytest.param(60.0, 30.0, id="never-in-the-first-half"),
        pytest.param(None, None, id="no-expiry-never"),
    ],
)
def test_a_token_is_due_for_renewal_before_it_expires(lifetime: float | None, renewed_after: float | None) -> None:
    clock = Clock()
    token = RenewingToken(lambda: Token("new"), "test", Token("old", T0 + lifetime if lifetime else None), clock)
    assert token.renew_at == (T0 + renewed_after if renewed_after is not None else None)
    clock.now = T0 + (renewed_after or 10 * 365 * 86400) - 1
    assert not token.due() and token.renewed() == "old"
    clock.now += 1
    assert token.due() == (renewed_after is not None)
    assert token.renewed() == ("new" if renewed_after is not None else "old")


def test_a_failed_or_unchanged_renewal_keeps_the_token_and_tries_again_later(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    answers: list[Token | Exception] = [CredentialsError("plugin down"), Token("old", T0 + 100), Token("new", T0 + 3700)]

    def fetch() -> Token:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    token = RenewingToken(fetch, "user alice", Token("old", T0 + 100), clock)
    clock.now = T0 + 60  # due (half its life)
    assert token.renewed() == "old"
    assert "user alice: could not renew the token (plugin down); it is still used" in caplog.text
    assert token.renew_at == T0 + 60 + RENEW_AGAIN_SECONDS and not token.due()
    clock.now = token.renew_at
    assert token.renewed() == "old", "the same token back: asked again a little later"
    assert token.renew_at == T0 + 60 + 2 * RENEW_AGAIN_SECONDS
    clock.now = token.renew_at
    assert token.renewed() == "new"
    assert token.renew_at == pytest.approx(T0 + 3700 - (3700 - 80) / 10), "a tenth of its lifetime from now"
    assert answers == []


@pytest.mark.parametrize(
    ("moved_to", "waits_for_it"),
    [
        pytest.param(T0 + 3300, False, id="due-renewed-in-the-background"),
        pytest.param(T0 + 3700, True, id="expired-renewed-first"),
    ],
)
def test_the_client_sends_the_renewed_exec_token(tmp_path: Path, moved_to: float, waits_for_it: bool) -> None:
    user, counter = exec_user(tmp_path, [T0 + 3600, T0 + 7200])
    clock = Clock()

    async def go() -> None:
        sent: list[str] = []

        async def answer(request: web.Request) -> web.StreamResponse:
            sent.append(request.headers.get("Authorization", ""))
            return web.json_response({"metadata": {"resourceVersion": "1"}, "items": []})

        async with FakeApi() as api:
            api.script("GET", NODES, answer)
            credentials = Credentials.load(kubeconfig(tmp_path / "kubeconfig", api.url, user), clock=clock)
            async with KubeClient(credentials) as kube:
                await kube.list_nodes()
                clock.now = T0 + 3200  # not due yet
                await kube.list_nodes()
                assert sent == ["Bearer token-1"] * 2 and runs(counter) == 1
                clock.now = moved_to
                await kube.list_nodes()
                if waits_for_it:
                    assert sent[-1] == "Bearer token-2", "an expired token is never sent when a new one can be had"
                else:
                    assert sent[-1] == "Bearer token-1", "the token at hand is still good: no request waits"

                    async def renewed() -> bool:
                        await kube.list_nodes()
                        return sent[-1] == "Bearer token-2"

                    await poll(renewed)
                assert runs(counter) == 2
                assert credentials.renewing is not None
                assert credentials.renewing.renew_at == pytest.approx(T0 + 7200 - (T0 + 7200 - moved_to) / 10)

    asyncio.run(go())


def accepting_only(accepted: set[str], seen: list[str]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An answer to a Node LIST or watch: 401 unless the Authorization header is one of `accepted`; records them."""

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        if seen[-1] not in accepted:
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)
        return web.json_response({"metadata": {"resourceVersion": "1"}, "items": []})

    return answer


@pytest.mark.parametrize(
    ("accepted", "outcome", "sent", "plugin_runs"),
    [
        pytest.param({"Bearer token-2"}, 200, ["Bearer token-1", "Bearer token-2"], 2, id="revoked-renewed-and-sent-again"),
        pytest.param(set(), 401, ["Bearer token-1", "Bearer token-2"], 2, id="refused-again-one-renewal-not-a-loop"),
    ],
)
def test_a_401_renews_the_exec_token_before_the_next_request(
    tmp_path: Path, accepted: set[str], outcome: int, sent: list[str], plugin_runs: int
) -> None:
    """A token without expiry is never due; the API server's 401 says it is no longer good (revoked, rotated)."""
    user, counter = exec_user(tmp_path, [])
    clock = Clock()

    async def go() -> None:
        seen: list[str] = []
        async with FakeApi() as api:
            api.script("GET", NODES, accepting_only(accepted, seen))
            credentials = Credentials.load(kubeconfig(tmp_path / "kubeconfig", api.url, user), clock=clock)
            clock.now += RENEW_AGAIN_SECONDS  # fetched a while ago
            async with KubeClient(credentials) as kube:
                try:
                    await kube.list_nodes()
                    status = 200
                except ApiError as error:
                    status = error.status
                assert (status, seen, runs(counter)) == (outcome, sent, plugin_runs)
                if outcome == 401:  # refused again at once: the token is not fetched again within RENEW_AGAIN_SECONDS
                    with pytest.raises(ApiError):
                        await kube.list_nodes()
                    assert (len(seen), runs(counter)) == (3, plugin_runs)
                    clock.now += RENEW_AGAIN_SECONDS
                    with pytest.raises(ApiError):
                        await kube.list_nodes()
                    assert (len(seen), runs(counter)) == (5, plugin_runs + 1)

    asyncio.run(go())


def test_a_watch_refused_with_401_renews_the_token_for_the_next_request(tmp_path: Path) -> None:
    user, counter = exec_user(tmp_path, [])
    clock = Clock()

    async def go() -> None:
        seen: list[str] = []
        async with FakeApi() as api:
            api.script("GET", NODES, accepting_only({"Bearer token-2"}, seen))
            credentials = Credentials.load(kubeconfig(tmp_path / "kubeconfig", api.url, user), clock=clock)
            clock.now += RENEW_AGAIN_SECONDS
            async with KubeClient(credentials) as kube:
                with pytest.raises(ApiError) as refused:
                    async for _ in kube.watch_nodes("1"):
                        pass
                assert refused.value.status == 401
                await kube.list_nodes()
        assert seen == ["Bearer token-1", "Bearer token-2"] and runs(counter) == 2

    asyncio.run(go())


def test_a_401_to_an_older_token_renews_nothing() -> None:
    clock = Clock()
    fetched: list[str] = []

    def fetch() -> Token:
        fetched.append(f"t{len(fetched) + 2}")
        return Token(fetched[-1])

    token = RenewingToken(fetch, "user alice", Token("t1"), clock)
    clock.now += RENEW_AGAIN_SECONDS
    assert token.refused("t0") is True and not token.due(), "sent again with the token at hand, nothing fetched"
    assert token.refused("t1") is True and token.due() and token.expired()
    assert token.renewed() == "t2" and not token.due() and not token.expired()
    assert token.refused("t2") is False, "refused again at once: not fetched again within RENEW_AGAIN_SECONDS"
    clock.now += RENEW_AGAIN_SECONDS
    assert token.refused("t1") is True and not token.due(), "a request sent with the old token before the renewal"
    assert fetched == ["t2"]


def test_a_401_answered_while_a_fetch_runs_waits_for_nothing_and_sends_again_with_its_token() -> None:
    """refused() runs on the event loop: a fetch in a thread (an exec plugin running) must not hold it up."""
    clock = Clock()
    fetching, release = threading.Event(), threading.Event()

    def fetch() -> Token:
        fetching.set()
        release.wait(10)
        return Token("t2")

    token = RenewingToken(fetch, "user alice", Token("t1", T0 + 100), clock)
    clock.now = T0 + 60  # due: half its life
    renewal = threading.Thread(target=token.renewed)
    renewal.start()
    try:
        assert fetching.wait(5)
        answered: list[bool] = []
        refusal = threading.Thread(target=lambda: answered.append(token.refused("t1")))
        refusal.start()
        refusal.join(timeout=5)
        assert answered == [True], "waited for the fetch under way"
        assert token.expired(), "the next request waits for the fetch rather than send the refused token"
    finally:
        release.set()
        renewal.join()
    assert token.value == "t2" and not token.expired()


def test_an_exec_token_without_expiry_is_kept(tmp_path: Path) -> None:
    user, counter = exec_user(tmp_path, [])
    clock = Clock()
    credentials = Credentials.load(kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", user), clock=clock)
    clock.now = T0 + 10 * 365 * 86400
    assert credentials.renewed_token() == "token-1" and credentials.current_token() == "token-1"
    assert runs(counter) == 1


def test_kopf_logs_in_again_when_the_token_is_due(tmp_path: Path) -> None:
    user, counter = exec_user(tmp_path, [T0 + 3600, T0 + 7200])
    clock = Clock()
    credentials = Credentials.load(kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", user), clock=clock)
    first = handlers.connection_info(credentials)
    assert (first.token, first.expiration) == ("token-1", datetime.datetime.fromtimestamp(T0 + 3240, datetime.UTC))
    clock.now = T0 + 3240
    again = handlers.connection_info(credentials)
    assert (again.token, again.expiration) == ("token-2", datetime.datetime.fromtimestamp(T0 + 7200 - 396, datetime.UTC))
    assert runs(counter) == 2


@pytest.mark.parametrize(
    ("plugin", "fragments"),
    [
        pytest.param("#!/bin/sh\nexit 1\n", ["process returned 1"], id="exits-1"),
        pytest.param(
            "#!/bin/sh\necho 'no route to the\n token server' >&2\nexit 3\n", ["process returned 3", "no route"], id="says-why"
        ),
        pytest.param("#!/bin/sh\necho '{}'\n", ["malformed response"], id="no-exec-credential"),
        pytest.param(None, ["No such file or directory"], id="missing"),
    ],
)
def test_a_failing_exec_plugin_is_a_credentials_error_naming_the_user_and_the_plugin(
    tmp_path: Path, plugin: str | None, fragments: list[str]
) -> None:
    command = tmp_path / "plugin"
    if plugin is not None:
        command.write_text(plugin)
        command.chmod(0o755)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(command)}}
    path = kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", user)
    with pytest.raises(CredentialsError) as raised:
        Credentials.load(path)
    message = str(raised.value)
    assert "\n" not in message
    for fragment in [f"--kubeconfig={path}", 'user "alice"', str(command), *fragments]:
        assert fragment in message


# -- OIDC ---------------------------------------------------------------------


def jwt(expires_at: float, serial: int) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': int(expires_at), 'serial': serial})}.signature"


@pytest.fixture
def issuer(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    """An OIDC issuer on loopback http; its id-tokens expire 4 minutes after they are issued (real time, as the
    client's loader judges them). Yields its URL and the id-tokens it issued."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # oauthlib wants https; the test's issuer is http
    issued: list[str] = []

    class Issuer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.answer({"issuer": url, "token_endpoint": f"{url}/token"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            issued.append(jwt(datetime.datetime.now(datetime.UTC).timestamp() + 240, len(issued) + 1))
            self.answer(
                {"access_token": "a", "token_type": "Bearer", "expires_in": 240, "id_token": issued[-1], "refresh_token": "r"}
            )

        def answer(self, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Issuer)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url, issued
    server.shutdown()
    thread.join()


def test_an_oidc_token_is_renewed_through_its_issuer_before_it_expires(tmp_path: Path, issuer: tuple[str, list[str]]) -> None:
    url, issued = issuer
    real_now = float(int(datetime.datetime.now(datetime.UTC).timestamp()))
    clock = Clock(real_now)
    provider = {
        "name": "oidc",
        "config": {
            "client-id": "nodeipam",
            "client-secret": "s",
            "idp-issuer-url": url,
            "id-token": jwt(real_now + 3600, 0),
            "refresh-token": "r",
        },
    }
    path = kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", {"auth-provider": provider})
    credentials = Credentials.load(path, clock=clock)
    assert credentials.current_token() == provider["config"]["id-token"] and issued == []
    assert credentials.renewing is not None and credentials.renewing.renew_at == real_now + 3600 - 360
    # The loader refreshes an id-token only near its end; so once it is near, on our clock and the loader's:
    provider["config"]["id-token"] = jwt(real_now + 60, 0)
    path = kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", {"auth-provider": provider})
    credentials = Credentials.load(path, clock=clock)
    assert issued == [credentials.current_token()], "expiring within the loader's margin: refreshed at once"
    assert credentials.renewing is not None and credentials.renewing.renew_at is not None
    clock.now = credentials.renewing.renew_at
    assert credentials.renewed_token() == issued[-1] and len(issued) == 2


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Await `condition()` until it is true; fail after `timeout` seconds."""

    async def until() -> None:
        while not await condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(until(), timeout)
