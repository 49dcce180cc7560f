"""One module per ``wsss-ext`` sub-command.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; :data:`wsss_app.cli.COMMANDS` lists them in the order
``wsss-ext --help`` shows. A command reports a user's mistake by raising
``ValueError`` / ``FileNotFoundError`` / ``NotADirectoryError`` with a message
naming the argument: the CLI prints it as one line and exits with status 2.
"""
