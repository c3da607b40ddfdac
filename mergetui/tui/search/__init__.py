"""The Search screen: find per-layer merge weights for the open recipe (mergetui.search)."""
