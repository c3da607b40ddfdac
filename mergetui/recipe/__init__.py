"""The recipe: what to merge and how, independent of any screen.

- `model`: the dataclasses (Recipe, ModelEntry, Slice, SliceSource, Conditional).
- `methods`: every merge method's contract (the only list of methods).
- `io`: recipe files by extension, written atomically (`load_recipe`, `save_recipe`).
- `reader`: the one builder from TOML-shaped data, with every shape check; `toml_read`,
  `toml_write`, `toml_update` (saving keeps comments) and `yaml_import`, `yaml_export`,
  `yaml_syntax` for the two formats.
- `resolve`: which value each parameter takes for each tensor, exactly as mergekit resolves it.
- `validate`: every problem a person can fix, with where and how (`validate_recipe`).
"""
