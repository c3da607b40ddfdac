"""Bundled themes (one TOML file each)."""
