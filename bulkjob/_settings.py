"""Run settings: one frozen, keyword-only dataclass, validated at construction.

Every knob of a run lives here, with its default as a named constant. The TOML
file, ``BULKJOB_*`` / ``INSIDEVIEW_*`` environment variables and CLI flags are all
mapped onto these same fields by :mod:`bulkjob._config` (through :meth:`Settings.load`);
nothing else reads them. :class:`SettingsValues` spells the fields out once more as a
``TypedDict``, so that ``**values`` keywords are typed for mypy and IDEs; a test keeps
the two in step.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import string
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict, Unpack

from ._errors import ConfigError
from ._kinds import KINDS, JobKind
from ._logging import register_secret

__all__ = ["Settings", "SettingsValues"]

DEFAULT_BASE_URL = "https://api.insideview.com/api/v1"
DEFAULT_TOKEN_URL = "https://login.insideview.com/Auth/login/v1/token.json"
#: No proxy of our own: HTTP_PROXY / HTTPS_PROXY / NO_PROXY from the environment apply.
DEFAULT_PROXY: str | None = None
#: Where the account's throttle window lives: "local" (a SQLite file per account in the
#: state directory, shared by this user's processes), "memory" (this process only), or a
#: redis:// / rediss:// URL (shared across hosts).
DEFAULT_THROTTLE_STORE = "local"
#: What a redis:// throttle store needs, and how to get it.
REDIS_MISSING = (
    "throttle_store: a redis:// store needs the redis package: pip install 'bulkjob[redis]'"
)
#: How long a Redis slot lease lasts unless its live holder renews it.
DEFAULT_SLOT_LEASE = 30.0
#: The documented form of a new contact id: 64 characters of [A-Za-z0-9_-].
DEFAULT_ID_LENGTH = 64
DEFAULT_ID_ALPHABET = string.ascii_letters + string.digits + "_-"
DEFAULT_ID_PATTERN = r"[A-Za-z0-9_-]{64}"
#: The documented per-job maximum of the submit endpoint.
MAX_CHUNK_SIZE = 10_000
#: Public client code used 1000 requests per 5 minutes; the real figure is per licence.
DEFAULT_MAX_REQUESTS = 1000
DEFAULT_PER_SECONDS = 300.0
#: Extra spacing added to every window, as a fraction of it, so that network jitter
#: between our clock and the server's can never squeeze N+1 requests into one window.
DEFAULT_WINDOW_MARGIN = 0.01
DEFAULT_CONCURRENCY = 8
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 120.0
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_RETRY_MAX_TIME = 900.0
DEFAULT_BACKOFF_INITIAL = 1.0
DEFAULT_BACKOFF_MAX = 60.0
DEFAULT_THROTTLE_INITIAL_DELAY = 5.0
DEFAULT_MAX_THROTTLED = 20
DEFAULT_TOKEN_REFRESH_MARGIN = 300.0
DEFAULT_DRAIN_TIMEOUT = 60.0
#: How far the server's job creation times may be from ours when reconciling.
DEFAULT_RECONCILE_SKEW = 60.0
#: After a submit's outcome became unknown, how long "no such job" is not yet believed:
#: the account's job list may lag behind a submit, as /admin/usage is documented to.
DEFAULT_RECONCILE_GRACE = 120.0
#: How often the jobs that may hold an unknown submit are looked at while they run
#: (the first look; later ones back off up to ten times that).
DEFAULT_PROOF_POLL = 30.0
#: The longest pause a server's Retry-After can impose (a lockout may outlast a window).
DEFAULT_RETRY_AFTER_MAX = 3600.0
DEFAULT_QUEUE_POLL = 30.0
#: Seconds between two ``run.progress`` log lines (the sign of life off a terminal).
DEFAULT_PROGRESS_INTERVAL = 30.0
#: Where ``metrics_port`` serves /metrics: this machine only, unless asked otherwise.
DEFAULT_METRICS_HOST = "127.0.0.1"
# The real 400 texts for these two cases are not public: these patterns match the one
# text seen publicly ("2 jobs are already running...") and the obvious wordings.
# They are searched (case-insensitively) in "errorNumber message" of a 400 answer.
DEFAULT_QUOTA_PATTERNS = (
    r"quota",
    r"(insufficient|not enough)\s+(transaction|credit)",
    r"credits?\b.*\b(exceed|exhaust|insufficient)",
)
# "Too many job submitted to the processing queue" is the documented cause's wording.
DEFAULT_QUEUE_FULL_PATTERNS = (
    r"already running",
    r"too many jobs?\b",
    r"processing queue",
    r"queue (is )?full",
)

Accept = Literal["json", "xml"]
LogFormat = Literal["console", "json"]
QueueFullPolicy = Literal["stop", "wait"]
Pacing = Literal["burst", "even"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything that shapes a run. Secrets are excluded from ``repr`` and :meth:`public`."""

    base_url: str = DEFAULT_BASE_URL
    token_url: str = DEFAULT_TOKEN_URL
    access_token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    token_refresh_margin: float = DEFAULT_TOKEN_REFRESH_MARGIN
    #: An http(s) proxy URL for every request (API, token, results), ahead of the
    #: environment's. Its credentials (``http://user:pass@host:port``) are a secret.
    proxy: str | None = field(default=DEFAULT_PROXY, repr=False)

    kind: str = "new-contact-details"
    max_requests: int = DEFAULT_MAX_REQUESTS
    per_seconds: float = DEFAULT_PER_SECONDS
    window_margin: float = DEFAULT_WINDOW_MARGIN
    concurrency: int = DEFAULT_CONCURRENCY
    chunk_size: int = MAX_CHUNK_SIZE

    accept: Accept = "json"
    retrieve_company_details: bool = False
    webhook: str | None = None

    column: str | None = None
    id_pattern: str = DEFAULT_ID_PATTERN
    dedupe: bool = False
    strict: bool = False

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_max_time: float = DEFAULT_RETRY_MAX_TIME
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    throttle_initial_delay: float = DEFAULT_THROTTLE_INITIAL_DELAY
    retry_after_max: float = DEFAULT_RETRY_AFTER_MAX
    max_throttled: int = DEFAULT_MAX_THROTTLED
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    reconcile_skew: float = DEFAULT_RECONCILE_SKEW
    reconcile_grace: float = DEFAULT_RECONCILE_GRACE
    proof_poll_interval: float = DEFAULT_PROOF_POLL
    results_id_column: str | None = None
    on_queue_full: QueueFullPolicy = "wait"
    max_running_jobs: int | None = None
    pacing: Pacing = "burst"
    webhook_listen: str | None = None
    queue_poll_interval: float = DEFAULT_QUEUE_POLL
    require_quota: bool = False

    quota_patterns: tuple[str, ...] = DEFAULT_QUOTA_PATTERNS
    queue_full_patterns: tuple[str, ...] = DEFAULT_QUEUE_FULL_PATTERNS
    quota_error_numbers: tuple[str, ...] = ()
    queue_full_error_numbers: tuple[str, ...] = ()

    throttle_store: str = field(default=DEFAULT_THROTTLE_STORE, repr=False)
    state_dir: str | None = None
    account: str | None = None
    slot_lease: float = DEFAULT_SLOT_LEASE

    log_format: LogFormat = "console"
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    #: Serve Prometheus metrics on this port for the run's duration (0: any free port);
    #: needs ``pip install 'bulkjob[metrics]'``.
    metrics_port: int | None = None
    metrics_host: str = DEFAULT_METRICS_HOST

    def __post_init__(self) -> None:
        self._check_types()
        _url("base_url", self.base_url)
        _url("token_url", self.token_url)
        if self.webhook is not None:
            _url("webhook", self.webhook)
        if self.proxy is not None:
            _proxy_url("proxy", self.proxy)
        _store("throttle_store", self.throttle_store)
        if self.account is not None and not self.account.strip():
            raise ConfigError("account: must be a non-empty name")
        _float_range("slot_lease", self.slot_lease, 1.0, 3_600.0)
        _int_range("max_requests", self.max_requests, 1, 1_000_000)
        _float_range("per_seconds", self.per_seconds, 0.001, 86_400.0)
        _float_range("window_margin", self.window_margin, 0.0, 1.0)
        _int_range("concurrency", self.concurrency, 1, 256)
        _choice("kind", self.kind, tuple(KINDS))
        _int_range("chunk_size", self.chunk_size, 1, KINDS[self.kind].max_ids)
        _choice("accept", self.accept, ("json", "xml"))
        _choice("log_format", self.log_format, ("console", "json"))
        _float_range("progress_interval", self.progress_interval, 0.01, 86_400.0)
        if self.metrics_port is not None:
            _int_range("metrics_port", self.metrics_port, 0, 65_535)
            if importlib.util.find_spec("prometheus_client") is None:
                raise ConfigError(
                    "metrics_port: serving metrics needs prometheus_client: "
                    "pip install 'bulkjob[metrics]'"
                )
        if not self.metrics_host.strip():
            raise ConfigError("metrics_host: must be a host name or address")
        _float_range("connect_timeout", self.connect_timeout, 0.001, 3_600.0)
        _float_range("request_timeout", self.request_timeout, 0.001, 3_600.0)
        _int_range("max_attempts", self.max_attempts, 1, 100)
        _float_range("retry_max_time", self.retry_max_time, 0.0, 7 * 86_400.0)
        _float_range("backoff_initial", self.backoff_initial, 0.0, 3_600.0)
        _float_range("backoff_max", self.backoff_max, 0.0, 86_400.0)
        _float_range("throttle_initial_delay", self.throttle_initial_delay, 0.0, 86_400.0)
        _float_range("retry_after_max", self.retry_after_max, 0.0, 7 * 86_400.0)
        _int_range("max_throttled", self.max_throttled, 1, 10_000)
        _float_range("token_refresh_margin", self.token_refresh_margin, 0.0, 30 * 86_400.0)
        _float_range("drain_timeout", self.drain_timeout, 0.0, 86_400.0)
        # The server's clock is known to whole seconds (its Date header) and a round trip:
        # a narrower period could miss the very job it is looking for.
        _float_range("reconcile_skew", self.reconcile_skew, 2.0, 86_400.0)
        _float_range("reconcile_grace", self.reconcile_grace, 0.1, 86_400.0)
        _float_range("proof_poll_interval", self.proof_poll_interval, 0.01, 86_400.0)
        _choice("on_queue_full", self.on_queue_full, ("stop", "wait"))
        if self.max_running_jobs is not None:
            _int_range("max_running_jobs", self.max_running_jobs, 1, 10_000)
        _choice("pacing", self.pacing, ("burst", "even"))
        if self.webhook_listen is not None:
            _host_port("webhook_listen", self.webhook_listen)
        _float_range("queue_poll_interval", self.queue_poll_interval, 0.01, 86_400.0)
        for name in ("id_pattern",):
            _regex(name, getattr(self, name))
        for name in ("quota_patterns", "queue_full_patterns"):
            for pattern in getattr(self, name):
                _regex(name, pattern)
        for name in ("column", "results_id_column"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ConfigError(f"{name}: must be a non-empty header name")
        if self.client_secret is not None and self.client_id is None:
            raise ConfigError("client_id: required when client_secret is set")
        if self.client_id is not None and self.client_secret is None:
            raise ConfigError("client_secret: required when client_id is set")

    def _check_types(self) -> None:
        """Strings, booleans and string tuples are what they claim (a TOML file may lie)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            hint = str(f.type)
            # The wrong value is echoed to help, except a secret's: an unquoted token in
            # a TOML file is still the token.
            got = "" if f.name in SECRET_VALUED else f", got {value!r}"
            if hint.startswith("tuple[str"):
                if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{f.name}: expected a list of strings{got}")
            elif hint == "bool":
                if not isinstance(value, bool):
                    raise ConfigError(f"{f.name}: expected true or false{got}")
            elif hint in ("str", "str | None") and not (
                isinstance(value, str) or (value is None and "None" in hint)
            ):
                raise ConfigError(f"{f.name}: expected a string{got}")

    @classmethod
    def load(
        cls,
        *,
        config: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **values: Unpack[SettingsValues],
    ) -> Settings:
        """Settings from ``values`` > environment > config file > defaults, validated.

        The environment (``os.environ`` unless ``env`` is given) supplies
        ``INSIDEVIEW_ACCESS_TOKEN``, ``INSIDEVIEW_CLIENT_ID``, ``INSIDEVIEW_CLIENT_SECRET``
        and ``BULKJOB_<FIELD>``; an unknown ``BULKJOB_*`` variable is ignored (other tools
        share the prefix). ``config`` (else ``BULKJOB_CONFIG``) names a TOML file whose
        keys are field names; an unknown key there is an error. A value given as ``None``
        counts as not given. Raises :class:`~bulkjob.ConfigError` naming the source.
        """
        # Imported here: the loader needs this class's fields, this class needs the loader.
        from ._config import load_settings

        return load_settings(values, config=config, env=env)

    def replace(self, **changes: Unpack[SettingsValues]) -> Settings:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def public(self) -> dict[str, object]:
        """The settings as plain data, secrets left out: safe for reports and journals."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for secret in (*SECRET_FIELDS, *NOT_RECORDED):
            data.pop(secret, None)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @property
    def resolved_state_dir(self) -> Path:
        """``state_dir``, else ``$XDG_STATE_HOME/bulkjob``, else ``~/.local/state/bulkjob``."""
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        xdg = os.environ.get("XDG_STATE_HOME")
        base = Path(xdg) if xdg else Path.home() / ".local" / "state"
        return base / "bulkjob"

    @property
    def window(self) -> float:
        """How long a request's slot stays counted: the window, plus its margin."""
        return self.per_seconds * (1.0 + self.window_margin)

    @property
    def job_kind(self) -> JobKind:
        """The bulk endpoint this run submits to."""
        return KINDS[self.kind]

    @property
    def id_column(self) -> str:
        """The results column that holds each input id (the proof of a job's content)."""
        return self.results_id_column or self.job_kind.id_column

    def require_credentials(self) -> None:
        """Raise ConfigError, saying where credentials come from, when there are none."""
        if not self.has_credentials:
            raise ConfigError(
                "no credentials: set INSIDEVIEW_ACCESS_TOKEN (or --access-token), or "
                "INSIDEVIEW_CLIENT_ID and INSIDEVIEW_CLIENT_SECRET"
            )

    @property
    def has_credentials(self) -> bool:
        """True when a token or a client id + secret pair is configured."""
        return bool(self.access_token) or (
            self.client_id is not None and self.client_secret is not None
        )


SECRET_FIELDS = ("access_token", "client_secret")
#: Not in reports and journals either: the proxy may carry credentials, and it belongs
#: to the network a command runs in, so ``resume``, ``wait`` and ``results`` take it
#: again from where they run (the setting or the environment), like credentials. The
#: metrics address is the serving process's, not the run's: a resume elsewhere (or
#: without the extra) must not inherit it. The throttle store is where the account's
#: window lives for the process at hand (a redis:// URL may carry a password).
NOT_RECORDED = ("proxy", "metrics_port", "metrics_host", "throttle_store", "state_dir")
#: Fields whose value is never shown in an error: the secrets, and the URLs that may hold
#: a password (the proxy, a redis:// throttle store).
SECRET_VALUED = frozenset({*SECRET_FIELDS, "proxy", "throttle_store"})


class SettingsValues(TypedDict, total=False):
    """Every :class:`Settings` field as an optional keyword: the type of ``**values``.

    It repeats the fields on purpose (a ``TypedDict`` cannot be derived from a dataclass
    for a type checker); ``tests/test_settings_load.py`` fails if the two drift apart.
    """

    base_url: str
    token_url: str
    access_token: str | None
    client_id: str | None
    client_secret: str | None
    token_refresh_margin: float
    proxy: str | None
    kind: str
    max_requests: int
    per_seconds: float
    window_margin: float
    concurrency: int
    chunk_size: int
    accept: Accept
    retrieve_company_details: bool
    webhook: str | None
    column: str | None
    id_pattern: str
    dedupe: bool
    strict: bool
    connect_timeout: float
    request_timeout: float
    max_attempts: int
    retry_max_time: float
    backoff_initial: float
    backoff_max: float
    throttle_initial_delay: float
    retry_after_max: float
    max_throttled: int
    drain_timeout: float
    reconcile_skew: float
    reconcile_grace: float
    proof_poll_interval: float
    results_id_column: str | None
    on_queue_full: QueueFullPolicy
    max_running_jobs: int | None
    pacing: Pacing
    webhook_listen: str | None
    queue_poll_interval: float
    require_quota: bool
    quota_patterns: tuple[str, ...]
    queue_full_patterns: tuple[str, ...]
    quota_error_numbers: tuple[str, ...]
    queue_full_error_numbers: tuple[str, ...]
    throttle_store: str
    state_dir: str | None
    account: str | None
    slot_lease: float
    log_format: LogFormat
    progress_interval: float
    metrics_port: int | None
    metrics_host: str


def _int_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be from {low} to {high}, got {value}")


def _float_range(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: expected a number from {low:g} to {high:g}, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{name}: must be from {low:g} to {high:g}, got {value}")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")


def _url(name: str, value: object) -> None:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        raise ConfigError(f"{name}: expected an http(s) URL, got {value!r}")


def _proxy_url(name: str, value: object) -> None:
    """An http(s) URL with a host; the error never shows the value, which may hold a
    password. Its credentials are registered for redaction at once."""
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected an http(s) URL, got {type(value).__name__}")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"{name}: not a valid URL (http://[user:password@]host:port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{name}: expected an http(s) URL such as http://[user:password@]host:port"
        )
    register_secret(parts.password)
    if parts.password:
        register_secret(urllib.parse.unquote(parts.password))


def _host_port(name: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65_535:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")


def _regex(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a regular expression string, got {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{name}: invalid regular expression {value!r}: {exc}") from None


def _store(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected memory, local or a redis:// URL, got {value!r}")
    if value in ("memory", "local"):
        return
    parts = urllib.parse.urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")  # reported below, without the value's password
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(
            f"{name}: expected memory, local or a redis:// (rediss://) URL with a host, "
            f"got {_without_password(value)!r}"
        )
    # The password is the account's Redis's: scrubbed from every log line from now on.
    register_secret(parts.password)
    if parts.password:
        register_secret(urllib.parse.unquote(parts.password))
    if importlib.util.find_spec("redis") is None:
        raise ConfigError(REDIS_MISSING)


def _without_password(url: str) -> str:
    """``url`` with any password in it replaced, for error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
