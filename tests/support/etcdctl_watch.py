"""``etcdctl watch`` running against a server, stopped and its output read, normalised so
that etcd's and ours compare (IDs and raft terms -> <ID>, revisions shifted back)."""

import json
import subprocess

from support import servers


def etcdctl_watch(server, args):
    """``etcdctl watch ARGS`` against ``server``, running (stdout and stderr piped)."""
    return servers.spawn_etcdctl(server, ["watch"] + list(args))


_ID_KEYS = ("cluster_id", "member_id", "raft_term")
_REV_KEYS = ("revision", "create_revision", "mod_revision", "compact_revision",
             "CompactRevision")


def _norm_json(obj, offset):
    if isinstance(obj, list):
        return [_norm_json(x, offset) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if k in _ID_KEYS and v:
            v = "<ID>"
        elif k in _REV_KEYS and isinstance(v, int) and v > 0:
            v -= offset
        else:
            v = _norm_json(v, offset)
        out[k] = v
    return out


def normalise_watch_output(text, offset, as_json):
    """``text`` as is, or with each JSON line normalised when ``as_json``."""
    if not as_json:
        return text
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.dumps(_norm_json(json.loads(line), offset), sort_keys=True))
        except ValueError:
            lines.append(line)
    return "\n".join(lines)


def stop_watch(proc):
    """Stop an ``etcdctl watch``: (stdout, stderr)."""
    proc.terminate()
    try:
        out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
