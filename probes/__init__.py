"""BPF probes as real `.bpf.c` files with a shared header, their specs (attach-point ladder, -D
options, map layout), the ladder's capability rules, the loader (the only module importing bcc)
and bpfsys (the bpf(2) calls bcc does not make). A library: imports core and collectors only.
"""
