"""bpfprog collector: BPF programs and their attachments (`bpftool prog/net/map show -j`, tc filters), bpf_stats run time."""
