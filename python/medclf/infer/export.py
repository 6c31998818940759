"""`medclf export --format onnx`: a run's best.pt as an ONNX model that runs without torch.

Steps: load the run (predict.load_run, weights_only) -> torch.onnx.export with the dynamo exporter,
a free batch dimension, input `image` (N, 3, S, S) float32 and output `logits` -> the metadata
contract of medclf.infer.onnx_model (classes, positive class, probability rule, preprocessing,
provenance) -> onnx.checker (full check) -> onnxruntime against torch on the first `check` val
images at batch sizes 1 and N, refused above TOLERANCE -> the model (atomically) and a record
beside it, `<stem>.export.json` ({"schema": "medclf.onnx-export/1", model, model_sha256, opset,
metadata, check, library_versions, git_commit}). Nothing is written when a step fails.
"""

import contextlib
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medclf.core.errors import MedclfError, UnreadableImageError
from medclf.core.fileio import atomic_path, sha256_file, write_json
from medclf.core.schemas import ONNX_EXPORT
from medclf.data import preprocess
from medclf.data.imageio import read_image
from medclf.infer import onnx_model

FORMATS = ("onnx",)
TOLERANCE = 1e-4  # largest probability difference between onnxruntime and torch that an export may have
RANDOM_CHECK_SEED = 0


def _log(message, progress):
    if progress:
        print(f"medclf export: {message}", file=sys.stderr, flush=True)


def preprocessing_of(config):
    """The run's evaluation preprocessing, as medclf.data.preprocess.model_input's arguments."""
    from medclf.data import transforms

    run_input = transforms.eval_input(config)
    return {"input": onnx_model.INPUT_NAME, "layout": "NCHW", "dtype": "float32", "color": "RGB",
            "resize_side": run_input.side, "img_size": run_input.img_size, "mean": list(run_input.mean),
            "std": list(run_input.std),
            "steps": "resize (bilinear, aspect kept) so the shorter side is resize_side; centre crop "
                     "resize_side x resize_side; centre crop img_size x img_size; x / 255; (x - mean) / std"}


def provenance_of(run_dir, config, checkpoint):
    from medclf.core.provenance import git_commit

    return {"run": str(Path(run_dir).resolve()), "architecture": config["architecture"], "checkpoint": "best.pt",
            "checkpoint_sha256": sha256_file(Path(run_dir) / "best.pt"), "epoch": int(checkpoint.get("epoch", 0)) or None,
            "config_sha256": sha256_file(Path(run_dir) / "config.json"), "seed": config.get("seed"),
            "trained": config.get("created"), "run_git_commit": config.get("git_commit"),
            "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"), "export_git_commit": git_commit()}


def check_batch(run_dir, config, prep, n, data_root=None):
    """(inputs, source): the first n val images preprocessed as served, or with n = 0 two seeded
    random inputs (for a run whose images are not at hand)."""
    from medclf.core.splits import load_run_splits
    from medclf.data.datasets import split_paths

    if n <= 0:
        rng = np.random.default_rng(RANDOM_CHECK_SEED)
        return rng.standard_normal((2, 3, prep["img_size"], prep["img_size"])).astype(np.float32), "random"
    files, _, _ = split_paths(load_run_splits(run_dir, config, data_root), "val")
    try:
        images = [read_image(path) for path in files[:n]]
    except UnreadableImageError as exc:
        raise MedclfError(f"{exc}; the export is checked on the run's val images: pass --data-root "
                          "where they are now, or --check 0 to check on random inputs") from exc
    if not images:
        raise MedclfError(f"{run_dir}: the run's val split is empty; use --check 0 to check on random inputs")
    return preprocess.model_input(images, prep["resize_side"], prep["img_size"], prep["mean"], prep["std"]), "val split"


def require_onnx_libraries():
    """onnx, onnxscript (the dynamo exporter's translator) and onnxruntime, or one line naming the install."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise MedclfError(f"medclf export --format onnx needs {', '.join(missing)}: pip install 'medclf[onnx]' "
                          "(versions pinned in requirements.txt)")


def export_program(model, img_size, opset=None):
    """torch.onnx.export (dynamo) of `model` with a free batch dimension; the exporter's output
    goes to stderr, so stdout keeps only the paths medclf prints."""
    import torch

    example = torch.zeros(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return torch.onnx.export(model, (example,), dynamo=True, input_names=[onnx_model.INPUT_NAME],
                                     output_names=[onnx_model.OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                     opset_version=opset, verbose=False)
    except Exception as exc:  # the exporter raises many types (TorchExportError, ConversionError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MedclfError(f"{type(model).__name__}: torch.onnx.export (dynamo) failed ({type(exc).__name__}: {first}); "
                          "this architecture cannot be exported as it is: try --opset, or export another "
                          "architecture (docs/export.md lists the tested ones)") from exc


def check_model_file(path):
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MedclfError(f"{path}: the exported model fails onnx.checker ({first}); the export is not written") from exc


def compare_with_torch(path, model, inputs, rule):
    """onnxruntime against torch on the same inputs, at batch size 1 and all at once."""
    import torch

    session = onnx_model.OnnxClassifier(path, threads=1)
    with torch.inference_mode():
        expected = onnx_model.probabilities_from_logits(model(torch.from_numpy(inputs)).float().numpy(), rule)
    one_by_one = np.concatenate([session.logits(inputs[i:i + 1]) for i in range(len(inputs))])
    runs = [onnx_model.probabilities_from_logits(logits, rule) for logits in (one_by_one, session.logits(inputs))]
    return {"images": int(len(inputs)), "batch_sizes": [1, int(len(inputs))], "tolerance": TOLERANCE,
            "max_probability_difference": float(max(np.abs(p - expected).max() for p in runs)),
            "argmax_agrees": bool(all((p.argmax(1) == expected.argmax(1)).all() for p in runs))}


def write_checked_model(program, model, inputs, source, rule, out, progress):
    """Save the exported program to `out` once it passes onnx.checker and agrees with torch
    (TOLERANCE, same argmax); returns the comparison. A refused model leaves `out` as it was."""
    with atomic_path(out) as tmp:
        program.save(str(tmp))
        check_model_file(tmp)
        _log(f"checking onnxruntime against torch on {len(inputs)} {source} inputs", progress)
        parity = dict(compare_with_torch(tmp, model, inputs, rule), source=source)
        if parity["max_probability_difference"] > TOLERANCE or not parity["argmax_agrees"]:
            raise MedclfError(f"{out}: onnxruntime and torch disagree on the {source} check inputs (largest probability "
                              f"difference {parity['max_probability_difference']:.2e}, tolerance {TOLERANCE:g}, argmax "
                              f"{'agrees' if parity['argmax_agrees'] else 'differs'}); the export is not written")
    return parity


def library_versions():
    import onnx
    import onnxruntime
    import onnxscript

    from medclf.core.provenance import library_versions as recorded_versions

    return {**recorded_versions(), "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__}


def record_path(model_path):
    """The record written beside an exported model: model.onnx -> model.export.json."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.export.json")


def run_export(run_dir, fmt="onnx", out=None, check=16, data_root=None, opset=None, progress=True):
    """Export a run's best.pt; returns (model path, record path). See the module docstring."""
    from medclf.infer.predict import load_run

    if fmt not in FORMATS:
        raise MedclfError(f"--format {fmt}: unknown export format; use --format {' or '.join(FORMATS)}")
    require_onnx_libraries()
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "model.onnx"
    if out.is_dir():
        raise MedclfError(f"{out}: is a folder; give --out the path of the .onnx file to write")
    model, config, checkpoint = load_run(run_dir, "cpu")
    if config.get("metadata"):
        names = ",".join(spec["name"] for spec in config["metadata"]["columns"])
        raise MedclfError(f"{run_dir}: trained with --metadata-features {names}; an ONNX export takes images only "
                          "(one input), so it cannot feed the metadata branch: serve this run with "
                          f"`medclf serve --run {run_dir}`, or export a run trained without --metadata-features")
    inputs, source = check_batch(run_dir, config, preprocessing_of(config), check, data_root)
    return export_model(model, config, provenance_of(run_dir, config, checkpoint), out, inputs, source, opset, progress)


def export_model(model, config, provenance, out, inputs, source, opset=None, progress=True):
    """Export an eval-mode `model` of a run with this config.json; returns (model path, record path)."""
    from medclf.core.provenance import git_commit

    prep = preprocessing_of(config)
    metadata = onnx_model.export_metadata(config["classes"], config.get("positive_class"), config["n_outputs"],
                                          prep, provenance)
    meta = onnx_model.read_metadata(metadata, out)
    _log(f"exporting {config['architecture']} with torch.onnx.export (dynamo)", progress)
    program = export_program(model, prep["img_size"], opset)
    program.model.metadata_props.update(metadata)
    parity = write_checked_model(program, model, inputs, source, meta["probabilities"], out, progress)
    record = {"schema": ONNX_EXPORT, "format": "onnx", "model": str(out), "model_sha256": sha256_file(out),
              "opset": program.model.opset_imports.get(""),
              "input": {"name": onnx_model.INPUT_NAME, "shape": ["N", 3, prep["img_size"], prep["img_size"]]},
              "output": {"name": onnx_model.OUTPUT_NAME, "shape": ["N", int(config["n_outputs"])]},
              "metadata": meta, "check": parity, "library_versions": library_versions(), "git_commit": git_commit()}
    write_json(record_path(out), record)
    return Path(out), record_path(out)
