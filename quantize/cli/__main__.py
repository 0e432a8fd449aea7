"""`python -m quantize.cli`: the same as the `edge-quantize` command."""

from quantize.cli import main

main()
