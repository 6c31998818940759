"""The `medclf` command: one subcommand per pipeline stage.

Each subcommand lives in `medclf.commands.<name>` and provides HELP, add_arguments(parser)
and run(args) -> int. Command modules import heavy libraries (torch) inside run(), so
`medclf --help` and `medclf partition` start fast.
"""

import argparse
import importlib
import sys

from medclf import __version__
from medclf.errors import MedclfError

COMMANDS = ["partition", "organize", "train", "test", "report", "compare", "study", "demo", "explain", "quality",
            "calibrate", "conformal", "serve", "ensemble", "sweep", "export", "cv", "crop", "embed", "probe",
            "lr-find"]


def _available_commands():
    for name in COMMANDS:
        module = f"medclf.commands.{name.replace('-', '_')}"  # lr-find -> commands/lr_find.py
        try:
            yield name, importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


class _HelpFormatter(argparse.HelpFormatter):
    """Append "(default: X)" only where it informs: not for None, flags, or help that
    already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: {default})" if text else f"(default: {default})"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="medclf",
        description="Reproducible medical image classification studies: "
        "partition -> organize -> train -> test -> report.",
    )
    parser.add_argument("--version", action="version", version=f"medclf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _available_commands():
        p = sub.add_parser(
            name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=_HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _name=name)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # as typed: `train --nproc` passes it on
    try:
        return int(args._run(args) or 0)
    except MedclfError as exc:
        print(f"medclf {args._name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"medclf {args._name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
