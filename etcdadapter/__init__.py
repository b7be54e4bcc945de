"""etcd v3 API server on Twisted with pluggable storage."""

__version__ = "0.1.0"
