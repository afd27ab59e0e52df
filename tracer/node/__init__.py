"""What this node is and can do: the capability checks (each decided by trying it), CNI and
kube-proxy detection from node-local evidence, and `cnitrace doctor`. May import the
libraries (collectors, probes, reports) and core.
"""
