"""The fault matrix (issue 16 item 4): every command killed with SIGKILL at each of its phases,
damaged files, an unwritable state directory; after `cnitrace cleanup` nothing may be left.

Root tier: runs cnitrace in child processes with private state (and cache) directories and
compares the node's picture (tests.support.nodestate) before and after. `make test` runs it.
"""
