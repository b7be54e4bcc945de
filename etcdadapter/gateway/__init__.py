"""The HTTP face: etcd's JSON gateway routes plus /version, /health and /metrics."""
