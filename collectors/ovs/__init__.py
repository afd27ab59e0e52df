"""ovs collector: Open vSwitch (`ovs-ofctl dump-flows/dump-tables`, `ovs-appctl dpctl/dump-flows`, coverage)."""
