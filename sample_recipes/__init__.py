"""Sample recipes in the shapes people use (TOML and mergekit YAML)."""
