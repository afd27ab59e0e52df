"""Helpers every test tier shares: throwaway network namespaces and unique cnit-prefixed names."""
