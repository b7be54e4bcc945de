"""etcd's spellings of our options, so that an etcd command line or ``ETCD_*`` habit
works as is.

Most of our options already have etcd's names (``--cert-file``, ``--key-file``,
``--trusted-ca-file``, ``--client-cert-auth``, ``--advertise-client-urls``, ``--name``,
``--max-request-bytes``, ``--auth-token-ttl``, ``--auto-compaction-*``,
``--listen-metrics-urls``, ``--log-level``).  The rows here are etcd flags whose meaning
is one of our options under another name.  Each alias works on the command line, as
``ETCD_ADAPTER_<ALIAS>`` and as a config-file key.

The rows are declared with their option (``aliases`` in :mod:`etcdadapter.options`).
Row: (etcd's name, our option, how a value becomes our option's values, help).
``url_list``: etcd's comma-separated URL list, each URL one value of a repeatable
option (``--listen``).
"""

from etcdadapter.options import OPTIONS

ALIASES = tuple(
    (alias.name, option.name, alias.split,
     alias.help or "etcd's spelling of --%s." % option.name)
    for option in OPTIONS for alias in option.aliases)


def by_name():
    """{alias: (option, split or None)}."""
    return {alias: (option, split) for alias, option, split, _doc in ALIASES}


def install(options_class):
    """Give ``options_class`` (a twisted.python.usage.Options) an ``opt_<alias>`` method
    per row: usage.Options finds options by their handler methods, and documents them
    in --help with the method's docstring."""
    for alias, option, split, doc in ALIASES:
        handler = _handler(option, split)
        handler.__doc__ = doc
        handler.__name__ = "opt_" + alias.replace("-", "_")
        setattr(options_class, handler.__name__, handler)


def _handler(option, split):
    # Exactly (self, value): usage.Options tells parameters from flags by the arity.
    def handler(self, value):
        self.set_alias(option, value, split)
    return handler
