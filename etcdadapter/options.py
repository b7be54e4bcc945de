"""The daemon's options, declared once: name, kind, default, check, help, etcd's spellings.

Everything else is made from :data:`OPTIONS`: the ``twistd etcd-adapter`` /
``etcd-adapter`` command line and ``--help`` (:mod:`etcdadapter.tap`), the
``ETCD_ADAPTER_<NAME>`` environment variables, the ``--config-file`` keys
(:mod:`etcdadapter.config_file`), etcd's flag names (:mod:`etcdadapter.flag_aliases`),
the service settings (:class:`etcdadapter.server.AdapterConfig`, so also the embedding
API's keyword options) and the check of the README's option table
(tests/unit/test_options_declared.py).  A new option is one row here plus its use.
"""

from typing import Callable, NamedTuple, Optional, Tuple

from etcdadapter import durations
from etcdadapter.listen_urls import url_list
from etcdadapter.security.auth_store import TOKEN_TTL
from etcdadapter.slow_requests import SLOW_REQUEST
from etcdadapter.store import compactor
from etcdadapter.transport.h2_server import DEFAULT_MAX_CONCURRENT_STREAMS

ENV_PREFIX = "ETCD_ADAPTER_"
DEFAULT_LISTEN = "tcp:2379:interface=127.0.0.1"

# Kinds of option.
PARAMETER = "parameter"     # one value (--name VALUE)
FLAG = "flag"               # on when given (true/false in the environment and the file)
LIST = "list"               # repeatable (--listen A --listen B); a YAML list in the file
COMMA_LIST = "comma-list"   # one comma-separated value; a YAML list or string in the file


# -- checks: text (command line, environment, config file alike) -> value -------------

def _positive_int(value):
    n = int(value)
    if n <= 0:
        raise ValueError("must be a positive integer")
    return n


_positive_int.coerceDoc = "Must be a positive integer."


def _duration(value):
    """Positive seconds from a number ("30", "0.5") or a Go-style duration ("10m",
    "1m30s", "500ms") as etcd's flags take them."""
    seconds = durations.seconds(value)
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


_duration.coerceDoc = "Seconds, or a duration such as 10m, 30s, 500ms."


def _duration_or_off(value):
    """Like :func:`_duration`, and 0 turns the timeout off."""
    seconds = durations.seconds(value)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


_duration_or_off.coerceDoc = "Seconds, or a duration such as 5m, 10s; 0 turns it off."


def _connection_limit(value):
    """A number of connections (0: no limit), or 'auto' (None)."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    n = int(value)
    if n < 0:
        raise ValueError("must be 0 (no limit), a positive number or auto")
    return n


_connection_limit.coerceDoc = ("A number, 0 for no limit, or auto (the open-file limit "
                               "minus 256).")


LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def _log_level(value):
    name = {"warning": "warn", "fatal": "critical", "panic": "critical"}.get(
        value.strip().lower(), value.strip().lower())
    if name not in LOG_LEVELS:
        raise ValueError("must be one of %s" % ", ".join(LOG_LEVELS))
    return name


_log_level.coerceDoc = "One of debug, info, warn, error, critical."


def _log_format(value):
    name = {"console": "text"}.get(value.strip().lower(), value.strip().lower())
    if name not in ("text", "json"):
        raise ValueError("must be text or json")
    return name


_log_format.coerceDoc = "text or json."


# -- the declaration ------------------------------------------------------------------

class Alias(NamedTuple):
    """etcd's name for an option (see :mod:`etcdadapter.flag_aliases`)."""

    name: str
    #: etcd's comma-separated value -> our option's values (None: the value as is).
    split: Optional[Callable] = None
    help: str = ""


class Option(NamedTuple):
    name: str
    #: The value when nothing sets it, as ``--help`` shows it.
    default: object
    help: str
    #: Text -> value, ValueError when bad (None: the text as is).
    coerce: Optional[Callable] = None
    kind: str = PARAMETER
    short: Optional[str] = None
    #: The :class:`~etcdadapter.server.AdapterConfig` attribute: "" for the name with
    #: underscores, None for an option of the command itself (logs, config file).
    field: Optional[str] = ""
    aliases: Tuple[Alias, ...] = ()

    @property
    def env(self):
        """The environment variable: ``ETCD_ADAPTER_<NAME>``."""
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def attribute(self):
        """The AdapterConfig attribute, or None."""
        if self.field is None:
            return None
        return self.field or self.name.replace("-", "_")

    @property
    def initial(self):
        """The value an unset option has (the default through its check: "auto" ->
        None; lists as lists)."""
        if self.kind == LIST:
            return list(self.default)
        if self.kind == COMMA_LIST:
            return [x.strip() for x in self.default.split(",") if x.strip()]
        if self.coerce is not None and isinstance(self.default, str):
            return self.coerce(self.default)
        return self.default


OPTIONS = (
    Option("listen", (DEFAULT_LISTEN,),
           "Where clients connect (repeatable): IP:PORT (127.0.0.1:2379 this host only, "
           "0.0.0.0:2379 every interface), an etcd URL http://IP:PORT (https:// with "
           "--cert-file) or a Twisted endpoint (tcp:2379:interface=0.0.0.0, "
           "unix:/run/etcd-adapter.sock); default 127.0.0.1:2379.", kind=LIST, short="l",
           aliases=(Alias("listen-client-urls", url_list,
                          "etcd's spelling of --listen: comma-separated URLs, e.g. "
                          "http://127.0.0.1:2379,http://10.0.0.5:2379."),)),
    Option("config-file", None,
           "YAML file of options, keys as the long option names (store: URL, listen: "
           "[ENDPOINT, ...], max-request-bytes: N, client-cert-auth: true, ...).  The "
           "command line and ETCD_ADAPTER_* variables win over it.", field=None),
    Option("store", "memory://",
           "Where the data lives: memory:// (default; nothing kept across restarts, "
           "revisions seeded from the wall clock in microseconds -- they stay above "
           "those clients saw only while the clock does not go back: for a guarantee "
           "add ?floor_file=PATH, a file the store records its revisions in and never "
           "starts below, or use a SQL store; ?initial_revision=N pins the first "
           "revision), sqlite:///path.db, mysql://user:pw@host:3306/db, tidb://..., "
           "postgresql://user@host/db (URL options: README, \"Store URL options\").  "
           "Keys are at most 3000 bytes on MySQL/MariaDB/TiDB and 2600 on PostgreSQL "
           "(etcd, memory:// and SQLite: any key a request can carry)."),
    Option("name", "default", "Member name shown by `etcdctl member list`."),
    Option("advertise-client-urls", "",
           "Comma-separated client URLs reported by MemberList (default: the listening "
           "addresses as http://host:port).", kind=COMMA_LIST),
    Option("max-request-bytes", 1572864,
           "Largest write request accepted, in bytes (etcd's default 1.5 MiB); gRPC "
           "messages may be 512 KiB larger.", _positive_int),
    Option("max-txn-ops", 128,
           "Most operations in one txn branch (a nested txn gets what its parent leaves; "
           "txns nest at most 129 levels, what etcd's default allows).", _positive_int),
    Option("max-concurrent-streams", DEFAULT_MAX_CONCURRENT_STREAMS,
           "HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection: streams (calls, watch "
           "and keep-alive sessions) open at once on one connection; gRPC clients queue "
           "calls beyond it, a stream opened over it anyway is refused (REFUSED_STREAM, "
           "retried by gRPC clients).  etcd's default is unbounded (2^32-1); 1000 is far "
           "above what clients use (APISIX: about 13 a connection; Go's HTTP/2 server "
           "allows 250) and bounds what one connection can make the server hold.",
           _positive_int),
    Option("drain-timeout", 10.0,
           "Seconds to let in-flight requests finish on shutdown.", float),
    Option("cert-file", None,
           "TLS: the server certificate (PEM, chain allowed); every listener then serves "
           "TLS (ALPN h2 and http/1.1).  SIGHUP re-reads the certificate files."),
    Option("key-file", None, "TLS: the server certificate's private key (PEM)."),
    Option("trusted-ca-file", None,
           "TLS: CA bundle that client certificates are verified against."),
    Option("client-cert-auth", False,
           "Require a client certificate signed by --trusted-ca-file on every "
           "connection.", kind=FLAG),
    Option("client-cert-policy", None,
           "JSON file mapping verified client-certificate identities (CN, SAN DNS/URI/IP) "
           "to key-range permissions, enforced on gRPC, HTTP and watches alike; re-read "
           "on SIGHUP; needs --client-cert-auth.  Format: README, \"Client-certificate "
           "policy\"."),
    Option("watch-progress-notify-interval", 600.0,
           "How often watchers created with progress_notify get a progress response "
           "when idle (etcd's --experimental-watch-progress-notify-interval, 10m).",
           _duration,
           aliases=(Alias("experimental-watch-progress-notify-interval"),)),
    Option("auth-token-ttl", TOKEN_TTL,
           "Seconds an etcd simple auth token stays valid after its last use (etcd's "
           "--auth-token-ttl, 300).", _duration),
    Option("slow-request-threshold", SLOW_REQUEST,
           "Log a unary request (method, duration, peer, key) that takes longer than "
           "this (event slow-request, level warn).", _duration),
    Option("auto-compaction-mode", compactor.DEFAULT_MODE,
           "periodic: keep --auto-compaction-retention of history (a duration); "
           "revision: keep that many revisions (etcd's flag)."),
    Option("auto-compaction-retention", compactor.DEFAULT_RETENTION,
           "History to keep: periodic mode a duration (1h, 30m, 5s; a bare integer is "
           "hours), revision mode a number of revisions; 0 turns automatic compaction "
           "off.  Default 1h (etcd's default is 0)."),
    Option("auto-compaction-check-interval", None,
           "How often automatic compaction checks whether it is due (default as etcd: "
           "a tenth of the retention, at most 6m, in periodic mode; 5m in revision "
           "mode).", _duration),
    Option("header-timeout", 10.0,
           "A new connection must deliver a complete request head (HTTP/1.1 request line "
           "and headers, or HTTP/2 preface and SETTINGS; the TLS handshake included) "
           "within this time, and an HTTP/1.1 request body must not stall for longer, "
           "or the connection is closed (slow-loris).", _duration_or_off),
    Option("idle-timeout", 300.0,
           "Close an HTTP/1.1 keep-alive connection with no request in progress, or an "
           "HTTP/2 connection with no open stream (GOAWAY first), after this long.",
           _duration_or_off),
    Option("max-connections", "auto",
           "Most client connections open at once; more are closed at once (counted in "
           "/metrics).", _connection_limit),
    # -- operating: metrics port, logs, waiting for the database --
    Option("listen-metrics-urls", "",
           "Comma-separated http://IP:PORT URLs serving /metrics, /health and /version in "
           "plain HTTP, without client certificates even with --client-cert-auth (etcd's "
           "flag): for Prometheus and load-balancer or kubelet probes.",
           kind=COMMA_LIST, field="metrics_listen"),
    Option("log-level", "info",
           "Lowest level logged: debug, info, warn, error (etcd-adapter command; twistd: "
           "with --logger etcdadapter.logs.text or .json).", _log_level, field=None),
    Option("log-format", "text",
           "etcd-adapter command: log lines on standard output as text (time level "
           "[module] message) or json (one object per line).", _log_format, field=None),
    Option("store-start-timeout", 60.0,
           "At start-up, how long to keep trying a database that refuses or does not "
           "answer connections (back-off up to 5s, each try logged) before giving up; "
           "a wrong password, a missing database or missing rights fail at once.",
           _duration_or_off),
)

BY_NAME = {option.name: option for option in OPTIONS}

#: The options that are service settings (AdapterConfig attributes), in table order.
SETTINGS = tuple(option for option in OPTIONS if option.attribute is not None)
