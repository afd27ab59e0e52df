"""envoy collector: Envoy's admin statistics (JSON and Prometheus pages) and its access log."""
