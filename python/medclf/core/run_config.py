"""The one reader of a run folder's config.json (medclf.run-config/1, written by `medclf train`).

Later stages (test, report, --resume, the seed 002 test script) use only the fields checked here,
so a hand-edited or foreign file is refused with one line instead of failing deep inside a stage.
"""

from pathlib import Path

from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json

REQUIRED_FIELDS = {"arguments": dict, "architecture": str, "classes": list, "n_outputs": int, "normalisation": dict}


def read_run_config(path, required=REQUIRED_FIELDS):
    """config.json as a dict whose `required` fields ({name: type}) exist with those JSON types.
    `report` only describes the run, so it asks for an object and no fields."""
    path = Path(path)
    config = read_json(path)
    if not isinstance(config, dict):
        problem = f"a JSON {type(config).__name__}, not an object"
    else:
        wrong = [f"{key} ({kind.__name__})" for key, kind in required.items()
                 if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool)]
        problem = f"missing or mistyped field(s) {', '.join(wrong)}" if wrong else None
    if problem:
        raise MedclfError(f"{path}: not a medclf run config ({problem}); `medclf train` writes it: "
                          "restore the file or train the run again")
    return config
