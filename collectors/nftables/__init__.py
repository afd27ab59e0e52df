"""nftables collector: `nft -j list ruleset` → chains, rules and counters, sets/maps, evaluations per packet."""

from cnitrace.collectors.nftables.graph import costs_by_table, nodes_of, rules_without_counters
from cnitrace.collectors.nftables.parse import NftChain, NftCounter, NftRule, NftSet, parse
from cnitrace.collectors.nftables.source import NftablesCollector, records_delta

__all__ = ["NftChain", "NftCounter", "NftRule", "NftSet", "NftablesCollector", "costs_by_table", "nodes_of",
           "parse", "records_delta", "rules_without_counters"]
