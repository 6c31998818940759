"""The table of medclf commands: one module `medclf.commands.<name>` per command, each with HELP,
add_arguments(parser) and run(args) -> int. Modules are loaded by name (a plugin table), so that
`medclf --help` imports no torch and a command whose optional libraries are missing is left out.

The workflows that run other commands (study, sweep, demo) receive what they need from here as
plain values (`stage_commands()`): the library below never imports the command layer.
"""

import argparse
import importlib
import sys

from medclf import __version__
from medclf.core.errors import MedclfError

COMMANDS = ["partition", "organize", "train", "test", "report", "compare", "study", "demo", "explain", "quality",
            "calibrate", "conformal", "serve", "ensemble", "sweep", "export", "cv", "crop", "embed", "probe",
            "lr-find", "plan"]


def available_commands():
    """(name, module) of every command this installation can load."""
    for name in COMMANDS:
        module = f"{__package__}.{name.replace('-', '_')}"  # lr-find -> commands/lr_find.py
        try:
            yield name, importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


class HelpFormatter(argparse.HelpFormatter):
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
    for name, module in available_commands():
        p = sub.add_parser(
            name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _name=name)
    return parser


def run_command(argv=None):
    """Parse and run one medclf command line; its exit status (MedclfError -> one line, status 1)."""
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


def stage_parsers():
    """The argparse parser of each medclf command that exists in this installation."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def stage_validators():
    """{command: validate(args)} of the commands that check their values without running
    (`commands/<name>.py` defines `validate`), e.g. train's architecture and weights names."""
    return {name: module.validate for name, module in available_commands() if hasattr(module, "validate")}


def stage_commands():
    """What a study, a sweep or the demo needs to run other commands: parsers, validators, runner."""
    return {"parsers": stage_parsers(), "validators": stage_validators(), "runner": run_command}
