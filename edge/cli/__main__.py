"""`python -m edge.cli`: the same as the `edge` command (the live tests start servers this way)."""

from edge.cli import main

main()
