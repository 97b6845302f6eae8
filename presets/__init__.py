"""Shipped presets: TOML data files, read with importlib.resources."""
