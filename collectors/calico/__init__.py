"""Calico eBPF dataplane output: `calico-node -bpf counters dump` and `calico-node -bpf policy dump`."""
