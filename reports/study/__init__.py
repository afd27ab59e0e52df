"""The study report: terminal table (terminal.py), HTML (html.py, study.html.j2) and the JSON schema
(study.schema.json, schema.py) of `cnitrace study` documents."""
