"""API dialects: thin adapters (parse -> core -> render) over the invocation core."""
