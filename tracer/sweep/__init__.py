"""`cnitrace sweep`: cost curves across datapaths, rule counts and clients (run), the points,
fits and cliffs (model), and the per-point counter readings (counters). Imports the profile,
the lab, calibrate, the libraries and core.
"""
