"""``python -m conveyor``: the command line."""

from conveyor.cli import main

main()
