"""Lets `python -m avpcli` run the command-line interface."""

from avpcli.cli import main

main()
