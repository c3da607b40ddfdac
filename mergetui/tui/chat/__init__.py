"""The Chat screen, as a package of panes: `screen` holds the session (the loaded model, its
permissions, the settings, the one job that runs) and wires a pane per tab (`chat_tab`,
`compare_tab`, `check_tab`, `settings_tab`); `load_dialog` picks a model, `sources` says which
checkpoints are offered, `stream` relays a growing reply, and the workers speak in `messages`.
"""
