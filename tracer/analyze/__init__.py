"""Offline analysis of saved node output: detect each file's format, parse, and estimate cost statically."""
