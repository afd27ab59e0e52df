"""A profile document rendered: terminal table, HTML report, and the diff of two runs."""
