"""`python -m edge.cli`: the `edge` command (the tests and firmware start the server this way)."""

from edge.cli import main

main()
