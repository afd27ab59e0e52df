"""cnitrace: where each packet's time goes in a Kubernetes CNI's policy datapath."""

__version__ = "0.1.0"
