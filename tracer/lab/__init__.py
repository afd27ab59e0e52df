"""The built-in lab: each CNI's policy datapath miniaturised in network namespaces.

model (spec, topology, ground truth) · datapath (interface, registry, shared helpers) ·
topology (plan + plumbing) · policy (the study's rule list) · one module per datapath ·
l7proxy · servers (lab processes) · manager (up/down/status/list).
"""
