"""Lets `python -m avpcli.cli` run the command-line interface, as `python -m avpcli` does."""

from avpcli.cli.app import main

main()
