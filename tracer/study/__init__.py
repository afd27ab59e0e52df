"""`cnitrace study`: the seed measurement study's experiment families reproduced on the lab, each
result beside the study's published figure (figures.json) and attributed to a datapath stage.

plan.py (which points), figures.py (the data file), compare.py (shapes), attribution.py (stages),
table.py (rows) are pure; run.py orchestrates; command.py is the click command."""
