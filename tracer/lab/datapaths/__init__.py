"""The lab's datapaths, one module per CNI, and their one explicit registry (registry.py).

Each module builds a CNI's policy datapath inside lab namespaces the way that CNI programs it
(see cnitrace.lab.datapath for the interface). Modules here import the lab's base
(cnitrace.lab.datapath, model, topology, policy) and cnitrace.core; nothing imports them but
the registry.
"""
