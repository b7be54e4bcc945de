"""Turn a ``--store`` URL into a Store.

``memory://`` is the embedded default; ``memory://?initial_revision=N`` pins the first
revision (otherwise it is seeded from the wall clock in microseconds so that it does not go
down across restarts); ``memory://?floor_file=PATH`` makes that a guarantee whatever the
clock does (:class:`etcdadapter.store.memory.RevisionFloor`); ``memory://?snapshot=PATH``
starts from an etcd snapshot file (:mod:`etcdadapter.snapshot.restore`).
SQL URLs (``sqlite:///path``, ``mysql://``, ``tidb://``, ``postgresql://``/``postgres://``)
and their options are described in :mod:`etcdadapter.store.sql`.
"""

from urllib.parse import parse_qs, urlsplit


class StoreURLError(ValueError):
    pass


def redact(url):
    """``url`` with its password replaced by ``***`` (for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return parts._replace(netloc="%s:***@%s" % (name, host)).geturl()


def open_store(url, **store_kw):
    """The Store for ``url`` (not started).  ``store_kw`` go to the SQL store's
    constructor (tests pass ``clock``); the memory store takes ``clock`` or
    ``reactor`` as its clock."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if scheme == "memory":
        from etcdadapter.store.memory import MemoryStore, RevisionFloorError
        initial = query.pop("initial_revision", None)
        floor_file = query.pop("floor_file", None)
        snapshot = query.pop("snapshot", None)
        if query:
            raise StoreURLError("unknown memory store option(s): %s" % ", ".join(sorted(query)))
        try:
            initial = int(initial) if initial is not None else None
        except ValueError:
            raise StoreURLError("initial_revision must be an integer: %r" % initial)
        if initial is not None and initial < 1:
            raise StoreURLError("initial_revision must be >= 1")
        if snapshot is not None and (initial is not None or floor_file is not None):
            raise StoreURLError("snapshot= sets the revisions: not with initial_revision "
                                "or floor_file")
        try:
            return MemoryStore(initial_revision=initial, floor_file=floor_file,
                               clock=store_kw.get("clock") or store_kw.get("reactor"),
                               snapshot_file=snapshot)
        except RevisionFloorError as e:
            raise StoreURLError(str(e))
    from etcdadapter.store import sql
    if scheme in sql.SCHEMES:
        try:
            return sql.open_sql_store(scheme, parts, query, **store_kw)
        except ImportError as e:
            raise StoreURLError(_missing_driver(scheme, e))
    raise StoreURLError("unsupported store URL %r (supported: memory://, %s)"
                        % (url, ", ".join(s + "://" for s in sql.SCHEMES)))


# The driver each store needs that `pip install .` alone does not bring (an extra).
_EXTRAS = {"postgresql": ("psycopg", "postgresql"), "postgres": ("psycopg", "postgresql")}


def _missing_driver(scheme, error):
    driver, extra = _EXTRAS.get(scheme, (getattr(error, "name", None) or str(error), None))
    text = "%s:// needs the Python package %s, which is not installed" % (scheme, driver)
    if extra:
        text += ": pip install 'etcd-adapter[%s]'" % extra
    return text
