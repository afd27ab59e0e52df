"""Bounded traffic inside lab namespaces or toward a target the user named: generators (crafted
probes, iperf3, sockperf, ab) with parsers of their output, and the small senders run as
subprocesses inside a namespace (send: scapy; flood: raw sockets). Imports core and the lab model.
"""
