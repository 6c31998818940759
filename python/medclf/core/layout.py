"""The file names inside a run folder, in one place (MONAI's folder_layout): every stage that writes
or reads a run's files builds their paths here.

    results/<run>/config.json                  the resolved training configuration
    results/<run>/best.pt, last.pt             checkpoints
    results/<run>/predictions_<split>.json     `medclf test`, cv, probe, ensemble, calibrate
    results/<run>/results_<split>[_tag].json   `medclf report`
"""

from pathlib import Path

CONFIG = "config.json"
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
EXTERNAL_PREFIX = "external_"  # <run>/external_<name>/: another dataset scored by the run (medclf test --external)


def predictions_name(split):
    return f"predictions_{split}.json"


def predictions_file(folder, split):
    """FOLDER/predictions_<split>.json."""
    return Path(folder) / predictions_name(split)


def config_file(run_dir):
    return Path(run_dir) / CONFIG


def external_folder(run_dir, name):
    return Path(run_dir) / f"{EXTERNAL_PREFIX}{name}"


def is_external_folder(folder):
    return Path(folder).name.startswith(EXTERNAL_PREFIX)
