"""cilium collector: Cilium's pinned policy and ipcache maps (`bpftool map dump`)."""
