"""Twisted plugin: makes ``twistd etcd-adapter`` run etcdadapter.tap.makeService.

This file lives in twisted/plugins/ (no __init__.py there, nor in twisted/): it is installed
into site-packages/twisted/plugins/.  Keep it import-cheap; Twisted imports every plugin
module whenever it scans for plugins (``twistd --help``).
"""

from twisted.application.service import ServiceMaker

etcdAdapter = ServiceMaker(
    "etcd-adapter",
    "etcdadapter.tap",
    "etcd v3 API server with pluggable storage",
    "etcd-adapter",
)
