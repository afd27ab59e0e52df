"""Beyond one node: per-node profile documents merged into a cluster report (merge), the agent
DaemonSet (manifest, daemonset.yaml), and the kubectl plugin that collects the agents' reports
(collect, plugin); `cnitrace merge` and `cnitrace k8s` are in command."""
