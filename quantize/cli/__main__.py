"""`python -m quantize.cli`: the `edge-quantize` command."""

from quantize.cli import main

main()
