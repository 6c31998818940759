"""`medclf serve`: a research web page and JSON API for one trained run, on 127.0.0.1 by default.

POST /api/predict takes one or several images (multipart field `files`) and answers, per image:
the quality gate's verdict (a rejected image says why and gets no probabilities), every class
probability, the run's binary operating point when its report has one (e.g. malignant = mel + bcc
+ akiec against the threshold chosen on validation, with that threshold's sensitivity and
specificity from results_<split>[_<tag>].json) and a Grad-CAM overlay (PyTorch model only).
GET / is the page (web/index.html, app.js, style.css: nothing loaded from outside), GET /api/model
describes the model, /docs is Swagger UI served from local files (the fastapi-offline package's
copy), /openapi.json the schema. Uploads are checked by medclf.serve.uploads. See docs/serve.md.

A run trained with --metadata-features takes its columns as form fields beside `files`, named as
in config.json's "metadata": one value for every image of the request, or one per file in the
files' order. An empty value is missing and a category train never had is read as missing, as
`medclf test` reads a splits.csv cell (the run's own encoder, medclf.models.metadata.encode); a column
not sent at all is refused by name (422), as `medclf test` refuses a splits file without it.
"""

import base64
import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json
from medclf.serve.inference import HeatmapClassifier

WEB_DIR = Path(__file__).parent / "web"
NOTICE = ("Research tool, not a medical device: these outputs are model estimates for research use and are not "
          "a diagnosis. They must not be used to make or change clinical decisions.")
NO_HEATMAP_NOTE = "heat maps need the PyTorch model; this server runs an ONNX export, so it shows none"
DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_FILES = 16
# One thread does all image work, one uploaded image at a time from decoding to heat map: memory
# stays that of one full-resolution image (plus its quality measures) however many requests
# arrive together, and the large arrays come from one allocator arena instead of one per
# request thread (benchmarks/serve_load.py, 8 clients for 60 s: the peak RSS grew by 750 MiB
# with a plain lock, by 80 MiB with this worker).
IMAGE_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medclf-serve-image")


def _log(message):
    print(f"medclf serve: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- what the run provides

def load_gate(run_dir, gate):
    """The quality gate: a quality.json path, 'seed003', or (None) RUN/quality.json."""
    from medclf.quality import gate as quality

    if gate == "seed003":
        return quality.seed003_gate(), "seed003 preset"
    path = Path(gate) if gate else (Path(run_dir) / "quality.json" if run_dir else None)
    if path is None or not path.is_file():
        where = path or "--quality-gate"
        raise MedclfError(f"{where}: no quality gate; create one with `medclf quality --run RUN` (thresholds from the "
                          "train split) or pass --quality-gate FILE or --quality-gate seed003")
    return quality.read_gate(path), str(path)


def _operating_point_source(path, classes):
    """The binary framing of one results file, or None when it has none or names other classes."""
    try:
        result = read_json(path)
    except MedclfError as exc:
        _log(f"warning: skipping {exc}")
        return None
    if not isinstance(result, dict) or result.get("schema") != schemas.RESULTS or result.get("task") != "binary":
        return None
    members = (result.get("grouping") or {}).get("classes") or [result.get("positive_class")]
    if result.get("threshold") is None or not all(m in classes for m in members):
        return None
    metrics = result.get("metrics") or {}
    return {"name": str(result.get("positive_class")), "classes": [str(m) for m in members],
            "threshold": float(result["threshold"]), "threshold_source": str(result.get("threshold_source")),
            "split": str(result.get("split")), "n": result.get("n"),
            "sensitivity": metrics.get("sensitivity"), "specificity": metrics.get("specificity"),
            "report": Path(path).name}


def load_operating_point(run_dir, classes, results=None):
    """The operating point shown beside the probabilities: the named results file, else the run's
    binary report, preferring the test split and a threshold chosen on validation. None when the
    run has no binary report (then the page shows the class probabilities alone)."""
    if results is not None:
        source = _operating_point_source(results, classes)
        if source is None:
            raise MedclfError(f"{results}: not a binary medclf.results/1 file of this run's classes; pass a "
                              "results_<split>[_<tag>].json written by `medclf report --group ...` or `--positive ...`")
        return source
    if run_dir is None:
        return None
    found = [s for s in (_operating_point_source(p, classes) for p in sorted(Path(run_dir).glob("results_*.json"))) if s]
    found.sort(key=lambda s: (s["split"] != "test", not s["threshold_source"].startswith("validation:")))
    return found[0] if found else None


# ------------------------------------------------------------------------------------ metadata

def metadata_inputs(encoder):
    """The columns a metadata run needs, for /api/model and the page: name, kind and, for a
    categorical column, the categories seen in training (anything else is read as missing)."""
    if not encoder:
        return []
    return [{"name": spec["name"], "kind": spec["kind"],
             "categories": list(spec["levels"]) if spec["kind"] == "categorical" else None}
            for spec in encoder["columns"]]


def metadata_rows(encoder, fields, n_files, run=None):
    """One dict column -> value per file from the form's `fields` (column -> list of values, None when
    the field was not sent); None for an image-only run. Refuses absent columns by name and value
    counts other than 1 (every image) or one per file."""
    if not encoder:
        return None
    names = [spec["name"] for spec in encoder["columns"]]
    absent = [n for n in names if fields.get(n) is None]
    if absent:
        trained = f"the run {run} was" if run else "the model was"
        raise MedclfError(f"form field(s) {', '.join(absent)} missing; {trained} trained with --metadata-features "
                          f"{','.join(names)}, so every prediction needs them: send each as a form field beside "
                          "'files' (an empty value is allowed and encoded as missing)")
    for name in names:
        if len(fields[name]) not in (1, n_files):
            raise MedclfError(f"form field {name}: {len(fields[name])} values for {n_files} files; send one value "
                              "(for every image) or one per file, in the files' order")
    return [{n: fields[n][0 if len(fields[n]) == 1 else i] for n in names} for i in range(n_files)]


# ------------------------------------------------------------------------------------ one request

def _png_data_url(rgb01):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.clip(rgb01, 0, 1) * 255).round().astype(np.uint8), "RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _operating_point(source, probabilities, classes):
    if source is None:
        return None
    p = float(sum(probabilities[classes.index(m)] for m in source["classes"]))
    return dict(source, probability=p, at_or_above_threshold=bool(p >= source["threshold"]))


def _predict(classifier, images, rows):
    """(probabilities, heat maps) of the images that passed the gate; `rows` their metadata or None."""
    extra = () if rows is None else (rows,)
    probabilities = np.asarray(classifier.predict_proba(images, *extra), dtype=np.float64)
    predicted = [int(k) for k in probabilities.argmax(axis=1)]
    if not isinstance(classifier, HeatmapClassifier):
        return probabilities, predicted, [None] * len(images)
    from medclf.explain.run import overlay

    classes = list(classifier.class_names)
    views, maps = classifier.heatmaps(images, predicted, *extra)
    heat = [{"method": classifier.heatmap_method, "target_class": classes[t], "overlay_png": _png_data_url(overlay(v, m))}
            for v, m, t in zip(views, maps, predicted)]
    return probabilities, predicted, heat


def _metadata_echo(encoder, row):
    """Each column's value as sent and as the run's encoder reads it (a number, a category or missing)."""
    from medclf.models.metadata import read_as

    read = read_as(encoder, row)
    return {name: {"value": None if row[name] is None else str(row[name]), "read_as": read[name]} for name in row}


def analyse(classifier, gate, operating_point, uploads, rows=None):
    """One entry per (name, PIL image): gate verdict, then probabilities, operating point and heat map
    for the images that passed (one batch). `rows`: one metadata row per upload for a metadata run."""
    from medclf.quality import gate as quality

    classes = list(classifier.class_names)
    encoder = getattr(classifier, "metadata", None)
    entries = []
    for k, (name, img) in enumerate(uploads):
        verdict = quality.gate_verdict(quality.measure_image(img), gate["rules"])
        reasons = [] if verdict == "passed" else verdict.removeprefix("rejected: ").split("; ")
        entries.append({"name": name, "width": img.width, "height": img.height,
                        "quality": {"verdict": "passed" if not reasons else "rejected", "reasons": reasons},
                        "metadata": _metadata_echo(encoder, rows[k]) if encoder and rows else None,
                        "probabilities": None, "predicted_class": None, "operating_point": None, "heatmap": None})
    passed = [i for i, e in enumerate(entries) if not e["quality"]["reasons"]]
    if not passed:
        return entries
    probabilities, predicted, maps = _predict(classifier, [uploads[i][1] for i in passed],
                                              None if rows is None else [rows[i] for i in passed])
    for i, p, k, heat in zip(passed, probabilities, predicted, maps):
        entries[i].update(probabilities=[float(x) for x in p], predicted_class=classes[k],
                          operating_point=_operating_point(operating_point, p, classes), heatmap=heat)
    return entries


def analyse_upload(classifier, gate, operating_point, name, data, max_pixels, row=None):
    """`analyse` of one uploaded file's bytes (checked by medclf.serve.uploads.read_upload) and its metadata
    row (None for an image-only run), on IMAGE_WORKER."""
    from medclf.serve.uploads import read_upload

    def work():
        rows = None if row is None else [row]
        return analyse(classifier, gate, operating_point, [(name, read_upload(data, name, max_pixels))], rows)[0]

    return IMAGE_WORKER.submit(work).result()


# ---------------------------------------------------------------------------------------- server

def load_classifier(run_dir=None, onnx=None, device="auto", amp=None):
    """The PyTorch run (weights_only, eval; amp as `medclf test --amp/--no-amp`, None: as the run was
    trained), or with `onnx` the exported model through onnxruntime; with both, the run must have the
    same classes (it then provides the gate and the report)."""
    if onnx is None:
        if run_dir is None:
            raise MedclfError("medclf serve needs --run RUN (a folder written by `medclf train`) or --onnx FILE")
        from medclf.serve.inference import TorchClassifier

        return TorchClassifier(run_dir, device, amp=amp)
    from medclf.infer.onnx_model import OnnxClassifier

    classifier = OnnxClassifier(onnx)
    if run_dir is not None:
        from medclf.core.run_config import read_run_config

        config = read_run_config(Path(run_dir) / "config.json")
        if config.get("metadata"):
            raise MedclfError(f"{onnx}: {run_dir} was trained with --metadata-features, and an ONNX export takes "
                              "images only (medclf export refuses such runs), so this file is not that run's "
                              f"model; serve the run itself: medclf serve --run {run_dir}")
        classes = [str(c) for c in config["classes"]]
        if list(classifier.class_names) != classes:
            raise MedclfError(f"{onnx}: classes {list(classifier.class_names)} differ from {run_dir}'s {classes}; "
                              "serve the ONNX file with the run it was exported from")
    return classifier
