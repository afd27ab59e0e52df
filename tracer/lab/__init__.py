"""The built-in lab: each CNI's policy datapath miniaturised in network namespaces.

model (spec, topology, ground truth) · datapath (interface, shared helpers) · datapaths/ (one module
per CNI and the registry) · topology (plan + plumbing) · policy (the study's rule list) ·
l7proxy · servers (lab processes) · manager (up/down/status/list).
"""
