"""Rendering of `cnitrace analyze` and dump diffs: terminal, JSON and HTML."""
