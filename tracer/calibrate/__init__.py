"""This node's own costs, measured and cached per kernel, CPU and backend: ns per rule
evaluation by rule shape (rules), ns per OVS table (ovs), and the fitted cost models (costmodel)
that turn work counts into modelled time. Imports the lab, traffic, the libraries and core.
"""
