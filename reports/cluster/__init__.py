"""Rendering of the cluster document (`cnitrace merge`, `kubectl cnitrace report`): terminal,
HTML and its JSON schema (cluster.schema.json)."""
