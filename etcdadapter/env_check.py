"""Unknown ``ETCD_ADAPTER_*`` environment variables: warned about, not refused.

A typo (``ETCD_ADAPTER_STOR=sqlite:///...``) would otherwise leave the server on its
default ``memory://`` store without a word.  We warn (as etcd does for unknown ``ETCD_*``
variables) rather than refuse because the environment is not all ours: Kubernetes gives
every container ``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_PORT_2379_TCP`` and the like for
each Service -- a Service named ``etcd-adapter`` makes ``ETCD_ADAPTER_PORT=tcp://...`` --
and refusing those would stop the pod.  Those Kubernetes names are not even warned about.
"""

import difflib
import re

_KUBERNETES = re.compile(r"(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)"
                         r"(_PROTO|_PORT|_ADDR)?)?)$")


def unknown(environ, prefix, known):
    """[(name, a known name it may be a typo of, or None)] for the variables in
    ``environ`` that start with ``prefix`` but name no option (``known``: option
    suffixes, upper case with underscores)."""
    out = []
    for name in sorted(environ):
        if not name.startswith(prefix):
            continue
        suffix = name[len(prefix):]
        if suffix in known or _KUBERNETES.match(suffix):
            continue
        close = difflib.get_close_matches(suffix, known, n=1, cutoff=0.7)
        out.append((name, prefix + close[0] if close else None))
    return out


def warning(name, suggestion):
    text = "etcd-adapter: warning: unknown environment variable %s ignored" % name
    if suggestion:
        text += " (did you mean %s?)" % suggestion
    return text
