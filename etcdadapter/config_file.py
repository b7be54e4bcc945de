"""``--config-file``: the daemon's options from a YAML file, one key per long option.

::

    store: sqlite:///var/lib/etcd-adapter/etcd.db
    listen: [tcp:2379:interface=0.0.0.0]
    max-request-bytes: 1048576
    client-cert-auth: true

The keys are the long option names (etcd's config file does the same with its flags).
Values are checked as strictly as on the command line, plus their YAML type: a flag takes
``true``/``false``, a list option (``listen``) a list of strings or one string, a
comma-separated option (``advertise-client-urls``) a list or a string, any other option
a string or a number that its own check accepts.  An unknown key, a wrong type or a bad
value is a usage error naming the key.  ``null`` leaves the option unset.

Pure code over plain data: the caller says which options exist (the declared
:data:`etcdadapter.options.OPTIONS`), so options added later work here unchanged.
"""

from twisted.python import usage

from etcdadapter.options import COMMA_LIST, FLAG, LIST


class ConfigFileError(usage.UsageError):
    pass


def read(path):
    """The mapping in the YAML file at ``path`` (empty for an empty file)."""
    import yaml
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigFileError("--config-file %s: %s" % (path, e.strerror or e))
    except yaml.YAMLError as e:
        raise ConfigFileError("--config-file %s: not valid YAML: %s" % (path, e))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError("--config-file %s: expected a mapping of option names to "
                              "values, got %s" % (path, _type_name(data)))
    return data


def values(data, options, path="config file", refused=()):
    """The option values of ``data`` (from :func:`read`), checked and converted.

    ``options``: the declared options (:class:`etcdadapter.options.Option`: name, kind,
    coerce); ``refused``: names that cannot be set from a file.  Returns {name: value}."""
    known = {option.name: option for option in options}
    out = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigFileError("%s: option names are strings, not %r" % (path, key))
        where = "%s: %s" % (path, key)
        if key in refused:
            raise ConfigFileError("%s: cannot be set in a config file" % where)
        if value is None:
            continue
        option = known.get(key)
        if option is None:
            raise ConfigFileError("%s: unknown option (known: %s)" % (
                where, ", ".join(sorted(known))))
        if option.kind == FLAG:
            if not isinstance(value, bool):
                raise ConfigFileError("%s: expected true or false, got %s" % (
                    where, _type_name(value)))
            out[key] = value
        elif option.kind == LIST:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise ConfigFileError("%s: expected a list of strings, got %s" % (
                    where, _type_name(value)))
            out[key] = list(items)
        else:
            out[key] = _parameter(where, key, value, option.coerce,
                                  option.kind == COMMA_LIST)
    return out


def _parameter(where, key, value, coerce, comma_list):
    if comma_list and isinstance(value, list) \
            and all(isinstance(x, str) for x in value):
        value = ",".join(value)
    # bool is an int in Python: "max-txn-ops: true" must not become 1.
    scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if not scalar or (coerce is None and not isinstance(value, str)):
        raise ConfigFileError("%s: expected %s, got %s" % (
            where, "a string" if coerce is None else "a number or a string",
            _type_name(value)))
    if coerce is None:
        return value
    try:
        return coerce(str(value))    # exactly as the same text on the command line
    except (TypeError, ValueError) as e:
        raise ConfigFileError("%s: %s" % (where, e))


def _type_name(value):
    return {bool: "true/false", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
