"""An exported run served through onnxruntime, without torch: `OnnxClassifier(path)`.

The ONNX file `medclf export --format onnx` writes (docs/export.md) takes an (N, 3, S, S) float32
input named `image` (N free) and returns the raw `logits` (N, K). Its metadata_props describe
everything else, each value a JSON text:

  medclf.schema    "medclf.onnx-export/1"
  classes          class names in output order; positive_class: the named positive or null
  probabilities    "softmax" (K logits) or "sigmoid" (one logit = log-odds of classes[1], turned
                   into the two columns [1 - sigmoid, sigmoid] as medclf.engine.steps does)
  preprocessing    {resize_side, img_size, mean, std, ...}: medclf.data.preprocess.model_input's arguments
  provenance       run folder, architecture, checkpoint SHA-256 and epoch, the run's git commit,
                   the exporting versions

`export_metadata` (the writer, used by medclf.infer.export) and `read_metadata` (the reader) keep that
contract in one place. The request path imports numpy, PIL and onnxruntime only.
"""

import json
from pathlib import Path

import numpy as np

from medclf.core.errors import MedclfError
from medclf.core.schemas import ONNX_EXPORT
from medclf.data import preprocess

INPUT_NAME, OUTPUT_NAME = "image", "logits"
PROBABILITY_RULES = ("softmax", "sigmoid")
REQUIRED_KEYS = ("medclf.schema", "classes", "positive_class", "probabilities", "preprocessing", "provenance")


def export_metadata(classes, positive_class, n_outputs, preprocessing, provenance):
    """The metadata_props (str -> str) of an exported model."""
    values = {"medclf.schema": ONNX_EXPORT, "classes": [str(c) for c in classes], "positive_class": positive_class,
              "probabilities": "sigmoid" if n_outputs == 1 else "softmax",
              "preprocessing": preprocessing, "provenance": provenance}
    return {key: json.dumps(value, ensure_ascii=False) for key, value in values.items()}


def read_metadata(props, source):
    """The decoded metadata of an exported model; a file without medclf's keys is refused."""
    fix = "export the run with `medclf export --run RUN --format onnx`"
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise MedclfError(f"{source}: not a medclf ONNX export (metadata lacks {', '.join(missing)}); {fix}")
    try:
        meta = {key: json.loads(props[key]) for key in REQUIRED_KEYS}
    except json.JSONDecodeError as exc:
        raise MedclfError(f"{source}: medclf metadata is not valid JSON ({exc}); {fix}") from exc
    if meta["medclf.schema"] != ONNX_EXPORT:
        raise MedclfError(f"{source}: metadata schema {meta['medclf.schema']!r}, this medclf reads {ONNX_EXPORT}; {fix}")
    if meta["probabilities"] not in PROBABILITY_RULES:
        raise MedclfError(f"{source}: unknown probabilities rule {meta['probabilities']!r}; {fix}")
    return meta


def probabilities_from_logits(logits, rule):
    """(N, K) float64 probabilities of float32 logits, as medclf.engine.steps.probabilities_from_logits:
    softmax of K logits, or [1 - sigmoid, sigmoid] of one logit."""
    logits = np.asarray(logits, dtype=np.float64)
    if rule == "sigmoid":
        x = logits[:, 0]
        p1 = np.exp(-np.logaddexp(0.0, -x))  # sigmoid without overflow for large |x|
        return np.stack([1 - p1, p1], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class OnnxClassifier:
    """medclf.serve.inference's Classifier for an exported model: class_names, img_size, predict_proba."""

    def __init__(self, path, threads=None):
        self.path = Path(path)
        self.session = _session(self.path, threads)
        meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        prep = meta["preprocessing"]
        self.class_names = list(meta["classes"])
        self.positive_class = meta["positive_class"]
        self.img_size = int(prep["img_size"])
        self.resize_side = int(prep["resize_side"])
        self.mean, self.std = list(prep["mean"]), list(prep["std"])
        self.rule = meta["probabilities"]
        self.provenance = meta["provenance"]

    def describe(self):
        return {"backend": "onnxruntime", "model": str(self.path), "architecture": self.provenance.get("architecture"),
                "checkpoint_sha256": self.provenance.get("checkpoint_sha256"),
                "epoch": self.provenance.get("epoch"), "img_size": self.img_size, "classes": self.class_names}

    def logits(self, batch):
        """float32 logits of an already preprocessed (N, 3, S, S) float32 batch."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def predict_proba(self, images):
        """(N, C) probabilities of N PIL images, preprocessed as `medclf test` does; rows sum to 1."""
        if not images:
            return np.zeros((0, len(self.class_names)))
        batch = preprocess.model_input(images, self.resize_side, self.img_size, self.mean, self.std)
        return probabilities_from_logits(self.logits(batch), self.rule)


def _session(path, threads=None):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MedclfError("medclf's ONNX models need onnxruntime: pip install onnxruntime "
                          "(pinned in requirements.txt)") from exc
    if not path.is_file():
        raise MedclfError(f"{path}: ONNX file not found; export one with `medclf export --run RUN --format onnx`")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedclfError(f"{path}: onnxruntime cannot load this model ({first}); "
                          "re-export it with `medclf export --run RUN --format onnx`") from exc
