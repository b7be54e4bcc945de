"""etcd v3 API server on Twisted with pluggable storage."""

__version__ = "0.1.0"


def version_text():
    """What ``--version`` prints: ours, then the etcd version the API reports (etcd's
    own ``--version`` has the same shape)."""
    import platform

    from twisted import copyright

    from etcdadapter.services.identity import SERVER_VERSION
    return ("etcd-adapter Version: %s\netcd API Version: %s\nPython Version: %s\n"
            "Twisted Version: %s" % (__version__, SERVER_VERSION,
                                     platform.python_version(), copyright.version))
