"""onnxruntime against `medclf test`: each run's exported model on the run's own test split.

    PYTHONPATH=python .venv/bin/python benchmarks/onnx_parity.py results/RUN [results/RUN ...] [--batch-sizes 1 8]

Each run needs RUN/model.onnx (`medclf export --run RUN --format onnx`) and
RUN/predictions_test.json (`medclf test --run RUN`). The test images are read with
medclf.data.imageio and classified by medclf.infer.onnx_model.OnnxClassifier (numpy preprocessing, no torch)
at each batch size; printed per run and batch size, as a markdown table: the largest absolute
probability difference from predictions_test.json, whether every argmax agrees, the ROC-AUC of
both (binary: the positive class's column; multi-class: macro one-vs-rest) and onnxruntime's
milliseconds per image (preprocessing included, --threads intra-op threads).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json
from medclf.core.splits import read_splits
from medclf.data.imageio import read_image
from medclf.evaluate.metrics import roc_auc_ovr_macro
from medclf.infer.onnx_model import OnnxClassifier


def test_images(run):
    """predictions_test.json and the decoded test images, in its order."""
    predictions = read_json(run / "predictions_test.json")
    table = read_splits(run / "splits.csv", data_root=read_json(run / "config.json")["data_root"])
    return predictions, [read_image(table.resolve(path)) for path in predictions["paths"]]


def parity_rows(run, batch_sizes, threads):
    predictions, images = test_images(run)
    classifier = OnnxClassifier(run / "model.onnx", threads=threads)
    expected = np.asarray(predictions["probabilities"])
    labels = np.asarray(predictions["labels"])
    classifier.predict_proba(images[:1])  # the first run allocates; not timed
    for batch_size in batch_sizes:
        started = time.perf_counter()
        got = np.concatenate([classifier.predict_proba(images[i:i + batch_size])
                              for i in range(0, len(images), batch_size)])
        ms = (time.perf_counter() - started) * 1000 / len(images)
        yield {"run": run.name, "architecture": classifier.provenance.get("architecture"), "n": len(images),
               "batch": batch_size, "max_diff": float(np.abs(got - expected).max()),
               "argmax": bool((got.argmax(1) == expected.argmax(1)).all()),
               "auc_torch": roc_auc_ovr_macro(labels, expected), "auc_onnx": roc_auc_ovr_macro(labels, got),
               "ms": ms}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with model.onnx and predictions_test.json")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    print("| run | architecture | test images | batch | max abs probability difference | argmax identical "
          "| AUC medclf test | AUC onnxruntime (identical) | ms/image (onnxruntime) |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for run in args.runs:
            for r in parity_rows(run, args.batch_sizes, args.threads):
                print(f"| {r['run']} | {r['architecture']} | {r['n']} | {r['batch']} | {r['max_diff']:.1e} | "
                      f"{'yes' if r['argmax'] else 'NO'} | {r['auc_torch']:.4f} | {r['auc_onnx']:.4f} "
                      f"({'yes' if r['auc_onnx'] == r['auc_torch'] else 'NO'}) | {r['ms']:.1f} |")
    except MedclfError as exc:
        print(f"onnx_parity: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
