"""The etcd v3 services (KV, Watch, Lease, Auth, Maintenance, Cluster): thin handlers that
validate like etcd's v3rpc layer and delegate to the store; shared by both transports."""
