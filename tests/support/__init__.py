"""Helpers every test tier shares: throwaway network namespaces, unique cnit-prefixed names and
the node-state picture that tells whether a run left the node as it found it."""
