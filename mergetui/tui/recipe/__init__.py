"""The Recipe screen: a pane per tab (Setup, Layers, Slices, Problems) and the screen that wires them."""
