"""The base every room imports: errors and exit codes, the subprocess runner seam, the Session
that owns every kernel object's lifetime, the state file and its removers, the capability
model (checks are installed at start-up by cnitrace.node.checks), the Selection (interfaces and
namespaces), live progress. Imports nothing from cnitrace above it.
"""
