"""What ``--listen`` (and etcd's ``--listen-client-urls``, ``--listen-metrics-urls``)
accept, turned into Twisted endpoint strings while the options are parsed, so that a
mistake stops the start with one line instead of failing after it.

Accepted, as etcd users write them:

* ``http://127.0.0.1:2379``, ``https://10.0.0.5:2379``, ``http://[::1]:2379``,
  ``http://localhost:2379`` (etcd's listen URLs; the scheme must match TLS: every listener
  serves TLS when ``--cert-file`` is given);
* ``127.0.0.1:2379``, ``[::]:2379``, ``0.0.0.0:2379``, ``localhost:2379``;
* a Twisted endpoint string: ``tcp:2379:interface=127.0.0.1``, ``unix:/run/etcd.sock``
  (``tcp:2379`` without ``interface=`` is every interface, as Twisted documents).

Refused, as etcd refuses them ("expected IP in URL for binding"): a host name other than
``localhost`` (which address would it bind?), an empty host (``http://:2379``), and a bare
port (``2379``: this host only, or every interface?  say which).
"""

import ipaddress
from urllib.parse import urlsplit

_TWISTED_KINDS = ("tcp", "tcp6", "unix", "ssl", "systemd")


class ListenError(ValueError):
    pass


def endpoint(text, tls=False, option="--listen"):
    """The Twisted endpoint string for ``text``; ListenError says what is wrong.
    ``tls``: the listener serves TLS (an ``http://`` URL is then a mistake, and
    ``https://`` needs it)."""
    text = text.strip()
    where = "%s %s" % (option, text)
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https", "unix", "unixs"):
            raise ListenError("%s: unsupported scheme %r (http://IP:PORT, https://IP:PORT)"
                              % (where, parts.scheme))
        if scheme.startswith("unix"):
            return "unix:" + (parts.netloc + parts.path)
        if scheme == "https" and not tls:
            raise ListenError("%s: https needs --cert-file and --key-file" % where)
        if scheme == "http" and tls:
            raise ListenError("%s: with --cert-file every listener serves TLS; write "
                              "https://%s" % (where, parts.netloc))
        if parts.path not in ("", "/") or parts.query:
            raise ListenError("%s: a listen URL has no path" % where)
        return _tcp(where, parts.netloc)
    kind = text.split(":", 1)[0]
    if kind in _TWISTED_KINDS:
        return _twisted(where, text)
    return _tcp(where, text)


def _tcp(where, netloc):
    host, sep, port = netloc.rpartition(":")
    if not sep:
        raise ListenError("%s: not an address; write IP:PORT, e.g. 127.0.0.1:2379 (this "
                          "host only) or 0.0.0.0:2379 (every interface)" % where)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ListenError("%s: bad port %r" % (where, port))
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ListenError("%s: expected IP in URL for binding (as etcd: an address such "
                          "as 127.0.0.1 or 0.0.0.0, or localhost)" % where)
    if ip.version == 6:
        return "tcp6:%s:interface=%s" % (port, str(ip).replace(":", "\\:"))
    return "tcp:%s:interface=%s" % (port, ip)


def _twisted(where, text):
    from twisted.internet import endpoints
    try:
        # No reactor needed to parse: the endpoint only keeps it until listen().
        endpoints.serverFromString(None, text)
    except (ValueError, TypeError, KeyError) as e:
        raise ListenError("%s: not a valid endpoint: %s" % (where, e))
    return text


def every_interface_warning(description, option="--listen"):
    """A warning for a Twisted TCP endpoint without ``interface=``: Twisted listens on
    every interface then, which a reader of ``tcp:2379`` may not expect; None if the
    endpoint says where it listens."""
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6") or "interface=" in rest:
        return None
    port = rest.split(":", 1)[0]
    return ("etcd-adapter: warning: %s %s listens on every interface; write "
            "0.0.0.0:%s to say so, or 127.0.0.1:%s for this host only"
            % (option, description, port, port))


def url_list(text):
    """The items of a comma-separated list of URLs (etcd's flag format)."""
    return [u.strip() for u in text.split(",") if u.strip()]
