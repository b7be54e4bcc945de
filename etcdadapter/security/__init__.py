"""Who may connect and what they may do: TLS (``tls.py``), the client certificate's
identity (``peer.py``) and policy (``cert_policy.py``), etcd's users, roles and tokens
(``auth_store.py``, ``tokens.py``), key-range permissions with etcd's checks
(``permissions.py``) and the per-request decision every face asks (``authorizer.py``)."""
