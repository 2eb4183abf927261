"""The ``payflow`` command: ``main.main`` parses the command line and runs a subcommand (one
module each)."""
