"""`cnitrace agent`: continuous profiling in rolling windows on a node, served over HTTP.

loop.py runs the windows (the profile's machinery, probes attached once), server.py serves
/metrics (cnitrace.reports.metrics), /report.json and /healthz, command.py is the click command.
"""
