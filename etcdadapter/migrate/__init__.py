"""``etcd-adapter migrate``: live migration from a running etcd into a SQL store, at
etcd's revisions (:mod:`.command`)."""
