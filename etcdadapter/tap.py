"""``twistd etcd-adapter``: command-line options and the service they make.

Every option can also come from the environment as ``ETCD_ADAPTER_<NAME>`` (upper case,
dashes as underscores; ``ETCD_ADAPTER_LISTEN`` takes a comma-separated list) and from the
YAML file named by ``--config-file`` (keys = the long option names; see
:mod:`etcdadapter.config_file`).  Precedence: command line > environment > config file >
defaults, option by option (etcd itself ignores its flags when given a config file).
The options are declared in :mod:`etcdadapter.options`; this module makes them a
``twisted.python.usage.Options`` and checks how they combine.
"""

import os
import sys

from twisted.python import usage

from etcdadapter import config_file, env_check, flag_aliases, listen_urls
from etcdadapter.options import (COMMA_LIST, ENV_PREFIX, FLAG, LIST, OPTIONS, PARAMETER,
                                 SETTINGS)
from etcdadapter.options import BY_NAME as _DECLARED
from etcdadapter.options import _duration  # noqa: F401 -- tap._duration, as before
from etcdadapter.server import AdapterConfig, AdapterService
from etcdadapter.store import compactor


def _parameters():
    """twisted.python.usage's optParameters rows, from the declaration."""
    return [[o.name, o.short, o.default, o.help] + ([o.coerce] if o.coerce else [])
            for o in OPTIONS if o.kind in (PARAMETER, COMMA_LIST)]


def _list_handler(option):
    # A repeatable option is an opt_<name> method (usage.Options has no list type);
    # exactly (self, value): usage.Options tells parameters from flags by the arity.
    def handler(self, value):
        self[option.name].append(value)
        self._given.add(option.name)
    handler.__doc__ = option.help
    handler.__name__ = "opt_" + option.name.replace("-", "_")
    return handler


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

    optParameters = _parameters()
    optFlags = [[o.name, o.short, o.help] for o in OPTIONS if o.kind == FLAG]

    _given = None    # options set by the command line or the environment (while parsing)

    def __init__(self):
        usage.Options.__init__(self)
        for name, dispatcher in list(self._dispatch.items()):
            if type(dispatcher) is usage.CoerceParameter:
                self._dispatch[name] = _NamedCoerce(self, dispatcher.coerce)
        for option in OPTIONS:
            if option.kind == LIST:
                self[option.name] = []
            elif option.kind == PARAMETER:
                # What an unset option holds ("auto" -> None); --help shows the default.
                self.opts[option.name] = option.initial
        self._given = set()
        self._from_environment(os.environ)

    def __setitem__(self, key, value):
        # twisted.python.usage stores every option given on the command line here.
        if self._given is not None:
            self._given.add(key)
        usage.Options.__setitem__(self, key, value)

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
        coerce = _DECLARED[name].coerce
        if coerce is None:
            return value
        try:
            return coerce(value)
        except ValueError as e:
            raise usage.UsageError("%s: %s" % (where, e))

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
        known = {o.env for o in OPTIONS} | {
            ENV_PREFIX + alias.upper().replace("-", "_") for alias in flag_aliases.by_name()}
        self.environment_warnings = [
            env_check.warning(name, guess) for name, guess in env_check.unknown(
                environ, ENV_PREFIX, {k[len(ENV_PREFIX):] for k in known})]

    def _from_environment(self, environ):
        self._unknown_environment(environ)
        self._env_listen = []
        for option in OPTIONS:
            value = environ.get(option.env)
            if value is None:
                continue
            if option.kind == LIST:         # comma-separated in one variable
                self._env_listen = [x.strip() for x in value.split(",") if x.strip()]
            elif option.kind == FLAG:
                if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no",
                                         "off", ""):
                    raise usage.UsageError("%s: expected true or false" % option.env)
                self[option.name] = value.lower() in ("1", "true", "yes", "on")
            else:
                self[option.name] = self._coerce(option.name, value, option.env)
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
        found = config_file.values(data, OPTIONS, path=path, refused=("config-file",))
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
            self["listen"] = self._env_listen or _DECLARED["listen"].initial
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
        return AdapterConfig(**{o.attribute: self[o.name] for o in SETTINGS})


def _install_lists(options_class):
    for option in OPTIONS:
        if option.kind == LIST:
            # One function for both names: usage.Options then lists -l as --listen's
            # short form.
            handler = _list_handler(option)
            for name in (option.name, option.short):
                if name:
                    setattr(options_class, "opt_" + name.replace("-", "_"), handler)


_install_lists(Options)
flag_aliases.install(Options)


def makeService(options):
    from etcdadapter import logs
    logs.DEFAULT_LEVEL = options["log-level"]
    return AdapterService(options.config(), store=options.store, tls=options.tls,
                          cert_policy=options.cert_policy, notify_systemd=True,
                          handle_signals=True)
