"""mergetui: a terminal workbench for merging language-model checkpoints."""

__version__ = "0.1.0"
