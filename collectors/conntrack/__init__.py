"""conntrack collector: conntrack table fill and per-CPU statistics (`conntrack -S`, /proc)."""
