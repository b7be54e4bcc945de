"""etcd snapshots both ways: the bbolt file format (:mod:`.bolt_layout`,
:mod:`.bolt_writer`, :mod:`.bolt_reader`), etcd's buckets in it (:mod:`.etcd_format`),
saving a store's state as an etcd snapshot (:mod:`.export`, served by
Maintenance.Snapshot) and restoring one into a store (:mod:`.restore`, the command
``etcd-adapter snapshot restore FILE --to URL``)."""
