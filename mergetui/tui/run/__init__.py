"""The Run screen, as a package of panes: `screen` wires them, `progress` draws a running merge,
`tabs` holds the Log and History tabs, `worker` runs the engine in a thread and relays its events
as `messages`, and `clocks` are the times the screen reads (the snapshot tests fix them).
"""
