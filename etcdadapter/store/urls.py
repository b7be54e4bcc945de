"""Turn a ``--store`` URL into a Store.

``memory://`` is the embedded default; ``memory://?initial_revision=N`` pins the first
revision (otherwise it is seeded from the wall clock so it never goes down across restarts).
SQL URLs (sqlite://, mysql://, tidb://, postgresql://) arrive with the SQL stores.
"""

from urllib.parse import parse_qs, urlsplit


class StoreURLError(ValueError):
    pass


def open_store(url):
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if scheme == "memory":
        from etcdadapter.store.memory import MemoryStore
        initial = query.pop("initial_revision", None)
        if query:
            raise StoreURLError("unknown memory store option(s): %s" % ", ".join(sorted(query)))
        try:
            initial = int(initial) if initial is not None else None
        except ValueError:
            raise StoreURLError("initial_revision must be an integer: %r" % initial)
        if initial is not None and initial < 1:
            raise StoreURLError("initial_revision must be >= 1")
        return MemoryStore(initial_revision=initial)
    raise StoreURLError("unsupported store URL %r (supported: memory://)" % (url,))
