"""One collector per source (iptables, nftables, OVS, BPF programs, Cilium maps, conntrack), each
a pure `parse` (text → frozen dataclasses) plus an acquisition `source` through the runner seam;
registry builds them for `snapshot` and the profile alike, for one Selection: per-namespace
state is read inside each selected namespace (netns.py keeps records keyed by namespace).
A library: imports core only.
"""
