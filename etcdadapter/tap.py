"""``twistd etcd-adapter``: command-line options and the service they make.

Every option can also come from the environment as ``ETCD_ADAPTER_<NAME>`` (upper case,
dashes as underscores; ``ETCD_ADAPTER_LISTEN`` takes a comma-separated list) and from the
YAML file named by ``--config-file`` (keys = the long option names; see
:mod:`etcdadapter.config_file`).  Precedence: command line > environment > config file >
defaults, option by option (etcd itself ignores its flags when given a config file).
"""

import os
import sys

from twisted.python import usage

from etcdadapter import config_file, durations, env_check, flag_aliases, listen_urls
from etcdadapter.server import AdapterConfig, AdapterService
from etcdadapter.store import compactor
from etcdadapter.transport.h2_server import DEFAULT_MAX_CONCURRENT_STREAMS

ENV_PREFIX = "ETCD_ADAPTER_"
DEFAULT_LISTEN = "tcp:2379:interface=127.0.0.1"


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


class _NamedCoerce(usage.CoerceParameter):
    """Twisted's check of a parameter's value, with an error that names the option
    and the value ("--max-txn-ops zero: ..."), not "Parameter type enforcement
    failed"."""

    def dispatch(self, parameterName, value):
        if value is None:
            return usage.CoerceParameter.dispatch(self, parameterName, value)
        try:
            value = self.coerce(value)
        except ValueError as e:
            raise usage.UsageError("--%s %s: %s" % (parameterName, value, e))
        self.options.opts[parameterName] = value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Serve etcd's v3 API (gRPC and the HTTP/JSON gateway, one port) from the "
                "chosen store.  Each option may also be set with the environment "
                "variable ETCD_ADAPTER_<OPTION> (e.g. ETCD_ADAPTER_STORE) or in the "
                "--config-file; the command line wins over the environment, which wins "
                "over the file.")

    optParameters = [
        ["config-file", None, None,
         "YAML file of options, keys as the long option names (store: URL, listen: "
         "[ENDPOINT, ...], max-request-bytes: N, client-cert-auth: true, ...).  The "
         "command line and ETCD_ADAPTER_* variables win over it."],
        ["store", None, "memory://",
         "Where the data lives: memory:// (default; nothing kept across restarts, "
         "revisions seeded from the wall clock in microseconds -- they stay above "
         "those clients saw only while the clock does not go back: for a guarantee "
         "add ?floor_file=PATH, a file the store records its revisions in and never "
         "starts below, or use a SQL store; ?initial_revision=N pins the first "
         "revision), sqlite:///path.db, mysql://user:pw@host:3306/db, tidb://..., "
         "postgresql://user@host/db (options: etcdadapter/store/sql).  Keys are at "
         "most 3000 bytes on MySQL/MariaDB/TiDB and 2600 on PostgreSQL (etcd, "
         "memory:// and SQLite: any key a request can carry)."],
        ["name", None, "default", "Member name shown by `etcdctl member list`."],
        ["advertise-client-urls", None, "",
         "Comma-separated client URLs reported by MemberList (default: the listening "
         "addresses as http://host:port)."],
        ["max-request-bytes", None, 1572864,
         "Largest write request accepted, in bytes (etcd's default 1.5 MiB); gRPC "
         "messages may be 512 KiB larger.", _positive_int],
        ["max-txn-ops", None, 128,
         "Most operations in one txn branch (a nested txn gets what its parent leaves; "
         "txns nest at most 129 levels, what etcd's default allows).", _positive_int],
        ["max-concurrent-streams", None, DEFAULT_MAX_CONCURRENT_STREAMS,
         "HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection: streams (calls, watch "
         "and keep-alive sessions) open at once on one connection; gRPC clients queue "
         "calls beyond it, a stream opened over it anyway is refused (REFUSED_STREAM, "
         "retried by gRPC clients).  etcd's default is unbounded (2^32-1); 1000 is far "
         "above what clients use (APISIX: about 13 a connection; Go's HTTP/2 server "
         "allows 250) and bounds what one connection can make the server hold.",
         _positive_int],
        ["drain-timeout", None, 10.0,
         "Seconds to let in-flight requests finish on shutdown.", float],
        ["cert-file", None, None, "TLS: the server certificate (PEM, chain allowed); "
         "every listener then serves TLS (ALPN h2 and http/1.1).  SIGHUP re-reads the "
         "certificate files."],
        ["key-file", None, None, "TLS: the server certificate's private key (PEM)."],
        ["trusted-ca-file", None, None,
         "TLS: CA bundle that client certificates are verified against."],
        ["client-cert-policy", None, None,
         "JSON file mapping verified client-certificate identities (CN, SAN DNS/URI/IP) "
         "to key-range permissions, enforced on gRPC, HTTP and watches alike; re-read "
         "on SIGHUP.  See etcdadapter/security/cert_policy.py."],
        ["watch-progress-notify-interval", None, 600.0,
         "How often watchers created with progress_notify get a progress response "
         "when idle (etcd's --experimental-watch-progress-notify-interval, 10m).",
         _duration],
        ["auth-token-ttl", None, 300.0,
         "Seconds an etcd simple auth token stays valid after its last use (etcd's "
         "--auth-token-ttl, 300).", _duration],
        ["slow-request-threshold", None, 1.0,
         "Log a unary request (method, duration, peer, key) that takes longer than "
         "this (event slow-request, level warn).", _duration],
        ["auto-compaction-mode", None, compactor.DEFAULT_MODE,
         "periodic: keep --auto-compaction-retention of history (a duration); "
         "revision: keep that many revisions (etcd's flag)."],
        ["auto-compaction-retention", None, compactor.DEFAULT_RETENTION,
         "History to keep: periodic mode a duration (1h, 30m, 5s; a bare integer is "
         "hours), revision mode a number of revisions; 0 turns automatic compaction "
         "off.  Default 1h (etcd's default is 0)."],
        ["auto-compaction-check-interval", None, None,
         "How often automatic compaction checks whether it is due (default as etcd: "
         "a tenth of the retention, at most 6m, in periodic mode; 5m in revision "
         "mode).", _duration],
        ["header-timeout", None, 10.0,
         "A new connection must deliver a complete request head (HTTP/1.1 request line "
         "and headers, or HTTP/2 preface and SETTINGS; the TLS handshake included) "
         "within this time, and an HTTP/1.1 request body must not stall for longer, "
         "or the connection is closed (slow-loris).", _duration_or_off],
        ["idle-timeout", None, 300.0,
         "Close an HTTP/1.1 keep-alive connection with no request in progress, or an "
         "HTTP/2 connection with no open stream (GOAWAY first), after this long.",
         _duration_or_off],
        ["max-connections", None, "auto",
         "Most client connections open at once; more are closed at once (counted in "
         "/metrics).", _connection_limit],
        # -- operating: metrics port, logs, waiting for the database --
        ["listen-metrics-urls", None, "",
         "Comma-separated http://IP:PORT URLs serving /metrics, /health and /version in "
         "plain HTTP, without client certificates even with --client-cert-auth (etcd's "
         "flag): for Prometheus and load-balancer or kubelet probes."],
        ["log-level", None, "info",
         "Lowest level logged: debug, info, warn, error (etcd-adapter command; twistd: "
         "with --logger etcdadapter.logs.text or .json).", _log_level],
        ["log-format", None, "text",
         "etcd-adapter command: log lines on standard output as text (time level "
         "[module] message) or json (one object per line).", _log_format],
        ["store-start-timeout", None, 60.0,
         "At start-up, how long to keep trying a database that refuses or does not "
         "answer connections (back-off up to 5s, each try logged) before giving up; "
         "a wrong password, a missing database or missing rights fail at once.",
         _duration_or_off],
    ]

    optFlags = [
        ["client-cert-auth", None,
         "Require a client certificate signed by --trusted-ca-file on every connection."],
    ]

    # Parameters that hold comma-separated lists (a YAML list in the config file).
    commaListParameters = ("advertise-client-urls", "listen-metrics-urls")

    _given = None    # options set by the command line or the environment (while parsing)

    def __init__(self):
        usage.Options.__init__(self)
        for name, dispatcher in list(self._dispatch.items()):
            if type(dispatcher) is usage.CoerceParameter:
                self._dispatch[name] = _NamedCoerce(self, dispatcher.coerce)
        self["listen"] = []
        self._given = set()
        self._from_environment(os.environ)

    def __setitem__(self, key, value):
        # twisted.python.usage stores every option given on the command line here.
        if self._given is not None:
            self._given.add(key)
        usage.Options.__setitem__(self, key, value)

    def opt_listen(self, description):
        """Twisted endpoint to listen on, e.g. tcp:2379:interface=0.0.0.0 (repeatable;
        default tcp:2379:interface=127.0.0.1)."""
        self["listen"].append(description)
        self._given.add("listen")

    opt_l = opt_listen

    def opt_version(self):
        """Print the adapter's version (and the etcd API version it serves) and exit."""
        from etcdadapter import version_text
        print(version_text())
        sys.exit(0)

    def set_alias(self, option, value, split):
        """An etcd spelling of ``option`` was given (see flag_aliases)."""
        if option == "listen":
            for item in split(value) if split else [value]:
                self.opt_listen(item)
        else:
            self[option] = self._coerce(option, value, "--" + option)

    def _coerce(self, name, value, where):
        for p in self.optParameters:
            if p[0] == name and len(p) > 4:
                try:
                    return p[4](value)
                except ValueError as e:
                    raise usage.UsageError("%s: %s" % (where, e))
        return value

    def _environment_aliases(self, environ):
        for alias, (option, split) in flag_aliases.by_name().items():
            name = ENV_PREFIX + alias.upper().replace("-", "_")
            if name not in environ:
                continue
            if option == "listen":
                self._env_listen += (split or (lambda v: [v]))(environ[name])
            else:
                self[option] = self._coerce(option, environ[name], name)

    def _unknown_environment(self, environ):
        known = {p[0] for p in self.optParameters} | {f[0] for f in self.optFlags}
        known |= {"listen"} | set(flag_aliases.by_name())
        self.environment_warnings = [
            env_check.warning(name, guess) for name, guess in env_check.unknown(
                environ, ENV_PREFIX, {k.upper().replace("-", "_") for k in known})]

    def _from_environment(self, environ):
        self._unknown_environment(environ)
        listen = environ.get(ENV_PREFIX + "LISTEN")
        if listen:
            self._env_listen = [x.strip() for x in listen.split(",") if x.strip()]
        else:
            self._env_listen = []
        for name, _short, _default, _doc, *coerce in self.optParameters:
            value = environ.get(ENV_PREFIX + name.upper().replace("-", "_"))
            if value is None:
                continue
            if coerce:
                try:
                    value = coerce[0](value)
                except ValueError as e:
                    raise usage.UsageError("%s%s: %s" % (
                        ENV_PREFIX, name.upper().replace("-", "_"), e))
            self[name] = value
        for name, _short, _doc in self.optFlags:
            value = environ.get(ENV_PREFIX + name.upper().replace("-", "_"))
            if value is not None:
                if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off",
                                         ""):
                    raise usage.UsageError("%s%s: expected true or false" % (
                        ENV_PREFIX, name.upper().replace("-", "_")))
                self[name] = value.lower() in ("1", "true", "yes", "on")
        self._environment_aliases(environ)

    def _from_config_file(self, given):
        """Options from --config-file that neither the command line nor the
        environment set."""
        path = self["config-file"]
        data = config_file.read(path)
        for alias, (option, split) in flag_aliases.by_name().items():
            if alias in data and option not in data:
                value = data.pop(alias)
                data[option] = split(value) if split and isinstance(value, str) else value
        found = config_file.values(
            data, path=path, refused=("config-file",),
            parameters={p[0]: (p[4] if len(p) > 4 else None) for p in self.optParameters},
            flags={f[0] for f in self.optFlags}, lists=("listen",),
            comma_lists=self.commaListParameters)
        for name, value in found.items():
            if name == "listen":
                if "listen" not in given and not self._env_listen:
                    self["listen"] = value
            elif name not in given:
                self[name] = value

    def postOptions(self):
        for line in self.environment_warnings:
            sys.stderr.write(line + "\n")
        given, self._given = self._given, None
        if self["config-file"]:
            self._from_config_file(given)
        if not self["listen"]:
            self["listen"] = self._env_listen or [DEFAULT_LISTEN]
        urls = self["advertise-client-urls"]
        self["advertise-client-urls"] = [u.strip() for u in urls.split(",") if u.strip()] \
            if isinstance(urls, str) else list(urls)
        if bool(self["cert-file"]) != bool(self["key-file"]):
            raise usage.UsageError("--cert-file and --key-file go together")
        self._check_operator_options()
        if self["client-cert-auth"] and not (self["trusted-ca-file"] and self["cert-file"]):
            raise usage.UsageError(
                "--client-cert-auth needs --cert-file, --key-file and --trusted-ca-file")
        try:
            compactor.parse_retention(self["auto-compaction-mode"],
                                      self["auto-compaction-retention"])
        except ValueError as e:
            raise usage.UsageError("--auto-compaction-retention: %s" % (e,))
        # Loaded here so that bad files are usage errors; the service takes them as is.
        self.tls = self.cert_policy = None
        if self["cert-file"]:
            from etcdadapter.security.tls import ServerTLS, TLSConfigError
            try:
                self.tls = ServerTLS(self["cert-file"], self["key-file"],
                                     self["trusted-ca-file"], self["client-cert-auth"])
            except TLSConfigError as e:
                raise usage.UsageError(str(e))
        if self["client-cert-policy"]:
            from etcdadapter.security.cert_policy import CertPolicy, PolicyError
            try:
                self.cert_policy = CertPolicy.load(self["client-cert-policy"])
            except PolicyError as e:
                raise usage.UsageError(str(e))
        from etcdadapter.store.urls import StoreURLError, open_store
        try:
            self.store = open_store(self["store"])
        except StoreURLError as e:
            raise usage.UsageError(str(e))

    def _check_operator_options(self):
        """Listen addresses and the options that depend on each other, checked now so
        that a mistake stops the start with one line (see listen_urls)."""
        tls = bool(self["cert-file"])
        try:
            self["listen"] = [listen_urls.endpoint(x, tls) for x in self["listen"]]
            urls = self["listen-metrics-urls"]
            urls = listen_urls.url_list(urls) if isinstance(urls, str) else list(urls)
            self["listen-metrics-urls"] = [
                listen_urls.endpoint(x, False, "--listen-metrics-urls") for x in urls]
        except listen_urls.ListenError as e:
            raise usage.UsageError(str(e))
        for description in self["listen"]:
            warning = listen_urls.every_interface_warning(description)
            if warning:
                sys.stderr.write(warning + "\n")
        if self["client-cert-policy"] and not self["client-cert-auth"]:
            raise usage.UsageError(
                "--client-cert-policy needs --client-cert-auth (with --cert-file, "
                "--key-file and --trusted-ca-file): without verified client "
                "certificates it would deny every request")

    def config(self):
        return AdapterConfig(
            listen=self["listen"], store=self["store"], name=self["name"],
            advertise_client_urls=self["advertise-client-urls"],
            max_request_bytes=self["max-request-bytes"], max_txn_ops=self["max-txn-ops"],
            max_concurrent_streams=self["max-concurrent-streams"],
            drain_timeout=self["drain-timeout"],
            watch_progress_notify_interval=self["watch-progress-notify-interval"],
            cert_file=self["cert-file"], key_file=self["key-file"],
            trusted_ca_file=self["trusted-ca-file"],
            client_cert_auth=self["client-cert-auth"],
            client_cert_policy=self["client-cert-policy"],
            auth_token_ttl=self["auth-token-ttl"],
            slow_request_threshold=self["slow-request-threshold"],
            auto_compaction_mode=self["auto-compaction-mode"],
            auto_compaction_retention=self["auto-compaction-retention"],
            auto_compaction_check_interval=self["auto-compaction-check-interval"],
            header_timeout=self["header-timeout"], idle_timeout=self["idle-timeout"],
            max_connections=_connection_limit(self["max-connections"]),
            metrics_listen=self["listen-metrics-urls"],
            store_start_timeout=self["store-start-timeout"])


flag_aliases.install(Options)


def makeService(options):
    from etcdadapter import logs
    logs.DEFAULT_LEVEL = options["log-level"]
    return AdapterService(options.config(), store=options.store, tls=options.tls,
                          cert_policy=options.cert_policy, notify_systemd=True)
