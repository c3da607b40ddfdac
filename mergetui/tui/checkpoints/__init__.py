"""The Checkpoints screen (F2) as a package of panes.

`screen` wires them: `table` (the filter box and the list, with its sorting), `hub_search` (the
Hub's order, tags and search worker), `details` (the highlighted checkpoint or the compatibility
report; its text from `text`), `download` (the progress strip), `adding` (a checkpoint into the
recipe), and `messages` (what the panes tell the screen).
"""
