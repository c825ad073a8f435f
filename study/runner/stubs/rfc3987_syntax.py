"""Stands in for the rfc3987-syntax package in the processes Ray starts for
a study: see study/lean_start.py. jsonschema imports it only to register its
"iri" format checks, and skips them when the import fails."""

raise ImportError("rfc3987_syntax is skipped in a study's Ray processes (study/lean_start.py)")
