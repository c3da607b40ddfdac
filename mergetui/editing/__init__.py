"""The recipe-editing model: the open document with its undo history, the layer table the Recipe
screen's grid shows, presets, operations over a selection and the suggest rule.

Plain Python on top of `mergetui.recipe` and `mergetui.merge.analysis`; it never imports textual, so
every rule here is tested without an app and the screens stay thin.
"""
