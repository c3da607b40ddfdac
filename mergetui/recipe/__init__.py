"""The recipe: what to merge and how, independent of any screen.

- `model`: the dataclasses (Recipe, ModelEntry, Slice, SliceSource, Conditional).
- `methods`: every merge method's contract (the only list of methods).
- `io`: mergetui TOML and mergekit YAML, read and written (`load_recipe`, `save_recipe`).
- `resolve`: which value each parameter takes for each tensor, exactly as mergekit resolves it.
- `validate`: every problem a person can fix, with where and how (`validate_recipe`).
"""
