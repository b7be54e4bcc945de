"""The client-certificate identity policy: which verified certificate may do what.

A JSON file (``--client-cert-policy``)::

    {
      "rules": [
        {"match": {"cn": "apisix"},
         "permissions": [{"key": "/apisix/", "prefix": true, "type": "READ"}]},
        {"match": {"dns": "admin.example.com"}, "permissions": "all"},
        {"match": {"uri": "spiffe://prod/ns/gw/sa/apisix"},
         "permissions": [{"key": "/apisix/", "range_end": "/apisiy", "type": "READWRITE"}]}
      ],
      "default": "deny"
    }

``match`` compares the certificate's subject CN (``cn``) or one of its subjectAltName
entries (``dns``, ``uri``, ``ip``) exactly; several keys in one match must all hold.  The
first rule that matches decides.  ``permissions`` is ``"all"`` (etcd's root: every key,
admin calls such as Compact) or a list of key ranges: ``key`` alone is one key, with
``"prefix": true`` every key starting with it, with ``range_end`` the interval [key,
range_end) (``"\\u0000"`` = every key from ``key`` on); ``type`` is READ, WRITE or
READWRITE as in etcd's roles.  A caller no rule matches (or without a certificate) gets
``default``: ``"deny"`` (nothing) or ``"all"``.

The policy is applied by :class:`etcdadapter.security.authorizer.Authorizer` to gRPC and
HTTP requests and to watches alike.
"""

import json

from etcdadapter.security.permissions import ALL, Permission, PermissionSet
from etcdadapter.store.mvcc import prefix_end

_TYPES = {"READ": (True, False), "WRITE": (False, True), "READWRITE": (True, True)}
_MATCH_KEYS = ("cn", "dns", "uri", "ip")
NONE = PermissionSet()


class PolicyError(Exception):
    pass


def _permission_set(spec, where):
    if spec == "all":
        return ALL
    if spec == "none":
        return NONE
    if not isinstance(spec, list):
        raise PolicyError('%s: permissions must be "all", "none" or a list' % where)
    perms = []
    for i, p in enumerate(spec):
        w = "%s permission %d" % (where, i)
        if not isinstance(p, dict) or not isinstance(p.get("key"), str) or not p["key"]:
            raise PolicyError("%s: needs a non-empty \"key\"" % w)
        kind = p.get("type", "READ")
        if kind not in _TYPES:
            raise PolicyError("%s: type must be READ, WRITE or READWRITE" % w)
        key = p["key"].encode("utf-8")
        if p.get("prefix") and "range_end" in p:
            raise PolicyError("%s: prefix and range_end exclude each other" % w)
        if p.get("prefix"):
            range_end = prefix_end(key)
        else:
            range_end = p.get("range_end", "").encode("utf-8")
        read, write = _TYPES[kind]
        perms.append(Permission(key, range_end, read, write))
    return PermissionSet(perms)


class CertPolicy(object):
    def __init__(self, rules, default):
        self.rules = rules          # [(match dict, PermissionSet)]
        self.default = default

    @classmethod
    def from_json(cls, obj):
        if not isinstance(obj, dict) or not isinstance(obj.get("rules", []), list):
            raise PolicyError('the policy is an object with a "rules" list')
        rules = []
        for i, rule in enumerate(obj.get("rules", [])):
            where = "rule %d" % i
            match = rule.get("match") if isinstance(rule, dict) else None
            if not isinstance(match, dict) or not match or \
                    any(k not in _MATCH_KEYS or not isinstance(v, str)
                        for k, v in match.items()):
                raise PolicyError("%s: match needs one or more of %s (strings)"
                                  % (where, ", ".join(_MATCH_KEYS)))
            rules.append((dict(match), _permission_set(rule.get("permissions"), where)))
        default = obj.get("default", "deny")
        if default not in ("deny", "all"):
            raise PolicyError('default must be "deny" or "all"')
        return cls(rules, ALL if default == "all" else NONE)

    @classmethod
    def load(cls, path):
        try:
            with open(path, "rb") as f:
                obj = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError) as e:
            raise PolicyError("cannot read %s: %s" % (path, e))
        try:
            return cls.from_json(obj)
        except PolicyError as e:
            raise PolicyError("%s: %s" % (path, e))

    def permissions_for(self, identity):
        """The PermissionSet of a PeerIdentity (or None: no certificate)."""
        if identity is not None:
            for match, perms in self.rules:
                if all(_matches(identity, k, v) for k, v in match.items()):
                    return perms
        return self.default


def _matches(identity, key, value):
    if key == "cn":
        return identity.common_name == value
    if key == "dns":
        return value in identity.dns_names
    if key == "uri":
        return value in identity.uris
    return value in identity.ips
