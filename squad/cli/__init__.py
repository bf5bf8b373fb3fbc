"""The ``squad`` command line: one module per command group, wired together in ``squad.cli.main``."""
