"""iptables collector: `*-save -c` of both backends → rules, counters, jump graph, evaluations per packet."""

from cnitrace.collectors.iptables.graph import (ChainCost, costs_by_table, edges, evaluate, nodes_of, ruleset_delta,
                                                 walk_order)
from cnitrace.collectors.iptables.parse import Chain, Rule, Ruleset, parse, parse_ruleset
from cnitrace.collectors.iptables.source import IptablesCollector, ruleset_of

__all__ = ["Chain", "ChainCost", "IptablesCollector", "Rule", "Ruleset", "costs_by_table", "edges", "evaluate",
           "nodes_of", "parse", "parse_ruleset", "ruleset_delta", "ruleset_of", "walk_order"]
