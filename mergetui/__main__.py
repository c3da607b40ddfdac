from mergetui.cli import run

run()
