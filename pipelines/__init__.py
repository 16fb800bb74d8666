"""cmi's stages and everything they share: artifacts, datasets, extractors, partitioning,
models, federated methods, engines and reports. The CLI (`cmi_cli`) is a thin layer over this."""

__version__ = "0.1.0"
