"""The thin I/O layer: every request of the controller to the API goes through it (kopf's watch aside).

It speaks raw JSON over aiohttp (the HTTP library kopf itself uses): model
objects of the official client halve the throughput of a Python controller,
and the event loop, not the API server, is the limit. The official client is
used only to load credentials, exactly as kubectl would find them.
Retries of transient failures and the client-side rate limit live here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import dataclasses
import datetime
import json
import logging
import os
import re
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import msgspec
import netaddr

from controller.model import NodeInfo, labels_of

logger = logging.getLogger("nodeipam.kube")

IN_CLUSTER_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
EVENT_NAMESPACE = "default"  # where events about cluster-scoped Nodes go
COMPONENT = "nodeipam"
LIST_PAGE_SIZE = 500
WATCH_LIST_SINCE = (1, 34)  # the first Kubernetes version whose API server streams a watch's initial listing by default
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_ATTEMPTS = 4
TRANSIENT_BACKOFF = 0.2
RETRY_AFTER_STATUSES = frozenset({429, 503})  # answers whose Retry-After header says how long to wait
RETRY_AFTER_CAP = 30.0  # seconds: never wait longer on the server's word
WATCH_IDLE_TIMEOUT = 90.0  # seconds without a byte (bookmarks come every minute)
#: Every write carries the API server's `timeout` parameter: a write still queued (priority and fairness) or in
#: its handler that long after it arrived fails instead of landing. Well under a lease duration (15 s by
#: default), so that what a leader sent cannot linger for a whole hand-over in the API server.
WRITE_TIMEOUT = 10.0
#: The client gives a write this long beyond the server's bound before it counts the answer as lost.
WRITE_ANSWER_GRACE = 5.0
READ_METHODS = frozenset({"GET", "HEAD"})


#: The NodeCIDRPool collection (cluster-scoped CRD in the chart's crds/).
POOLS_API_VERSION = "nodeipam.io/v1alpha1"
POOLS_PATH = f"/apis/{POOLS_API_VERSION}/nodecidrpools"


class _NodeMetadata(msgspec.Struct, frozen=True):
    name: str = ""
    uid: str = ""
    labels: dict[str, str] = {}  # they choose the pool of a Node without a range


class _NodeSpec(msgspec.Struct, frozen=True):
    podCIDR: str = ""
    podCIDRs: tuple[str, ...] = ()


class _Node(msgspec.Struct, frozen=True):
    """The only fields of a Node this controller reads; msgspec skips the rest (~10 KB) unparsed.

    The one decoder of Nodes: the API's answers and watch events (bytes),
    and kopf's events (already decoded, through `node_of`) all read through it.
    """

    metadata: _NodeMetadata = _NodeMetadata()
    spec: _NodeSpec = _NodeSpec()

    def info(self) -> NodeInfo:
        spec = self.spec
        return NodeInfo(
            name=self.metadata.name,
            uid=self.metadata.uid,
            pod_cidrs=spec.podCIDRs or ((spec.podCIDR,) if spec.podCIDR else ()),
            pod_cidr=spec.podCIDR,
            labels=labels_of(self.metadata.labels),
        )


class _ListMetadata(msgspec.Struct, frozen=True):
    resourceVersion: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class _NodeList(msgspec.Struct, frozen=True):
    metadata: _ListMetadata = _ListMetadata()
    items: tuple[_Node, ...] = ()


class _WatchEvent(msgspec.Struct, frozen=True):
    type: str = ""
    object: _Node = _Node()


_decode_node = msgspec.json.Decoder(_Node).decode
_decode_node_list = msgspec.json.Decoder(_NodeList).decode
_decode_watch_event = msgspec.json.Decoder(_WatchEvent).decode


def node_of(body: Mapping[str, Any]) -> NodeInfo:
    """A Node already decoded into dicts and lists (a kopf event's body), read as the API's bytes are."""
    return msgspec.convert(body, _Node).info()


class ApiError(Exception):
    """A request the API server answered with an error status (or could not answer)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def may_have_applied(self) -> bool:
        """Whether a write that ended in this error may have been applied all the same.

        A lost answer (status 0: connection cut, timeout) or a server error
        (5xx: the request may have been processed before the failure) leaves
        the outcome unknown. Any other 4xx, 429 included, is a refusal: the
        API server applied nothing.
        """
        return self.status == 0 or self.status >= 500


class FencedError(ApiError):
    """A write not sent because the fence said no (this process no longer leads): nothing of it was applied."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__(0, "Fenced", f"{method} {path}: not sent: this process may no longer write")

    @property
    def may_have_applied(self) -> bool:
        return False


class CredentialsError(Exception):
    """No usable credentials; the message says which source, what is wrong and how to fix it, on one line."""


DEFAULT_KUBECONFIG = "~/.kube/config"

#: A token that expires is renewed once less than this share of its lifetime is left, or RENEW_BEFORE_SECONDS,
#: whichever is more (but never in the first half of its life): no request goes out with a token about to expire.
RENEW_SHARE = 0.1
RENEW_BEFORE_SECONDS = 60.0
#: A renewal that failed, or gave back the same token (an auth provider renews only near the end), is tried again
#: this much later, or at the token's expiry if that comes first.
RENEW_AGAIN_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class Token:
    """A bearer token, and when it expires (seconds since the epoch; None: it does not)."""

    value: str
    expires_at: float | None = None


class RenewingToken:
    """A bearer token from a kubeconfig's exec plugin or auth provider, fetched again before it expires.

    Fetching runs a process or calls an identity provider, so `renewed()`
    blocks: on an event loop, call it in a thread. It is shared by threads
    (the Lease client runs a loop of its own; kopf logs in from its executor),
    so fetches are serialised, and a token renewed by one is used by all.
    """

    def __init__(
        self, fetch: Callable[[], Token], what: str, first: Token | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        """`fetch` raises CredentialsError when it cannot; `what` names the source in log lines; `first`: the
        token already fetched (else fetched now); `clock`: seconds since the epoch, as expiry times are."""
        self._fetch = fetch
        self.what = what
        self._clock = clock
        self._lock = threading.Lock()
        self._token = first if first is not None else fetch()
        self._renew_at = self._next_renewal(self._token, renewed=True)

    @property
    def value(self) -> str:
        return self._token.value

    @property
    def renew_at(self) -> float | None:
        """When the token is due for renewal (seconds since the epoch); None: never."""
        return self._renew_at

    def due(self) -> bool:
        return self._renew_at is not None and self._clock() >= self._renew_at

    def expired(self) -> bool:
        expires_at = self._token.expires_at
        return expires_at is not None and self._clock() >= expires_at

    def renewed(self) -> str:
        """The token, fetched again first if it is due. Blocks while fetching; never raises.

        A failed fetch is logged and the token at hand kept (it may still be
        valid); it is tried again RENEW_AGAIN_SECONDS later.
        """
        with self._lock:
            if not self.due():  # another thread renewed it meanwhile
                return self._token.value
            try:
                token = self._fetch()
            # Whatever a plugin or an identity provider does, the client goes on with the token it has.
            except Exception as error:
                left = "it has expired" if self.expired() else "it is still used"
                logger.warning("%s: could not renew the token (%s); %s", self.what, _one_line(error), left)
                self._renew_at = self._next_renewal(self._token, renewed=False)
                return self._token.value
            renewed = token.value != self._token.value
            if renewed:
                logger.info("%s: token renewed", self.what)
            self._token = token
            self._renew_at = self._next_renewal(token, renewed)
            return token.value

    def _next_renewal(self, token: Token, renewed: bool) -> float | None:
        if token.expires_at is None:
            return None
        now = self._clock()
        lifetime = token.expires_at - now
        if renewed and lifetime > 0:
            return token.expires_at - min(max(lifetime * RENEW_SHARE, RENEW_BEFORE_SECONDS), lifetime / 2)
        again = now + RENEW_AGAIN_SECONDS
        return min(again, token.expires_at) if lifetime > 0 else again


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate, loaded once at start-up.

    A token from an exec plugin or an auth provider is `renewing`: renewed before it expires.
    """

    server: str
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    renewing: RenewingToken | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def load(
        cls,
        kubeconfig: str | None = None,
        master: str | None = None,
        *,
        context: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Credentials:
        """`--kubeconfig`, else in-cluster, else $KUBECONFIG / ~/.kube/config; `--master` overrides the server.

        `--context` picks a kubeconfig context other than the current one, as
        kubectl's does; given, the in-cluster service account is not used.
        With `--master` and no kubeconfig anywhere, the API server is called
        without credentials, as kube-controller-manager does. Raises
        CredentialsError for anything missing or unreadable, a failing exec
        plugin included. `clock` tells renewing tokens the time (tests pass their own).
        """
        from kubernetes import client, config  # the official client only loads credentials

        configuration = client.Configuration()
        token_file = None
        renewing = None
        source: str | None
        if kubeconfig:
            source = f"--kubeconfig={kubeconfig}"
            if not os.path.exists(os.path.expanduser(kubeconfig)):
                raise CredentialsError(f"{source}: no such file; pass the path of a kubeconfig file, e.g. {DEFAULT_KUBECONFIG}")
            renewing = _load_kubeconfig(configuration, os.path.expanduser(kubeconfig), source, clock, context)
        else:
            try:
                if context:
                    raise config.ConfigException(f"--context={context} names a kubeconfig context")
                config.load_incluster_config(client_configuration=configuration)
                token_file = IN_CLUSTER_TOKEN_FILE
                source = "the in-cluster service account"
            except config.ConfigException as not_in_cluster:
                found = _default_kubeconfig(master, str(not_in_cluster))
                source = found[1] if found else None
                if found:
                    renewing = _load_kubeconfig(configuration, *found, clock, context)
        token = renewing.value if renewing is not None else _bearer_token(configuration)
        server = master or (configuration.host if source else "")  # a blank Configuration says http://localhost
        if not server:
            raise CredentialsError(
                f"{source}: the current context's cluster has no server; set clusters[].cluster.server or pass --master=URL"
            )
        if "://" not in server:
            server = "https://" + server
        credentials = cls(
            server=server.rstrip("/"),
            token=token,
            token_file=token_file,
            ca_file=configuration.ssl_ca_cert,
            cert_file=configuration.cert_file,
            key_file=configuration.key_file,
            insecure=not configuration.verify_ssl,
            renewing=renewing,
        )
        try:
            credentials.ssl_context()  # fail now, not at the first request, on unreadable TLS files
        except (OSError, ssl.SSLError, ValueError) as error:
            named = (("certificate authority", credentials.ca_file), ("client certificate", credentials.cert_file))
            files = ", ".join(f"{label} {path}" for label, path in named if path)
            raise CredentialsError(
                f"{source}: cannot use its TLS files ({files}): {_one_line(error)}; fix the paths or the *-data fields"
            ) from None
        return credentials

    def current_token(self) -> str | None:
        """The bearer token; in-cluster tokens are rotated on disk, so re-read them. No renewal here: see `renewed_token`."""
        if self.renewing is not None:
            return self.renewing.value
        if self.token_file:
            try:
                with open(self.token_file) as handle:
                    return handle.read().strip()
            except OSError:
                return self.token
        return self.token

    def renewed_token(self) -> str | None:
        """The bearer token, renewed first if it is due: may block on an exec plugin, so never call it on an event loop."""
        return self.renewing.renewed() if self.renewing is not None else self.current_token()

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _default_kubeconfig(master: str | None, not_in_cluster: str) -> tuple[str, str] | None:
    """(path(s), how to name them) of the kubeconfig kubectl would use, or None for --master alone.

    That is $KUBECONFIG (kubectl merges the files it lists, skipping missing
    ones), else ~/.kube/config.
    """
    listed = os.environ.get("KUBECONFIG", "")
    paths = [os.path.expanduser(path) for path in listed.split(os.pathsep) if path] or [os.path.expanduser(DEFAULT_KUBECONFIG)]
    existing = [path for path in paths if os.path.exists(path)]
    if existing:
        return os.pathsep.join(existing), f"$KUBECONFIG={listed}" if listed else DEFAULT_KUBECONFIG
    if master:
        return None
    where = f"$KUBECONFIG={listed} names no existing file"
    if not listed:
        where = f"$KUBECONFIG is unset and {DEFAULT_KUBECONFIG} does not exist"
    raise CredentialsError(
        f"no kubeconfig found: not in a cluster ({not_in_cluster.rstrip('.')}) and {where};"
        " pass --kubeconfig=PATH, set $KUBECONFIG, or run in a Pod with a service account"
    )


def _load_kubeconfig(
    configuration: Any, path: str, source: str, clock: Callable[[], float] = time.time, context_name: str | None = None
) -> RenewingToken | None:
    """Load a kubeconfig into `configuration`, turning the loader's many failures into one CredentialsError.

    `context_name`: the context to use (--context), else the current one.

    Returns a renewing token when the user's token comes from an exec plugin
    or an auth provider (oidc, gcp), else None. The exec plugin is run here,
    not by the client's loader, which only logs its failure and goes on
    without credentials.
    """
    import yaml
    from kubernetes import config
    from kubernetes.config import kube_config

    try:
        for one_path in path.split(os.pathsep):
            with open(one_path) as handle:
                document = yaml.safe_load(handle)
            if document is not None and not isinstance(document, dict):
                raise CredentialsError(
                    f"{source}: not a kubeconfig (the top level of {one_path} is a {type(document).__name__}, not a mapping);"
                    " expected a Config with clusters, users, contexts and current-context"
                )
        # What config.load_kube_config does, keeping the loader: it renews an auth provider's token.
        merged = kube_config.KubeConfigMerger(path)
        if merged.config is None:
            raise config.ConfigException("no configuration found")
        if context_name is not None:
            contexts = merged.config.safe_get("contexts") or []
            names = [str(getattr(entry, "value", entry).get("name")) for entry in contexts]  # merged entries are ConfigNodes
            if context_name not in names:
                raise CredentialsError(
                    f"{source}: has no context {context_name!r} (it has: {', '.join(names) or 'none'});"
                    " pass one of those to --context, or drop it for the current context"
                )
        loader = kube_config.KubeConfigLoader(
            merged.config, active_context=context_name, config_base_path=None, config_persister=merged.save_changes
        )
        context = loader.current_context["context"]
        user_name = str(context.get("user") or "")
        user = merged.config["users"].get_with_name(user_name, safe=True) if user_name and "users" in merged.config else None
        user = user["user"] if user is not None and "user" in user else None
        if user is not None and _token_comes_from_exec(user.value):
            cluster = merged.config["clusters"].get_with_name(context["cluster"])["cluster"]
            plugin = _ExecPlugin(user["exec"], cluster, f'{source}: user "{user_name}"')
            # The loader gets the rest of the kubeconfig (cluster, TLS files) from a copy without the plugin.
            copied = copy.deepcopy(merged.config)
            copied["users"].get_with_name(user_name)["user"].value.pop("exec")
            kube_config.KubeConfigLoader(copied, active_context=context_name, config_base_path=None).load_and_set(configuration)
            return plugin.start(configuration, clock)
        loader.load_and_set(configuration)
        provider = user.value.get("auth-provider") if user is not None else None
        token = _bearer_token(configuration)
        if isinstance(provider, dict) and provider.get("name") in ("oidc", "gcp") and token:
            return _auth_provider_token(loader, token, f'{source}: user "{user_name}" (auth provider {provider["name"]})', clock)
        return None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or _one_line(error)
        raise CredentialsError(f"{source}: not valid YAML{where} ({problem}); fix the file or use another") from None
    except config.ConfigException as error:
        raise CredentialsError(f"{source}: not a usable kubeconfig ({_one_line(error)}); fix the file or use another") from None
    except OSError as error:
        raise CredentialsError(f"{source}: cannot read it ({error.strerror or error}); pass a readable kubeconfig file") from None
    except binascii.Error as error:
        raise CredentialsError(f"{source}: a *-data field is not valid base64 ({error}); fix the field") from None
    # The loader assumes a well-formed document: any other shape surfaces as one of these.
    except (TypeError, AttributeError, KeyError, ValueError) as error:
        raise CredentialsError(
            f"{source}: not a usable kubeconfig ({type(error).__name__}: {_one_line(error)}); expected a Config with"
            " clusters, users, contexts and current-context"
        ) from None


def _token_comes_from_exec(user: Mapping[str, Any]) -> bool:
    """Whether the client's loader would take this user's credentials from its exec plugin: it tries an auth
    provider and a token first."""
    return bool(user.get("exec")) and not (user.get("auth-provider") or user.get("token") or user.get("tokenFile"))


def _bearer_token(configuration: Any) -> str | None:
    """The token the client's loader put into `configuration`, without its "Bearer " prefix."""
    api_key = configuration.api_key or {}
    authorization = str(api_key.get("BearerToken") or api_key.get("authorization") or "")
    return authorization.split(" ", 1)[1] if authorization.lower().startswith("bearer ") else authorization or None


class _ExecPlugin:
    """A kubeconfig user's exec plugin (client.authentication.k8s.io ExecCredential), run as kubectl runs it."""

    def __init__(self, exec_config: Any, cluster: Any, what: str) -> None:
        """`exec_config`, `cluster`: the kubeconfig's nodes as the client's loader reads them."""
        from kubernetes.config.exec_provider import ExecProvider

        self.what = what
        self.command = str(exec_config.safe_get("command") or "")
        base_path = os.path.abspath(os.path.dirname(cluster.path)) if cluster.path else ""
        self._base_path = base_path
        self._provider = ExecProvider(exec_config, base_path, cluster)

    def run(self) -> dict[str, Any]:
        """The plugin's ExecCredential status; raises CredentialsError naming the plugin and the fix."""
        from kubernetes.config import ConfigException

        try:
            status = self._provider.run()
        except (ConfigException, OSError, ValueError) as error:
            raise CredentialsError(
                f"{self.what}: its exec plugin failed ({_one_line(error)}); run {self.command} by hand to see why and fix it,"
                " or use another user"
            ) from None
        if not isinstance(status, dict):
            raise CredentialsError(f"{self.what}: its exec plugin {self.command} gave no ExecCredential status; fix the plugin")
        return status

    def token(self) -> Token:
        return self._token_of(self.run())

    def start(self, configuration: Any, clock: Callable[[], float]) -> RenewingToken | None:
        """Run the plugin once: its token, renewing; or its client certificate into `configuration` (used as it is)."""
        from kubernetes.config import kube_config

        status = self.run()
        if status.get("token"):
            return RenewingToken(self.token, f"{self.what}: exec plugin {self.command}", self._token_of(status), clock)
        if status.get("clientCertificateData") and status.get("clientKeyData"):
            for attribute, key in (("cert_file", "clientCertificateData"), ("key_file", "clientKeyData")):
                written = kube_config.FileOrData(
                    status, None, data_key_name=key, file_base_path=self._base_path, base64_file_content=False
                ).as_file()
                setattr(configuration, attribute, written)
            return None
        raise CredentialsError(
            f"{self.what}: its exec plugin {self.command} gave neither a token nor a client certificate and key; fix the plugin"
        )

    def _token_of(self, status: Mapping[str, Any]) -> Token:
        value = status.get("token")
        if not isinstance(value, str) or not value:
            raise CredentialsError(f"{self.what}: its exec plugin {self.command} gave no token; fix the plugin")
        expires = status.get("expirationTimestamp")
        if not expires:
            return Token(value)
        try:
            expires_at = datetime.datetime.fromisoformat(str(expires))
        except ValueError:
            raise CredentialsError(
                f"{self.what}: its exec plugin {self.command} gave an expirationTimestamp that is not an RFC 3339 time"
                f" ({expires!r}); fix the plugin"
            ) from None
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=datetime.UTC)
        return Token(value, expires_at.timestamp())


def _auth_provider_token(loader: Any, token: str, what: str, clock: Callable[[], float]) -> RenewingToken:
    """An auth provider's token, renewed by the client's loader (which refreshes it near its expiry)."""
    from kubernetes import client

    def expiry(value: str) -> float | None:
        given = getattr(loader, "expiry", None)  # gcp says when; an OIDC id-token is a JWT that says so itself
        return given.timestamp() if isinstance(given, datetime.datetime) else _jwt_expiry(value)

    def fetch() -> Token:
        configuration = client.Configuration()
        loader.load_and_set(configuration)
        value = _bearer_token(configuration)
        if not value:
            raise CredentialsError(f"{what}: gave no token")
        return Token(value, expiry(value))

    return RenewingToken(fetch, what, Token(token, expiry(token)), clock)


def _jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (seconds since the epoch); None for a token that is no JWT or has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    expires = claims.get("exp") if isinstance(claims, dict) else None
    return float(expires) if isinstance(expires, int | float) and not isinstance(expires, bool) else None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class RateLimiter:
    """A token bucket: `qps` requests per second on average, `burst` at once. qps <= 0: unlimited."""

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.qps = qps
        self.burst = max(burst, 1)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.qps <= 0:
            return
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.qps)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self.qps)


def api_timestamp() -> str:
    """Now, as the API writes a time to the second (RFC 3339, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeClient:
    """Nodes, NodeCIDRPools, Events and Leases over one pooled aiohttp session."""

    def __init__(
        self,
        credentials: Credentials,
        qps: float = 0.0,
        burst: int = 0,
        max_in_flight: int = 64,
        *,
        transient_attempts: int = TRANSIENT_ATTEMPTS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        """`transient_attempts`: tries per request before a transient failure is raised (1: no retries).

        `sleep` waits between those tries; tests pass one that only records.
        `may_write`: the leadership fence, asked before every attempt of every
        write (retries included); once it says no, nothing more is sent.
        """
        self.credentials = credentials
        self._limiter = RateLimiter(qps, burst)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._attempts = max(transient_attempts, 1)
        self._sleep = sleep
        self._may_write = may_write
        self._session: aiohttp.ClientSession | None = None
        self._renewal: asyncio.Future[str] | None = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()  # its thread finishes on its own; the next client finds the token renewed
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_in_flight, ssl=self.credentials.ssl_context())
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=60, connect=10),
                json_serialize=json.dumps,
            )
        return self._session

    async def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = await self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _token(self) -> str | None:
        """The bearer token; one due for renewal is renewed in a thread (an exec plugin is a process to wait for).

        Requests go on with the token at hand while it is renewed ahead of its
        expiry; only an expired one makes them wait for the renewal.
        """
        renewing = self.credentials.renewing
        if renewing is None or not renewing.due():
            return self.credentials.current_token()
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.ensure_future(asyncio.to_thread(renewing.renewed))
        if renewing.expired():
            return await asyncio.shield(self._renewal)  # a request cancelled meanwhile leaves it to the others
        return renewing.value

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        decode: bool = True,
    ) -> Any:
        """One API call, its response parsed as JSON (`decode=False`: not parsed, None)."""
        payload = await self.request_bytes(method, path, body=body, content_type=content_type, params=params)
        return json.loads(payload) if payload and decode else None

    async def request_bytes(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> bytes:
        """One API call with retries of transient failures; raises ApiError otherwise.

        A write carries the API server's `timeout` (WRITE_TIMEOUT), and the
        fence is asked before each of its attempts: after a transient failure
        that may have applied, a fenced retry raises that failure (the outcome
        stays unknown); before the first attempt, FencedError (nothing sent).
        """
        headers = await self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        url = self.credentials.server + path
        write = method not in READ_METHODS
        timeout = None
        if write:
            params = {**(params or {}), "timeout": f"{WRITE_TIMEOUT:g}s"}
            timeout = aiohttp.ClientTimeout(total=WRITE_TIMEOUT + WRITE_ANSWER_GRACE, connect=10)
        failed: ApiError | None = None
        for attempt in range(1, self._attempts + 1):
            await self._limiter.acquire()
            if write and self._may_write is not None and not self._may_write():
                raise failed or FencedError(method, path)
            backoff = TRANSIENT_BACKOFF * 2 ** (attempt - 1)
            try:
                session = self._get_session()
                async with (
                    self._in_flight,
                    session.request(method, url, data=data, headers=headers, params=params, timeout=timeout) as response,
                ):
                    payload = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as error:
                failed = ApiError(0, "ConnectionError", f"{method} {path}: {error!r}")
                if attempt == self._attempts:
                    raise failed from error
                await self._sleep(backoff)
                continue
            if status < 400:
                return payload
            if status in TRANSIENT_STATUSES and attempt < self._attempts:
                if status in RETRY_AFTER_STATUSES:
                    backoff = _retry_after_seconds(retry_after, backoff)
                failed = _api_error(status, payload) if failed is None or not failed.may_have_applied else failed
                await self._sleep(backoff)
                continue
            answered = _api_error(status, payload)
            if failed is not None and failed.may_have_applied and not answered.may_have_applied:
                # A refusal of a retry says nothing about an earlier attempt whose answer was lost.
                raise failed
            raise answered
        raise AssertionError("unreachable")

    # -- Nodes ---------------------------------------------------------------

    async def list_nodes(self, page_size: int = LIST_PAGE_SIZE, from_cache: bool = False) -> tuple[list[NodeInfo], str]:
        """All Nodes, in pages, keeping only what the allocator needs; and the list's resourceVersion.

        `from_cache`: first a one-item read for the current resourceVersion,
        then the LIST with `resourceVersionMatch=NotOlderThan` it: the API
        server answers from its watch cache instead of etcd, and the answer
        still shows every change made before the call (a deletion missed in a
        watch gap included), as a quorum read would.

        Pages are decoded by msgspec into the few fields read, skipping the
        rest of each ~10 KB Node: on 20,000 realistic Nodes the stdlib's
        json.loads took 1-5 s (object churn and GC), this takes ~0.1 s. The
        next page is requested before this one is decoded (its continue token
        sits in the first bytes), so serving and decoding overlap.
        """
        nodes: list[NodeInfo] = []
        version = await self.nodes_version() if from_cache else ""
        fetch = self._fetch_page(None, page_size, version)
        while True:
            raw = await fetch
            peeked = _peek_continue(raw)
            if peeked:
                fetch = self._fetch_page(peeked, page_size)
            page = _decode_node_list(raw)
            nodes.extend(item.info() for item in page.items)
            token = page.metadata.continue_ or None
            if token != peeked:  # the peek misread the page: trust the parsed token
                if peeked:
                    fetch.cancel()
                if token:
                    fetch = self._fetch_page(token, page_size)
            if not token:
                return nodes, page.metadata.resourceVersion

    async def streams_initial_events(self) -> bool:
        """Whether the API server streams a watch's initial listing (`sendInitialEvents`; WatchList, on since 1.34).

        Asked of `/version`; an answer that cannot be read counts as no, which keeps the paged LIST.
        """
        try:
            version = await self.request("GET", "/version")
            major, minor = int(str(version.get("major", "0"))), int(re.sub(r"\D.*", "", str(version.get("minor", "0"))) or 0)
        except (ApiError, ValueError) as error:
            logger.info("the API server's version is unknown (%s): the watch starts with a paged LIST", error)
            return False
        return (major, minor) >= WATCH_LIST_SINCE

    async def nodes_version(self) -> str:
        """The Node collection's current resourceVersion, from a quorum read of one item."""
        listed = await self.request("GET", "/api/v1/nodes", params={"limit": "1"})
        return str((listed.get("metadata") or {}).get("resourceVersion", ""))

    def _fetch_page(self, token: str | None, page_size: int, not_older_than: str = "") -> asyncio.Future[bytes]:
        params = {"limit": str(page_size)}
        if token:
            params["continue"] = token
        elif not_older_than:
            params["resourceVersion"] = not_older_than
            params["resourceVersionMatch"] = "NotOlderThan"
        return asyncio.ensure_future(self.request_bytes("GET", "/api/v1/nodes", params=params))

    async def watch_nodes(self, resource_version: str) -> AsyncIterator[tuple[str, NodeInfo]]:
        """(event type, Node) from a watch starting at `resource_version`; ends when the server ends it."""
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true"}
        headers = await self._headers()
        timeout = aiohttp.ClientTimeout(total=None, sock_read=WATCH_IDLE_TIMEOUT)
        url = self.credentials.server + "/api/v1/nodes"
        try:
            async with self._get_session().get(url, params=params, headers=headers, timeout=timeout) as response:
                if response.status >= 400:
                    raise _api_error(response.status, await response.read())
                pending = b""
                async for chunk in response.content.iter_any():  # lines can exceed aiohttp's line limit
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        event = _decode_watch_event(line)
                        if event.type in ("ADDED", "MODIFIED", "DELETED"):
                            yield event.type, event.object.info()
                        elif event.type == "ERROR":
                            return  # e.g. 410 Gone: the resync covers what follows
        except (aiohttp.ClientError, ConnectionError) as error:
            raise ApiError(0, "ConnectionError", f"watch of nodes: {error!r}") from error

    async def get_node(self, name: str) -> NodeInfo | None:
        try:
            return _decode_node(await self.request_bytes("GET", f"/api/v1/nodes/{name}")).info()
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list_pools(self) -> list[dict[str, Any]] | None:
        """Every NodeCIDRPool as the API returns it; None when the CRD is not installed (404)."""
        try:
            listed = await self.request("GET", POOLS_PATH)
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return list(listed.get("items") or [])

    async def patch_pod_cidrs(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> None:
        """Set spec.podCIDR(s) in one merge patch, only on the Node with this UID.

        The answer is not decoded: the caller needs only to know the patch applied (its watch event follows).
        """
        values = [str(cidr) for cidr in cidrs]
        patch = {"metadata": {"uid": node.uid}, "spec": {"podCIDR": values[0], "podCIDRs": values}}
        await self.request_bytes("PATCH", f"/api/v1/nodes/{node.name}", body=patch, content_type="application/merge-patch+json")

    # -- Events --------------------------------------------------------------

    async def post_node_event(self, node: NodeInfo, event_type: str, reason: str, message: str) -> bool:
        """A core/v1 Event about a Node, where `kubectl describe node` finds it. Never raises."""
        involved = {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node.uid or node.name}
        return await self._post_event(involved, event_type, reason, message)

    async def post_pool_event(self, name: str, uid: str, event_type: str, reason: str, message: str) -> bool:
        """A core/v1 Event about a NodeCIDRPool, where `kubectl describe nodecidrpool` finds it. Never raises."""
        involved = {"apiVersion": POOLS_API_VERSION, "kind": "NodeCIDRPool", "name": name, "uid": uid or name}
        return await self._post_event(involved, event_type, reason, message)

    async def _post_event(self, involved: Mapping[str, str], event_type: str, reason: str, message: str) -> bool:
        now = api_timestamp()
        event = {
            "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:16]}", "namespace": EVENT_NAMESPACE},
            "involvedObject": dict(involved),
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.request("POST", f"/api/v1/namespaces/{EVENT_NAMESPACE}/events", body=event)
        except ApiError as error:
            kind = involved["kind"].lower()
            logger.warning("could not post %s event %s for %s %s: %s", event_type, reason, kind, involved["name"], error)
            return False
        return True

    # -- NodeCIDRPools ----------------------------------------------------------

    async def patch_pool_status(self, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch a NodeCIDRPool's status subresource."""
        await self.request(
            "PATCH",
            f"{POOLS_PATH}/{name}/status",
            body={"status": status},
            content_type="application/merge-patch+json",
            decode=False,
        )

    async def set_pool_finalizers(self, name: str, finalizers: Sequence[str], resource_version: str) -> dict[str, Any]:
        """Set a NodeCIDRPool's finalizers, only if it is still at `resource_version` (else 409)."""
        patch = {"metadata": {"finalizers": list(finalizers), "resourceVersion": resource_version}}
        patched: dict[str, Any] = await self.request(
            "PATCH", f"{POOLS_PATH}/{name}", body=patch, content_type="application/merge-patch+json"
        )
        return patched

    # -- Leases --------------------------------------------------------------

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = await self.request(
                "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
            )
            return lease
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self.request(
            "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body=lease
        )
        return created

    async def replace_lease(self, namespace: str, name: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        replaced: dict[str, Any] = await self.request(
            "PUT", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", body=lease
        )
        return replaced


def lease_time() -> str:
    """MicroTime as Leases want it."""
    return _now_micro()


def _api_error(status: int, payload: bytes) -> ApiError:
    try:
        status_body = json.loads(payload)
        return ApiError(status, str(status_body.get("reason", "")), str(status_body.get("message", "")))
    except (ValueError, AttributeError):
        return ApiError(status, "", payload[:500].decode(errors="replace"))


def _retry_after_seconds(header: str | None, otherwise: float) -> float:
    """The wait a Retry-After header asks for (whole seconds, as the API server sends it), capped; else `otherwise`."""
    if header is None:
        return otherwise
    try:
        seconds = float(header.strip())
    except ValueError:  # an HTTP date: the API server never sends one
        return otherwise
    if not 0 <= seconds < float("inf"):
        return otherwise
    return min(seconds, RETRY_AFTER_CAP)


_CONTINUE = re.compile(rb'"continue":"([^"]+)"')
_PEEK_BYTES = 4096  # a List's metadata comes before its items


def _peek_continue(raw: bytes) -> str | None:
    """The continue token of a List response, read without parsing its items."""
    head = raw[:_PEEK_BYTES]
    items_at = head.find(b'"items"')
    match = _CONTINUE.search(head, 0, items_at if items_at >= 0 else len(head))
    return match.group(1).decode() if match else None
