"""The results table of docs/derm_models.md, read from the files the documented commands write.

    python benchmarks/derm_models_table.py results/derm

One row per model and framing: test ROC-AUC (DeLong interval) of malignant vs benign (the 7-class
runs: the summed probability of mel, bcc and akiec, from results_test_grouped.json), balanced
accuracy with its interval (7-class: macro over the 7 diagnoses), precision at recall >= 0.999
(the report's operating point), the paired DeLong p against the plain model (compare.json), and the
time: training (sum of history.csv's seconds, epochs run) or probe fitting (probe.json) after
the embedding (embed's .npz meta); crop rows add the crop stage (crop.json). A second table
summarises the crops (boxes.csv): boxes from attention, centre fallbacks, median box side.
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np

FRAMINGS = ("malignant", "7class")
ROWS = (("plain ResNet-18", "plain_{f}", None, None),
        ("two-stage crop", "crop_{f}", "compare_crop_{f}", "crops_{f}"),
        ("probe: logreg", "probe_logreg_{f}", "compare_probe_{f}", "emb_{f}.npz"),
        ("probe: linear SVM", "probe_linear-svm_{f}", "compare_probe_{f}", "emb_{f}.npz"))


def _read(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def interval(m, digits=3):
    if not m or m.get("estimate") is None:
        return "n/a"
    if m.get("lower") is None:
        return f"{m['estimate']:.{digits}f}"
    return f"{m['estimate']:.{digits}f} ({m['lower']:.{digits}f}-{m['upper']:.{digits}f})"


def precision_at_recall(result, target=0.999):
    for op in result.get("operating_points") or []:
        if op["kind"] == "precision_at_recall" and abs(op["target"] - target) < 1e-12:
            return "n/a" if op["precision"] is None else f"{op['precision']:.3f} (sens {op['sensitivity']:.3f})"
    return "n/a"


def p_against_plain(compare_dir, run_name):
    if compare_dir is None or not (compare_dir / "compare.json").is_file():
        return "(reference)" if compare_dir is None else "n/a"
    result = _read(compare_dir / "compare.json")
    for pair in result["pairwise"]:
        names = (pair["a"], pair["b"])
        if any(n.endswith(run_name) for n in names) and any("plain_" in n for n in names):
            d = pair["difference"]  # AUC a - AUC b with its interval; shown as idea - plain
            sign = -1 if pair["b"].endswith(run_name) else 1
            low, high = sorted((sign * d["lower"], sign * d["upper"]))
            return f"{sign * d['estimate']:+.3f} ({low:+.3f} to {high:+.3f}), p = {pair['p_value']:.3g}"
    return "n/a"


def seconds(root, run_dir, extra):
    history = run_dir / "history.csv"
    if history.is_file():
        with open(history, newline="") as fh:
            rows = list(csv.DictReader(fh))
        text = f"{sum(float(r['seconds']) for r in rows):.0f} s ({len(rows)} epochs)"
        crop = root / extra / "crop.json" if extra else None
        return text + (f" + crop {_read(crop)['seconds']:.0f} s" if crop and crop.is_file() else "")
    probe = run_dir / "probe.json"
    if probe.is_file():
        meta = json.loads(str(np.load(root / extra)["meta"]))
        return f"embed {meta['seconds']:.0f} s + fit {_read(probe)['seconds']:.1f} s (C = {_read(probe)['C']:g})"
    return "n/a"


def row(root, label, framing, run, compare, extra):
    run_dir = root / run.format(f=framing)
    binary = run_dir / ("results_test.json" if framing == "malignant" else "results_test_grouped.json")
    if not binary.is_file():
        return f"| {label} | {framing} | not run | | | | |"
    b, full = _read(binary), _read(run_dir / "results_test.json")
    return (f"| {label} | {framing} | {interval(b['metrics']['roc_auc'])} | "
            f"{interval(full['metrics']['balanced_accuracy'])} | {precision_at_recall(b)} | "
            f"{p_against_plain(root / compare.format(f=framing) if compare else None, run.format(f=framing))} | "
            f"{seconds(root, run_dir, extra.format(f=framing) if extra else None)} |")


def table(root):
    root = Path(root)
    lines = ["| model | framing | ROC-AUC malignant (95% CI) | balanced accuracy (95% CI) | "
             "precision at recall >= 0.999 | AUC difference vs plain, paired DeLong p | time |",
             "|---|---|---|---|---|---|---|"]
    for framing in FRAMINGS:
        lines += [row(root, label, framing, run, compare, extra) for label, run, compare, extra in ROWS]
    return "\n".join(lines)


def crop_summary(root):
    """Per framing: boxes by source and the median box side over the image's shorter side."""
    lines = ["| framing | images | boxes from attention | centre fallbacks | median box side / shorter side |",
             "|---|---|---|---|---|"]
    for framing in FRAMINGS:
        path = Path(root) / f"crops_{framing}" / "boxes.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as fh:
            boxes = list(csv.DictReader(fh))
        fallback = sum(b["source"] != "attention" for b in boxes)
        ratio = np.median([(int(b["x1"]) - int(b["x0"])) / min(int(b["width"]), int(b["height"])) for b in boxes])
        lines.append(f"| {framing} | {len(boxes)} | {len(boxes) - fallback} | {fallback} | {ratio:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="results/derm", help="folder the documented commands wrote")
    root = parser.parse_args().root
    print(table(root))
    print()
    print(crop_summary(root))


if __name__ == "__main__":
    main()
