"""Where the API server is and how to authenticate, found as kubectl finds them.

The official Kubernetes client is imported here only, for its kubeconfig
loader: a kubeconfig is read, merged and resolved exactly as kubectl would.
A token that expires (an exec plugin's, an auth provider's) is renewed
before it does. Kept apart from the HTTP client, which is handed the
`Credentials` and asks them for the token of each request.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import datetime
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

#: The API client's logger: a token is renewed for the client's requests, and its log lines say so under its name.
logger = logging.getLogger("nodeipam.kube")

IN_CLUSTER_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


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
        self._fetched_at = clock()  # the last fetch tried
        self._refused = False  # the API server answered 401 to the token at hand

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
        """Past its expiry, or refused by the API server: a request waits for the renewal rather than send it."""
        expires_at = self._token.expires_at
        return self._refused or (expires_at is not None and self._clock() >= expires_at)

    def refused(self, value: str) -> bool:
        """The API server answered 401 to `value` (revoked, or expired before its time). Whether the refused
        request is worth sending again: a newer token is at hand, or one is fetched first (a fetch is under
        way, or none was tried within RENEW_AGAIN_SECONDS, and one is due now).

        Takes no lock: it is called on the event loop, which must not wait for a fetch under way in a thread.
        A race with that fetch costs one fetch more at most.
        """
        if value != self._token.value:
            return True
        if not self.due():
            if self._clock() - self._fetched_at < RENEW_AGAIN_SECONDS:
                return False
            self._renew_at = self._clock()
        if not self._refused:
            logger.warning("%s: the API server refused the token (401); renewing it", self.what)
        self._refused = True  # requests wait for the fetch rather than send it again
        return True

    def renewed(self) -> str:
        """The token, fetched again first if it is due. Blocks while fetching; never raises.

        A failed fetch is logged and the token at hand kept (it may still be
        valid); it is tried again RENEW_AGAIN_SECONDS later.
        """
        with self._lock:
            if not self.due():  # another thread renewed it meanwhile
                return self._token.value
            self._fetched_at = self._clock()
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
            self._refused = False
            self._renew_at = self._next_renewal(token, renewed)
            return token.value

    def take(self, token: Token) -> None:
        """Use `token` from now on: one renewed elsewhere (the metrics port's process gets the controller's)."""
        with self._lock:
            self._token = token
            self._refused = False
            self._renew_at = self._next_renewal(token, renewed=True)

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
