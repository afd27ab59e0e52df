"""`cnitrace profile` as a short pipeline: config (options, checked) → target (what to watch) →
window (snapshots, probes, traffic) → document (attribution into the stage tree, the versioned
JSON). May import everything below the commands: attribution, calibrate, traffic, lab, the
libraries and core.
"""
