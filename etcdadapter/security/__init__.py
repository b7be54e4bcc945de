"""TLS, client-certificate identity policy and etcd Auth (being built)."""
