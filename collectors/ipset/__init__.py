"""`ipset save` / `ipset list` output: sets, their types and sizes."""
