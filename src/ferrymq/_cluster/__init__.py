"""Cluster mode's I/O shell: node-to-node transport, and (to come) the node runtime,
the controller and the local cluster commands. The protocol itself is sans-I/O in
``ferrymq._replication``; consensus is etcd's, behind ``ferrymq._coordination``."""
