"""`medclf compare`: paired DeLong comparison of runs scored on the same test images.

The numbers come from `medclf_compare_json` in R/compare_models.R (rpy2, else an `Rscript
--vanilla R/compare_models.R` subprocess), else from the pure-Python mirror below (engine
"python"), which agrees with R to 1e-9 (python/tests/evaluate/test_compare.py); medclf.evaluate.r_bridge does the fallback.
Runs are labelled by the shortest path suffixes that tell them apart; a run given twice (however
spelled) is refused. Writes compare.json (medclf.comparison/1) and compare.md (one row per run,
one row per pair) to --out.
"""

import os
from pathlib import Path

import numpy as np

from medclf.core import layout, schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import write_json, write_text
from medclf.core.predictions import fail, load_predictions_file, read_predictions_file
from medclf.evaluate import clustered, external, group_level
from medclf.evaluate import metrics as M
from medclf.evaluate import r_bridge
from medclf.evaluate import report as R
from medclf.evaluate.formatting import estimate_with_interval, number, p_value

# ------------------------------------------------------------ Python mirror of compare_models.R

def align_runs(runs):
    first = runs[0]["data"]
    by_path = all(r["data"]["paths"] is not None for r in runs)
    for r in runs[1:]:
        d = r["data"]
        if d["classes"] != first["classes"]:
            fail(d["source"], f"classes ({', '.join(d['classes'])}) differ from {first['source']} "
                                 f"({', '.join(first['classes'])})")
    if by_path:
        for r in runs:
            seen = set()
            for p in r["data"]["paths"]:
                if p in seen:
                    fail(r["data"]["source"], f"paths: '{p}' appears more than once; cannot join by path")
                seen.add(p)
    for r in runs[1:]:
        d = r["data"]
        if by_path:
            these, first_paths = set(d["paths"]), set(first["paths"])
            only_first = [p for p in first["paths"] if p not in these]
            only_this = [p for p in d["paths"] if p not in first_paths]
            if only_first or only_this:
                fail(d["source"], f"images differ from {first['source']}: {len(only_first)} only there, "
                                     f"{len(only_this)} only here (e.g. '{(only_first + only_this)[0]}'); "
                                     "compare runs on the same test images")
            position = {p: i for i, p in enumerate(d["paths"])}
            order = np.array([position[p] for p in first["paths"]])
            d = dict(d, labels=d["labels"][order], probabilities=d["probabilities"][order],
                     paths=[d["paths"][i] for i in order])
        elif len(d["labels"]) != len(first["labels"]):
            fail(d["source"], f"has {len(d['labels'])} images but {first['source']} has {len(first['labels'])}; "
                                 "compare runs on the same test images")
        differ = np.flatnonzero(d["labels"] != first["labels"])
        if len(differ):
            example = f"'{first['paths'][differ[0]]}'" if by_path else f"row {differ[0] + 1}"
            fail(d["source"], f"labels differ from {first['source']} for {len(differ)} image(s) (e.g. {example}); "
                                 "compare runs on the same test set")
        r["data"] = d
    return runs, "paths" if by_path else "row order (no paths in the files)"


def paired_delong(is_positive, score_a, score_b):
    """AUC(a) - AUC(b) with the paired DeLong interval, z and two-sided p (pROC::roc.test)."""
    from scipy.stats import norm

    method = "paired DeLong (pROC::roc.test)"
    y = np.asarray(is_positive, dtype=bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return {"difference": M.value(None, None, None, method, "needs at least 2 cases of each class"),
                "z": None, "p_value": None}
    ta, xa, ya = M.delong_placements(y, score_a)
    tb, xb, yb = M.delong_placements(y, score_b)
    sx = np.array([[np.sum((xa - ta) * (xa - ta)), np.sum((xa - ta) * (xb - tb))],
                   [np.sum((xb - tb) * (xa - ta)), np.sum((xb - tb) * (xb - tb))]]) / (m - 1)
    sy = np.array([[np.sum((ya - ta) * (ya - ta)), np.sum((ya - ta) * (yb - tb))],
                   [np.sum((yb - tb) * (ya - ta)), np.sum((yb - tb) * (yb - tb))]]) / (n - 1)
    s = sx / m + sy / n
    contrast = np.array([1.0, -1.0])
    sig = float(np.sqrt(contrast @ s @ contrast))
    d = ta - tb
    if sig == 0:
        z = 0.0 if d == 0 else float(np.sign(d) * np.inf)
    else:
        z = d / sig
    crit = norm.ppf(1 - (1 - M.CONF_LEVEL) / 2)
    p = 2 * norm.cdf(-abs(z))
    estimate = M.roc_auc(y, score_a) - M.roc_auc(y, score_b)
    return {"difference": M.value(estimate, d - crit * sig, d + crit * sig, method),
            "z": None if not np.isfinite(z) else float(z), "p_value": float(p)}


def holm(p_values):
    """Holm step-down adjusted p-values (R's p.adjust(method = "holm")); None stays None."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    out = [None] * len(p_values)
    order = sorted(idx, key=lambda i: p_values[i])
    k = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p_values[i]))
        out[i] = running
    return out


def refuse_same_file(paths):
    """A run compared with itself (the same file, however spelled) is refused (R: mc_refuse_same_file)."""
    seen = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            fail(path, f"is the same predictions file as {seen[real]}; compare a run with another run, not with itself")
        seen[real] = path


def python_compare(request):
    specs = request.get("runs") or []
    if len(specs) < 2:
        fail("compare", "needs at least two prediction files")
    refuse_same_file([s["predictions_path"] for s in specs])
    runs = [{"name": s.get("name") or Path(s["predictions_path"]).name,
             "data": load_predictions_file(s["predictions_path"])}
            for s in specs]
    runs, joined_by = align_runs(runs)
    first = runs[0]["data"]
    frame = R.framing(first, request.get("positive"), request.get("group"))
    threshold = request.get("threshold")
    threshold = 0.5 if threshold is None else threshold
    if frame is not None:
        targets = [(frame["positive"], frame)]
    else:
        targets = [(k, {"positive": k, "negative": f"not {k}", "members": [k], "group": None}) for k in first["classes"]]
    codes = clustered.request_codes(request, len(first["labels"]))
    grouped = clustered.is_clustered(codes)
    rows = []
    for r in runs:
        row = {"name": r["name"], "predictions": r["data"]["source"], "model": r["data"]["model"]}
        if frame is not None:
            v = R.binary_view(r["data"], frame)
            b = M.binary_metrics(v["is_positive"], v["score"], threshold)
            if grouped:
                b["metrics"] = clustered.binary_metrics(b["metrics"], v["is_positive"], v["score"], threshold, codes,
                                                        clustered.resample_counts(codes, v["is_positive"].astype(np.int64)))
            row["roc_auc"] = b["metrics"]["roc_auc"]
            for name in ("sensitivity", "specificity", "accuracy", "cohen_kappa"):
                row[name] = b["metrics"][name]
        else:
            m = M.multiclass_metrics(r["data"]["labels"], r["data"]["probabilities"], r["data"]["classes"])
            if grouped:
                m = clustered.multiclass_metrics(m, r["data"]["labels"], r["data"]["probabilities"], codes,
                                                 clustered.resample_counts(codes, r["data"]["labels"]))
            row.update(macro_auc=m["metrics"]["macro_auc"], balanced_accuracy=m["metrics"]["balanced_accuracy"],
                       accuracy=m["metrics"]["accuracy"], cohen_kappa=m["metrics"]["cohen_kappa"],
                       per_class_auc={k: pc["metrics"]["roc_auc"] for k, pc in m["per_class"].items()})
        rows.append(row)
    pairs = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            for label, target in targets:
                va, vb = R.binary_view(runs[i]["data"], target), R.binary_view(runs[j]["data"], target)
                test = paired_delong(va["is_positive"], va["score"], vb["score"])
                if grouped:
                    test = clustered.paired_auc(va["is_positive"], va["score"], vb["score"], codes, test)
                pairs.append({"a": runs[i]["name"], "b": runs[j]["name"], "positive_class": label,
                              "auc_a": M.auc_delong(va["is_positive"], va["score"])["estimate"],
                              "auc_b": M.auc_delong(vb["is_positive"], vb["score"])["estimate"],
                              "difference": test["difference"], "z": test["z"], "p_value": test["p_value"]})
    for pair, adjusted in zip(pairs, holm([p["p_value"] for p in pairs])):
        pair["p_holm"] = adjusted
    out = {"schema": schemas.COMPARISON, "engine": r_bridge.python_engine_info(),
           "task": "binary" if frame is not None else "multiclass (one-vs-rest per class)",
           "positive_class": frame["positive"] if frame else None, "grouping": frame["group"] if frame else None,
           "threshold": float(threshold) if frame else None, "n": int(len(first["labels"])), "joined_by": joined_by,
           "runs": rows, "pairwise": pairs, "p_adjust": "Holm over all pairwise tests in this file"}
    if grouped:
        out["clusters"] = clustered.summary(codes)
    return out


# ------------------------------------------------------------------------------------ engines

def _rscript_argv(request, out_path):
    """compare_models.R's command line for a request."""
    if any("," in r["name"] for r in request["runs"]):
        raise MedclfError("run names must not contain commas")
    argv = [*[str(r["predictions_path"]) for r in request["runs"]],
            "--out", str(out_path), "--names", ",".join(r["name"] for r in request["runs"])]
    if request.get("positive") is not None:
        argv += ["--positive", request["positive"]]
    if request.get("group") is not None:
        argv += ["--group", R.format_group(request["group"])]
    if request.get("threshold") is not None:
        argv += ["--threshold", repr(float(request["threshold"]))]
    if request.get("clusters") is not None:
        clusters = Path(out_path).with_name("clusters.json")  # beside the result, in the call's own temp folder
        write_json(clusters, list(request["clusters"]))
        argv += ["--clusters", str(clusters)]
    return argv


COMPARE_TASK = r_bridge.Task(command="compare", r_file="compare_models.R", r_function="medclf_compare_json",
                             script="compare_models.R", script_argv=_rscript_argv, python=python_compare)


def run_compare_engine(request, engine="auto"):
    """(result, notes): medclf_compare_json through rpy2, else Rscript, else python_compare."""
    return r_bridge.run(COMPARE_TASK, request, engine)


def path_labels(paths):
    """The shortest path suffixes that tell runs apart (a trailing .json dropped): results/A/resnet18
    and results/B/resnet18 -> 'A/resnet18', 'B/resnet18' (R: mc_path_labels)."""
    parts = []
    for path in paths:
        p = Path(os.path.abspath(path))
        parts.append(p.parts[1:-1] + (p.name[:-5] if p.name.endswith(".json") else p.name,))
    labels = [str(p[-1]) for p in parts]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            break
    return labels


def markdown_table(result):
    if result.get("kind") == "internal-external":
        return "\n".join(external.markdown_lines(result)) + "\n"
    binary = result["task"] == "binary"
    cols = (["roc_auc", "sensitivity", "specificity", "accuracy", "cohen_kappa"] if binary
            else ["macro_auc", "balanced_accuracy", "accuracy", "cohen_kappa"])
    head = f"positive class **{result['positive_class']}**, threshold {result['threshold']}" if binary \
        else "multi-class; pairwise tests one-vs-rest per class"
    lines = [f"# Model comparison ({result['n']} images, joined by {result['joined_by']}; {head})", "",
             f"Engine: {r_bridge.describe_engine(result['engine'])}.", ""]
    if result.get("clusters"):
        c = result["clusters"]
        lines += [f"{c['n_images']} images in {c['n_groups']} groups; intervals and tests over groups "
                  "(docs/report.md, Intervals over groups).", ""]
    lines += ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {row['name']} | " + " | ".join(estimate_with_interval(row.get(c)) for c in cols) + " |"
              for row in result["runs"]]
    lines += ["", "## Pairwise paired DeLong tests (AUC a - AUC b, 95% CI)", "",
              "| a | b | class | AUC a | AUC b | difference | z | p | p (Holm) |", "|---|---|---|---|---|---|---|---|---|"]
    for p in result["pairwise"]:
        lines.append(f"| {p['a']} | {p['b']} | {p['positive_class']} | {number(p['auc_a'])} | {number(p['auc_b'])} | "
                     f"{estimate_with_interval(p['difference'])} | {number(p['z'])} | {p_value(p['p_value'])} | "
                     f"{p_value(p['p_holm'])} |")
    return "\n".join(lines) + "\n"


def _internal_external(dirs, paths, out_dir, positive, group, threshold, engine):
    """A run against its external_<name>/ folder: two independent test sets side by side
    (medclf.evaluate.external), each scored by the report engine with its own groups."""
    order = sorted(range(2), key=lambda i: layout.is_external_folder(dirs[i]))  # internal first
    results, names = [], path_labels([str(dirs[i]) for i in order])
    for i in order:
        raw = read_predictions_file(paths[i])
        request = R.build_request(paths[i], positive=positive, threshold=threshold, group=group,
                                  clusters=group_level.image_groups(dirs[i], raw))
        R.framing(R.load_predictions(request, "predictions"), positive, request["group"])  # refuses before any engine
        result, _ = R.run_engine(request, engine)
        results.append(dict(result, external=raw.get("external")))
    record = dict(external.comparison(results[0], results[1], names[0], names[1]), schema=schemas.COMPARISON,
                  engine=results[0]["engine"])
    written = {}
    if out_dir is not None:
        written = {"json": Path(out_dir) / "compare.json", "markdown": Path(out_dir) / "compare.md"}
        write_json(written["json"], record)
        write_text(written["markdown"], markdown_table(record))
    return record, written


def compare_runs(run_dirs, split="test", out_dir=None, positive=None, group=None, threshold=None, engine="auto"):
    """Compare results/NAME folders (or predictions files); write compare.json and compare.md to out_dir."""
    paths = []
    for item in map(Path, run_dirs):
        path = layout.predictions_file(item, split) if item.is_dir() else item
        if not path.is_file():
            raise MedclfError(f"{path}: not found; run `medclf test --run {item}` first")
        paths.append(path)
    if len(paths) < 2:
        raise MedclfError("compare needs at least two runs")
    refuse_same_file([str(p) for p in paths])
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) == 2 and all(d.is_dir() for d in dirs) and sum(layout.is_external_folder(d) for d in dirs) == 1:
        return _internal_external(dirs, paths, out_dir, positive, group, threshold, engine)
    runs = [{"name": name, "predictions_path": str(path)} for name, path in zip(path_labels(run_dirs), paths)]
    first_dir = Path(run_dirs[0])
    clusters = (group_level.image_groups(first_dir, read_predictions_file(paths[0])) if first_dir.is_dir() else None)
    request = {"runs": runs, "positive": positive, "group": R.parse_group(group) if isinstance(group, str) else group,
               "threshold": threshold, "clusters": clusters}
    R.framing(R.load_predictions(runs[0], "predictions"), positive, request["group"])  # refuses before any engine
    result, notes = run_compare_engine(request, engine)
    if notes:
        result["engine_notes"] = notes
    written = {}
    if out_dir is not None:
        out_dir = Path(out_dir)
        written["json"] = out_dir / "compare.json"
        written["markdown"] = out_dir / "compare.md"
        write_json(written["json"], result)
        write_text(written["markdown"], markdown_table(result))
    return result, written
