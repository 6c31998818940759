"""`medclf --help` and every command's --help answer without importing torch: the parser of each
command imports only what its options need (defaults and choices come from torch-free modules)."""

import json
import subprocess
import sys

from medclf.commands import registry

HEAVY = ("torch", "torchvision", "cv2", "sklearn", "matplotlib")
PROBE = ("import json, sys\n"
         "from medclf.commands.registry import build_parser\n"
         "build_parser()\n"
         "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))")


def test_building_every_commands_parser_imports_no_heavy_library():
    done = subprocess.run([sys.executable, "-c", PROBE, *HEAVY], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_medclf_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "medclf", "--help"], capture_output=True, text=True, check=True)
    assert all(name in done.stdout for name in registry.COMMANDS)
