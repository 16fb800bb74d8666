"""The `cmi` command-line interface (Typer): one module per command, each a thin layer over `pipelines`."""
