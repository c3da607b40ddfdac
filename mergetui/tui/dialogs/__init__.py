"""The app's modal dialogs, one module per kind; each answers through `dismiss` (None: cancelled).

`base` (the frame every dialog shares), `confirm` (questions answered by a key or a button),
`paths` (one line of text, with path completion), `models` (add a model), `presets` (fill a row
with a curve), `methods` (pick the merge method), `slices` (one slice source).
"""
