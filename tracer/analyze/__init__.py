"""Offline analysis of saved node output: detect each file's format, parse, and estimate cost statically.

Pure from text to document; I/O only at the edges (inputs: reading files; run: the cached
calibration and `--calibrate`):

    sections  pasted text -> the tool outputs it holds, with their prompts' commands
    formats   an output -> its format (detect) and the collector parser for it (PARSERS)
    dumps     a section -> a parsed Dump (or a Skipped with the reason)
    costs     ns per rule evaluation: this node's cached calibration, else reference figures
    static    worst / typical rule evaluations per packet from a ruleset's structure
    iptables, nftables, ovs, bpf, state, cni   one concern each
    analysis  every dump of one node -> the analyze document
    diff      two analyses -> what grew
"""
