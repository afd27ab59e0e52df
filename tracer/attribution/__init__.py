"""Pure arithmetic from counters and probe figures to the stage tree: tree (stages, nodes,
shares, headline), netfilter (chain work from rule counters), figures (probe aggregates into
attribution inputs), datapath (OVS tables, BPF programs). No I/O beyond /proc reads of CPU time
in datapath; table-driven tests. Imports the libraries and core only.
"""
