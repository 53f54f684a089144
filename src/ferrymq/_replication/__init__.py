"""Replication of a partition's log between nodes: the sans-I/O protocol (``_replica``),
its messages and their wire form, and the controller's election rule. No etcd and no
sockets here: the coordinator and the transport are the shell's."""
