"""The `medclf` command: one subcommand per pipeline stage (the table: medclf.commands.registry)."""

import sys

from medclf.commands.registry import build_parser, run_command

__all__ = ["build_parser", "main"]


def main(argv=None):
    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
