"""`medclf report`: metrics with intervals, operating points, plots and a Markdown report.

The numbers come from ONE R function, `medclf_report_json(request_json)` in R/report.R, run
through rpy2 when it works, else through an `Rscript --vanilla R/calc_model_performance.R`
subprocess, else from the pure-Python mirror below (`python_report`); medclf.evaluate.r_bridge does the
fallback and records the route that ran. The mirror follows R/metrics.R to 1e-9 (parity tests).
The request is a small JSON object (see R/report.R): predictions_path, val_predictions_path,
positive, threshold, threshold_rule, group, boot_n, seed, legacy.

Outputs in the run folder, named by split and optional tag (output_names): results_<split>.json
(medclf.results/1), report_<split>.md, roc_<split>.png, pr_<split>.png, pr_zoom_<split>.png
(recall 0.95-1 with the recall >= 0.999 operating point), confusion_<split>.png and
calibration_<split>.png; with --tag grouped: results_<split>_grouped.json and so on.
"""

import re
from pathlib import Path

import numpy as np

from medclf.core import layout, schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json, write_json, write_text
from medclf.core.predictions import (fail, is_number, passed_subset, read_predictions_file, require_file,
                                     same_predictions, validate_predictions)
from medclf.core.run_config import read_run_config
from medclf.core.splits import named_positive
from medclf.evaluate import metrics as M
from medclf.evaluate import clustered, decision_curve, group_level, r_bridge, reliability, subgroups
from medclf.evaluate.formatting import estimate_with_interval, interval, number

OPTIMISTIC = ("the threshold was chosen on the same predictions it is scored on, so these estimates are "
              "optimistic; choose it on validation predictions and score another split (e.g. test)")
PLOTS = ("roc", "pr", "pr_zoom", "confusion", "calibration", "decision_curve", "forest")
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


def load_predictions(request, key):
    path = request.get(f"{key}_path")
    if path is not None:
        return validate_predictions(read_predictions_file(path), path)
    if request.get(key) is not None:
        return validate_predictions(request[key], key)
    return None


# ------------------------------------------------------------------ framing (mirrors R/report.R)

def framing(data, positive=None, group=None):
    classes = data["classes"]
    if group is not None:
        members = list(group.get("classes") or [])
        if not group.get("name") or not members:
            fail("group", "expected NAME=CLASS,CLASS (e.g. malignant=mel,bcc,akiec)")
        unknown = [c for c in members if c not in classes]
        if unknown:
            fail(f"group '{group['name']}'", f"class '{unknown[0]}' is not one of the classes ({', '.join(classes)})")
        if len(members) == len(classes):
            fail(f"group '{group['name']}'", "contains every class; leave at least one class outside")
        return {"positive": group["name"], "negative": f"not {group['name']}", "members": members,
                "group": {"name": group["name"], "classes": members,
                          "rule": "probability of the group = sum of its classes' probabilities"}}
    if positive is not None and positive not in classes:
        fail("positive class", f"'{positive}' is not one of the classes ({', '.join(classes)})")
    if positive is None:
        positive = named_positive(classes, data["positive_class"], data["source"], "scoring it")
    if positive is None:
        return None
    negative = [c for c in classes if c != positive][0] if len(classes) == 2 else f"not {positive}"
    return {"positive": positive, "negative": negative, "members": [positive], "group": None}


def binary_view(data, frame):
    """Truth and positive-side score; member columns are added one at a time as in R."""
    classes, p = data["classes"], data["probabilities"]
    idx = [classes.index(c) for c in frame["members"]]
    rest = [j for j in range(len(classes)) if j not in idx]

    def column_sum(cols):
        total = p[:, cols[0]].copy()
        for j in cols[1:]:
            total = total + p[:, j]
        return total

    return {"is_positive": np.isin(data["labels"], idx), "score": column_sum(idx), "other": column_sum(rest)}


def _bootstrap(n, boot_n, seed, statistic):
    rng = np.random.default_rng(seed)
    draws = [statistic(rng.integers(0, n, n)) for _ in range(boot_n)]
    out = {}
    for name in draws[0]:
        v = np.array([d[name] for d in draws if d[name] is not None and not np.isnan(d[name])], dtype=float)
        out[name] = ({"lower": float(np.quantile(v, 0.025)), "upper": float(np.quantile(v, 0.975)),
                      "n_defined": int(len(v))} if len(v) else {"lower": None, "upper": None, "n_defined": 0})
    return {"n": boot_n, "seed": seed, "method": "percentile bootstrap over images (numpy quantile, linear)",
            "intervals": out}


def _binary_python(request, data, frame):
    view = binary_view(data, frame)
    threshold, rule = request.get("threshold"), request.get("threshold_rule")
    selection = optimistic = None
    if threshold is not None and rule is not None:
        fail("options", "give either a threshold or a threshold rule, not both")
    if rule is not None:
        val = load_predictions(request, "val_predictions")
        if val is None:
            fail("threshold rule", f"'{rule}' needs validation predictions (--threshold-from predictions_val.json)")
        if val["classes"] != data["classes"]:
            fail(val["source"], f"classes ({', '.join(val['classes'])}) differ from the test predictions' classes "
                                 f"({', '.join(data['classes'])})")
        val_view = binary_view(val, frame)
        selection = M.choose_threshold(val_view["is_positive"], val_view["score"], rule)
        selection.update(n_validation=len(val_view["score"]), source=val["source"])
        threshold, source = selection["threshold"], f"validation:{rule}"
        optimistic = OPTIMISTIC if same_predictions(val, data) else None
    elif threshold is not None:
        if not is_number(threshold) or not 0 <= threshold <= 1:
            fail("threshold", f"{threshold} is not a probability in [0, 1]")
        source = "fixed"
    else:
        threshold, source = 0.5, "default"
    y, s = view["is_positive"], view["score"]
    b = M.binary_metrics(y, s, threshold)
    truth = y.astype(np.int64)
    decided = (s >= threshold).astype(np.int64)
    two = np.column_stack([view["other"], s])
    per_class = M.per_class_metrics(truth, decided, two, [frame["negative"], frame["positive"]])
    codes = clustered.request_codes(request, len(data["labels"]))
    counts = decision_curve.resamples(truth, codes)  # shared by the intervals over groups and the curve's band
    if clustered.is_clustered(codes):
        b["metrics"] = clustered.binary_metrics(b["metrics"], y, s, threshold, codes, counts)
        per_class = clustered.per_class_metrics(per_class, truth, decided, two, codes, counts)
    out = {"schema": schemas.RESULTS, "engine": r_bridge.python_engine_info(), "task": "binary", "split": data["split"],
           "predictions": data["source"], "input_format": data["format"], "classes": data["classes"],
           "positive_class": frame["positive"], "negative_class": frame["negative"], "grouping": frame["group"],
           "threshold": float(threshold), "threshold_source": source, "threshold_selection": selection,
           "threshold_optimistic": optimistic, "decision_rule": "positive when probability >= threshold", "n": int(len(truth)),
           "n_positive": int(truth.sum()), "n_negative": int((1 - truth).sum()),
           "confusion_matrix": b["confusion_matrix"], "metrics": b["metrics"], "per_class": per_class,
           "macro": M.macro_metrics(per_class), "operating_points": M.operating_points(y, s), "model": data["model"]}
    if clustered.is_clustered(codes):
        out["clusters"] = clustered.summary(codes)
    out["decision_curve"] = decision_curve.decision_curve(y, s, codes, request_prevalence(request), counts)
    boot_n = int(request.get("boot_n") or 0)
    if boot_n > 0:
        def statistic(i):
            cm = M.confusion(y[i], s[i] >= threshold)
            stats = {k: v["estimate"] for k, v in M.count_metrics(cm).items()}
            stats["roc_auc"] = M.roc_auc(y[i], s[i])
            stats["cohen_kappa"] = M.kappa([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])["estimate"]
            return stats
        out["bootstrap"] = _bootstrap(len(s), boot_n, int(request.get("seed") or 1), statistic)
    return out


def request_prevalence(request):
    """The request's population prevalence for decision curves (a probability strictly between 0 and
    1), or None: the test split's own."""
    prevalence = request.get("prevalence")
    if prevalence is not None and not (is_number(prevalence) and 0 < prevalence < 1):
        fail("prevalence", f"{prevalence} is not a probability strictly between 0 and 1")
    return prevalence


def _multiclass_python(request, data):
    if request.get("threshold") is not None or request.get("threshold_rule") is not None:
        fail("options", "a threshold needs a binary task: name --positive CLASS or --group NAME=CLASS,...")
    if request.get("prevalence") is not None:
        fail("options", "a decision curve (--prevalence) needs a binary task: name --positive CLASS or --group NAME=CLASS,...")
    m = M.multiclass_metrics(data["labels"], data["probabilities"], data["classes"])
    codes = clustered.request_codes(request, len(data["labels"]))
    if clustered.is_clustered(codes):
        m = clustered.multiclass_metrics(m, data["labels"], data["probabilities"], codes,
                                         clustered.resample_counts(codes, data["labels"]))
    out = {"schema": schemas.RESULTS, "engine": r_bridge.python_engine_info(), "task": "multiclass", "split": data["split"],
           "predictions": data["source"], "input_format": data["format"], "classes": data["classes"],
           "positive_class": None, "threshold": None, "threshold_source": "argmax",
           "decision_rule": "class with the highest probability (first on ties)", "n": int(len(data["labels"])),
           "confusion_matrix": m["confusion_matrix"], "metrics": m["metrics"], "per_class": m["per_class"],
           "macro": m["macro"], "operating_points": [], "model": data["model"]}
    if clustered.is_clustered(codes):
        out["clusters"] = clustered.summary(codes)
    boot_n = int(request.get("boot_n") or 0)
    if boot_n > 0:
        y, p, k = data["labels"], data["probabilities"], len(data["classes"])

        def statistic(i):
            counts = M.confusion_table(y[i], p[i].argmax(axis=1), k)
            rows = counts.sum(axis=1)
            aucs = [M.roc_auc(y[i] == j, p[i, j]) for j in range(k)]
            aucs = [a for a in aucs if not np.isnan(a)]
            return {"accuracy": np.trace(counts) / len(i),
                    "balanced_accuracy": float(np.mean(np.diag(counts)[rows > 0] / rows[rows > 0])),
                    "cohen_kappa": M.kappa(counts)["estimate"], "macro_auc": float(np.mean(aucs)) if aucs else None}
        out["bootstrap"] = _bootstrap(len(y), boot_n, int(request.get("seed") or 1), statistic)
    return out


def python_report(request):
    """The pure-Python engine: same request, same result structure as medclf_report_json."""
    data = load_predictions(request, "predictions")
    if data is None:
        fail("request", "no predictions (predictions_path or predictions)")
    frame = framing(data, request.get("positive"), request.get("group"))
    result = _multiclass_python(request, data) if frame is None else _binary_python(request, data, frame)
    if request.get("legacy"):
        if result["task"] != "binary":
            fail("--legacy", "the two-array output is binary only; name --positive CLASS or --group")
        m = result["metrics"]
        return [["Accuracy", "Sensitivity", "Specificity", "ROC-AUC", "Cohen's Kappa"],
                [m["accuracy"]["estimate"], m["sensitivity"]["estimate"], m["specificity"]["estimate"],
                 m["roc_auc"]["estimate"], m["cohen_kappa"]["estimate"]]]
    return result


# ------------------------------------------------------------------------------------ engines

def _rscript_argv(request, out_path):
    """calc_model_performance.R's command line for a request."""
    if request.get("predictions_path") is None:
        raise r_bridge.EngineUnavailable("the Rscript route needs predictions_path")
    argv = [str(request["predictions_path"]), str(out_path)]
    if request.get("positive") is not None:
        argv += ["--positive", str(request["positive"])]
    if request.get("threshold") is not None:
        argv += ["--threshold", repr(float(request["threshold"]))]
    if request.get("threshold_rule") is not None:
        argv += ["--threshold-rule", request["threshold_rule"]]
    if request.get("val_predictions_path") is not None:
        argv += ["--threshold-from", str(request["val_predictions_path"])]
    if request.get("group") is not None:
        argv += ["--group", format_group(request["group"])]
    if request.get("boot_n"):
        argv += ["--boot", str(int(request["boot_n"])), "--seed", str(int(request.get("seed") or 1))]
    if request.get("prevalence") is not None:
        argv += ["--prevalence", repr(float(request["prevalence"]))]
    if request.get("legacy"):
        argv += ["--legacy"]
    if request.get("clusters") is not None:
        clusters = Path(out_path).with_name("clusters.json")  # beside the result, in the call's own temp folder
        write_json(clusters, list(request["clusters"]))
        argv += ["--clusters", str(clusters)]
    return argv


REPORT_TASK = r_bridge.Task(command="report", r_file="report.R", r_function="medclf_report_json",
                            script="calc_model_performance.R", script_argv=_rscript_argv, python=python_report)


def run_engine(request, engine="auto"):
    """(result, notes): medclf_report_json through rpy2, else Rscript, else python_report."""
    return r_bridge.run(REPORT_TASK, request, engine)


# ------------------------------------------------------------------------------------- outputs

def parse_group(text):
    """'malignant=mel,bcc,akiec' -> {'name': 'malignant', 'classes': ['mel', 'bcc', 'akiec']}; the one
    --group parser of report, compare and study (R: mc_parse_group in R/io.R, same rules)."""
    if text is None:
        return None
    parts = str(text).split("=")
    classes = [c.strip() for c in parts[1].split(",")] if len(parts) == 2 else []
    if len(parts) != 2 or not parts[0].strip() or not classes or not all(classes):
        raise MedclfError(f"--group '{text}': expected NAME=CLASS,CLASS (e.g. malignant=mel,bcc,akiec)")
    return {"name": parts[0].strip(), "classes": classes}


def format_group(group):
    """{'name': 'malignant', 'classes': [...]} -> 'malignant=mel,bcc,akiec' (the inverse of parse_group)."""
    return f"{group['name']}={','.join(group['classes'])}"


def build_request(predictions_path, val_predictions_path=None, positive=None, threshold=None, threshold_rule=None,
                  group=None, boot_n=0, seed=1, legacy=False, clusters=None, prevalence=None):
    """The engines' request; `clusters`: the group of each prediction (intervals over groups when a
    group holds two images, medclf.evaluate.clustered), or None; `prevalence`: the population's, for
    the decision curve (medclf.evaluate.decision_curve), or None (the test split's)."""
    return {"predictions_path": str(predictions_path), "clusters": None if clusters is None else list(clusters),
            "prevalence": prevalence,
            "val_predictions_path": None if val_predictions_path is None else str(val_predictions_path),
            "positive": positive, "threshold": threshold, "threshold_rule": threshold_rule,
            "group": parse_group(group) if isinstance(group, str) else group,
            "boot_n": int(boot_n or 0), "seed": int(seed), "legacy": bool(legacy)}


def output_names(split, tag=None):
    """File names of one report: results_<split>[_<tag>].json, report_<split>[_<tag>].md and each plot
    <plot>_<split>[_<tag>].png, so reports of different splits or framings never overwrite each other."""
    if tag is not None and not TAG_PATTERN.fullmatch(str(tag)):
        raise MedclfError(f"--tag '{tag}': use letters, digits, '.' and '-' (e.g. grouped); it becomes part of file names")
    suffix = f"{split}_{tag}" if tag else str(split)
    names = {"results": f"results_{suffix}.json", "report": f"report_{suffix}.md"}
    names.update({plot: f"{plot}_{suffix}.png" for plot in PLOTS})
    return names


def _pairs(mapping):
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) if isinstance(mapping, dict) else str(mapping)


def _leakage_text(leakage):
    counts = {k[: -len("_across_splits")].replace("_", " "): v for k, v in (leakage or {}).items()
              if k.endswith("_across_splits") and isinstance(v, int)}
    if not counts:
        return "not recorded"
    return ", ".join(f"{v} {k}" for k, v in counts.items()) + " across splits"


def _threshold_text(result):
    if result["task"] != "binary":
        return "none: the decided class is the most probable one"
    sel = result.get("threshold_selection")
    if sel:
        return (f"{result['threshold']:.6g}, chosen by {sel['rule']} on {sel['source']} (n = {sel['n_validation']}; "
                f"there sensitivity {number(sel['sensitivity'])}, specificity {number(sel['specificity'])})")
    return f"{result['threshold']:.6g} ({'fixed by --threshold' if result['threshold_source'] == 'fixed' else 'default'})"


def _partition_rows(run_dir, config):
    """Rows about the partition: the run's own copy of partition.json, else the one beside its splits file."""
    splits_file = config.get("splits_file")
    candidates = [run_dir / "partition.json"] + ([Path(splits_file).parent / "partition.json"] if splits_file else [])
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return []
    info = read_json(path)
    rows = [("partition", f"{path}: seed {info.get('seed')}, ratios {_pairs(info.get('ratios'))}, grouped by "
                          f"{info.get('group_column') or 'duplicate clusters'} ({info.get('n_groups')} groups)"),
            ("leakage check", _leakage_text(info.get("leakage")))]
    if info.get("label_map"):
        rows.append(("label map", _pairs(info["label_map"])))
    return rows


def _known(x):
    return "not recorded" if x is None else x


def provenance_rows(result, run_dir=None):
    """(what, value) rows: model, checkpoint, splits, data, partition, threshold, engine."""
    model = result.get("model") or {}
    config_path = Path(run_dir) / "config.json" if run_dir else None
    config = read_run_config(config_path, required={}) if config_path and config_path.is_file() else {}
    args = config.get("arguments") or {}
    rows = []
    if config or model:
        rows.append(("model", f"{_known(config.get('architecture') or model.get('architecture'))}, weights "
                              f"{_known(config.get('weights'))}; image size {_known(args.get('img_size'))}, "
                              f"at most {_known(args.get('epochs'))} epoch{'' if args.get('epochs') == 1 else 's'}, "
                              f"seed {_known(config.get('seed'))}"))
    if model.get("checkpoint"):
        rows.append(("checkpoint", f"{model['checkpoint']}, epoch {_known(model.get('epoch'))}"))
    if config:
        counts = f" ({_pairs(config['counts'])} images)" if config.get("counts") else ""
        rows += [("splits file", f"{_known(config.get('splits_file'))}{counts}"),
                 ("data", str(_known(config.get("data_root"))))]
        rows += _partition_rows(Path(run_dir), config)
        rows.append(("code", f"git commit {_known(config.get('git_commit'))}, trained {_known(config.get('created'))}"))
    else:
        rows.append(("run", "no config.json beside the predictions: scored without training provenance"))
    rows += [("predictions", f"{result.get('predictions')} ({result.get('input_format')})"),
             ("threshold", _threshold_text(result)), ("engine", r_bridge.describe_engine(result["engine"]))]
    return rows


def _header_lines(result):
    lines = [f"# medclf report: {result.get('predictions')}", "",
             f"Engine: {r_bridge.describe_engine(result['engine'])}. Split: {result.get('split')}. "
             f"n = {result['n']}. Input format: {result.get('input_format')}.", ""]
    if result.get("threshold_optimistic"):
        lines += [f"**Optimistic estimate:** {result['threshold_optimistic']}.", ""]
    if result.get("clusters"):
        c = result["clusters"]
        lines += [f"**{c['n_images']} images in {c['n_groups']} groups; intervals over groups** (up to "
                  f"{c['largest_group']} images per patient, lesion or duplicate cluster of splits.csv): each "
                  "interval's method below says how (clustered DeLong, effective-sample-size Clopper-Pearson, "
                  f"or a group bootstrap of {c['bootstrap']['n']} resamples).", ""]
    if result["task"] == "binary":
        lines.append(f"Positive class **{result['positive_class']}** (vs {result['negative_class']}); "
                     f"{result['decision_rule']}; threshold {_threshold_text(result)}.")
        if result.get("grouping"):
            g = result["grouping"]
            lines.append(f"Clinical grouping: {g['name']} = {', '.join(g['classes'])} ({g['rule']}).")
        cm = result["confusion_matrix"]
        lines += ["", "## Confusion matrix", "", f"| truth \\ called | {result['positive_class']} | {result['negative_class']} |",
                  "|---|---|---|", f"| {result['positive_class']} | TP {cm['tp']} | FN {cm['fn']} |",
                  f"| {result['negative_class']} | FP {cm['fp']} | TN {cm['tn']} |"]
    else:
        cm = result["confusion_matrix"]
        lines.append(f"Multi-class ({len(result['classes'])} classes); {result['decision_rule']}.")
        lines += ["", "## Confusion matrix (rows = truth, columns = decision)", "",
                  "| truth \\ called | " + " | ".join(cm["classes"]) + " |", "|---" * (len(cm["classes"]) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(str(x) for x in row) + " |" for c, row in zip(cm["classes"], cm["matrix"])]
    return lines


def _metric_lines(result):
    boot = (result.get("bootstrap") or {}).get("intervals", {})
    lines = ["", "## Metrics (95% intervals)", "", "| metric | estimate | interval | method | bootstrap |",
             "|---|---|---|---|---|"]
    for name, v in result["metrics"].items():
        b = boot.get(name)
        bs = interval(b) if b and b.get("lower") is not None else ""
        note = f" ({v['note']})" if v.get("note") else ""
        lines.append(f"| {name} | {number(v['estimate'])} | {interval(v)} | {v['method']}{note} | {bs} |")
    per_class = result.get("per_class") or {}
    if per_class:
        cols = ["sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "average_precision"]
        lines += ["", "## Per class (one-vs-rest)", "", "| class | n | " + " | ".join(cols) + " |",
                  "|---" * (len(cols) + 2) + "|"]
        notes = []
        for name, pc in per_class.items():
            lines.append(f"| {name} | {pc['n']} | " + " | ".join(estimate_with_interval(pc["metrics"][c]) for c in cols) + " |")
            notes += [f"- {name}, {c}: {pc['metrics'][c]['note']}" for c in cols
                      if pc["metrics"][c].get("note") and M.zero_width(pc["metrics"][c]["lower"], pc["metrics"][c]["upper"])]
        lines.append("| macro | | " + " | ".join(number(result["macro"][c]["estimate"]) for c in cols) + " |")
        if notes:
            lines += ["", "Zero-width intervals:"] + notes
    return lines


def _external_lines(result):
    external = result.get("external")
    if not external:
        return []
    return ["", f"**External validation: {external['name']}.** The images come from another dataset than the run's "
                f"training data ({external['splits']}, SHA-256 {external['sha256'][:12]}...; none is a copy of a "
                "training or validation image, checked by content). Compare with the internal test result side by side."]


def markdown_report(result, run_dir=None, plots=()):
    lines = (_header_lines(result) + _external_lines(result) + _metric_lines(result)
             + reliability.markdown_lines(result) + decision_curve.markdown_lines(result)
             + subgroups.markdown_lines(result))
    if result.get("operating_points"):
        lines += ["", "## Operating points (on this split; step function, no interpolation)", "",
                  "| kind | target | threshold | sensitivity | specificity | precision |", "|---|---|---|---|---|---|"]
        for op in result["operating_points"]:
            thr = "none reaches it" if op["threshold"] is None else f"{op['threshold']:.6g}"
            lines.append(f"| {op['kind']} | {op['target']} | {thr} | {number(op['sensitivity'])} | "
                         f"{number(op['specificity'])} | {number(op['precision'])} |")
    if result.get("bootstrap"):
        b = result["bootstrap"]
        lines += ["", f"Bootstrap: {b['n']} resamples, seed {b['seed']}, {b['method']}."]
    lines += ["", "## Provenance", "", "| | |", "|---|---|"]
    lines += [f"| {what} | {text} |" for what, text in provenance_rows(result, run_dir)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def _binary_curves(y, s):
    tab = M.threshold_table(y, s)
    fpr = np.concatenate([[0.0], 1 - tab["specificity"]])
    tpr = np.concatenate([[0.0], tab["sensitivity"]])
    recall = np.concatenate([[0.0], tab["sensitivity"]])
    precision = np.concatenate([[1.0], tab["precision"]])
    return fpr, tpr, recall, precision


def _plot_series(result, data):
    """(name, truth, score, metrics) per curve: the positive side of a binary report, or each class."""
    if result["task"] == "binary":
        frame = {"members": (result["grouping"] or {}).get("classes") or [result["positive_class"]]}
        view = binary_view(data, frame)
        series = [(result["positive_class"], view["is_positive"], view["score"], result["metrics"])]
    else:
        series = [(c, data["labels"] == k, data["probabilities"][:, k], result["per_class"][c]["metrics"])
                  for k, c in enumerate(data["classes"])]
    return [t for t in series if t[1].any() and (~t[1]).any()]


def _plot_roc_pr(plt, result, series, save):
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, y, s, m in series:
        fpr, tpr, _, _ = _binary_curves(y, s)
        auc = m["roc_auc"]
        ax.step(fpr, tpr, where="post", label=f"{name}: AUC {number(auc['estimate'])} ({interval(auc)})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (DeLong 95% CI)")
    if series:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "only one class present: no ROC curve", ha="center")
    save(fig, "roc")

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, y, s, m in series:
        _, _, recall, precision = _binary_curves(y, s)
        ax.step(recall, precision, where="pre", label=f"{name}: AP {number(m['average_precision']['estimate'])}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1.01), ylim=(0, 1.01))
    if series:
        ax.legend(fontsize=7, loc="lower left")
    save(fig, "pr")

    if result["task"] == "binary" and series:
        name, y, s, _ = series[0]
        _, _, recall, precision = _binary_curves(y, s)
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.step(recall, precision, where="pre", marker=".", label=name)
        for op in result["operating_points"]:
            if op["kind"] == "precision_at_recall" and op["threshold"] is not None:
                ax.plot(op["sensitivity"], op["precision"], "o", ms=8,
                        label=f"recall>={op['target']}: precision {number(op['precision'])} at threshold {op['threshold']:.4g}")
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, recall 0.95-1", xlim=(0.95, 1.001))
        ax.legend(fontsize=7, loc="lower left")
        save(fig, "pr_zoom")


def _plot_confusion(plt, result, save):
    cm = result["confusion_matrix"]
    if result["task"] == "binary":
        labels = [result["negative_class"], result["positive_class"]]
        matrix = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    else:
        labels, matrix = cm["classes"], np.array(cm["matrix"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(labels), 1 + 0.7 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="decision", ylabel="truth", title="Confusion matrix")
    save(fig, "confusion")


def _plot_calibration(plt, result, data, series, save):
    fig, ax = plt.subplots(figsize=(5, 5))
    bins = np.linspace(0, 1, 11)
    if result["task"] == "binary":
        _, y, s, _ = series[0] if series else (None, np.zeros(0, bool), np.zeros(0), None)
        what = f"P({result['positive_class']})"
    else:
        s = data["probabilities"].max(axis=1)
        y = data["probabilities"].argmax(axis=1) == data["labels"]
        what = "confidence of the decided class"
    which = np.clip(np.digitize(s, bins) - 1, 0, 9)
    xs, ys, ns = [], [], []
    for b in range(10):
        sel = which == b
        if sel.any():
            xs.append(s[sel].mean()); ys.append(y[sel].mean()); ns.append(int(sel.sum()))
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.plot(xs, ys, "o-")
    for x, yv, n in zip(xs, ys, ns):
        ax.annotate(str(n), (x, yv), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set(xlabel=f"mean predicted {what}", ylabel="observed frequency", title="Calibration (10 bins; n per bin)",
           xlim=(-0.02, 1.02), ylim=(-0.02, 1.08))
    save(fig, "calibration")


def write_plots(result, data, out_dir, names=None):
    """The ROC, PR, PR zoom (binary), confusion, calibration and decision-curve (binary) plots under `names` (plot -> file name,
    default output_names(result's split)); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medclf.core.fileio import atomic_path

    out_dir = Path(out_dir)
    names = names or output_names(result.get("split") or "test")
    written = []

    def save(fig, plot):
        path = out_dir / names[plot]
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    series = _plot_series(result, data)
    _plot_roc_pr(plt, result, series, save)
    _plot_confusion(plt, result, save)
    _plot_calibration(plt, result, data, series, save)
    if result.get("decision_curve"):
        decision_curve.plot(plt, result["decision_curve"], save)
    if result.get("subgroups"):
        subgroups.plot(plt, result, save)
    return written


def quality_gate_section(result, request, engine, record):
    """When `medclf test --quality-gate` marked the predictions (`record`, the file of
    request["predictions_path"]): score the images that passed (predictions_<split>_passed.json beside
    the file), store {n, passed, rejected, metrics} as result["quality_gate"] and return the Markdown
    section; else "" and result is unchanged."""
    source = Path(request["predictions_path"])
    subset = passed_subset(record)
    if subset is None:
        return ""
    n, passed = len(record["quality"]), len(subset["labels"])
    section = {"n": n, "passed": passed, "rejected": n - passed, "gate": record.get("quality_gate"), "metrics": None}
    lines = ["", "## Quality gate", "",
             f"Gate {(record.get('quality_gate') or {}).get('file')}: {passed} of {n} images passed, {n - passed} rejected.",
             ""]
    if passed:
        passed_path = source.with_name(source.stem + "_passed.json")
        write_json(passed_path, subset)
        clusters = request.get("clusters")
        if clusters is not None:  # the groups of the images that passed, in the subset's order
            clusters = [c for c, verdict in zip(clusters, record["quality"]) if verdict == "passed"]
        subset_result, _ = run_engine(dict(request, predictions_path=str(passed_path), clusters=clusters), engine)
        section["metrics"] = subset_result["metrics"]
        lines += ["| metric | all images (n = %d) | passed (n = %d) |" % (n, passed), "|---|---|---|"]
        for name, v in result["metrics"].items():
            w = subset_result["metrics"].get(name)
            if isinstance(v, dict) and "estimate" in v and isinstance(w, dict):
                lines.append(f"| {name} | {estimate_with_interval(v)} | {estimate_with_interval(w)} |")
    result["quality_gate"] = section
    return "\n".join(lines) + "\n"


def _group_level_inputs(run_dir, split, predictions, raw, val_path, reduce, positive):
    """(group-level predictions path, its record, group-level val path or None): derived from the
    image-level files and written beside them (medclf.evaluate.group_level)."""
    group_of = group_level.run_groups(run_dir)
    derived = group_level.group_level_record(raw, group_of, reduce, positive, predictions.name)
    path = group_level.group_predictions_file(run_dir, split, reduce)
    write_json(path, derived)
    if val_path is not None:
        val = group_level.group_level_record(read_predictions_file(val_path), group_of, reduce, positive, val_path.name)
        val_path = group_level.group_predictions_file(run_dir, "val", reduce)
        write_json(val_path, val)
    return path, derived, val_path


def report_run(run_dir, split="test", positive=None, threshold=None, threshold_rule=None, group=None,
               engine="auto", boot_n=0, seed=1, plots=True, tag=None, allow_uncalibrated=False, level="image",
               group_reduce="mean", prevalence=None, by=None, bands=None):
    """Score results/NAME/predictions_<split>.json; write results_<split>[_<tag>].json,
    report_<split>[_<tag>].md and the plots named likewise (output_names). Rank scores (a rank
    ensemble) are refused unless allow_uncalibrated (medclf.evaluate.ensemble.refuse_uncalibrated).
    level "group" scores one prediction per group (medclf.evaluate.group_level; tag default
    group-<reduce>). `prevalence`: the population's, for the decision curve (default the split's).
    `by`: splits.csv columns whose subgroups are reported (medclf.evaluate.subgroups), `bands`
    ['age=0,30,50,70', ...] for numeric ones."""
    from medclf.evaluate.ensemble import refuse_uncalibrated

    run_dir = Path(run_dir)
    if level not in ("image", "group"):
        raise MedclfError(f"--level {level}: use image or group")
    by, band_edges = [c.strip() for c in (by or []) if c.strip()], subgroups.parse_bands(bands)
    if by and level == "group":
        raise MedclfError("--by reads each image's row of splits.csv; use it with --level image")
    if level == "group" and tag is None:
        tag = f"group-{group_reduce}"
    names = output_names(split, tag)
    predictions = require_file(layout.predictions_file(run_dir, split), run_dir)
    raw = read_predictions_file(predictions)  # the one read of the file on the Python side
    uncalibrated = refuse_uncalibrated(raw, predictions, allow_uncalibrated)
    if (run_dir / "config.json").is_file():  # refuse a broken config.json before anything is written
        read_run_config(run_dir / "config.json", required={})
    val_path = None
    if threshold_rule is not None:
        val_path = run_dir / "predictions_val.json"
        if not val_path.is_file():
            raise MedclfError(f"{val_path}: not found; a threshold rule is chosen on validation predictions "
                              f"(`medclf test --run {run_dir}` writes them)")
    if level == "group":
        predictions, raw, val_path = _group_level_inputs(run_dir, split, predictions, raw, val_path, group_reduce,
                                                         positive)
    clusters = None if level == "group" else group_level.image_groups(run_dir, raw)
    request = build_request(predictions, val_path, positive, threshold, threshold_rule, group, boot_n, seed,
                            clusters=clusters, prevalence=prevalence)
    data = validate_predictions(raw, predictions)
    frame = framing(data, positive, request["group"])  # refuses before any engine
    result, notes = run_engine(request, engine)
    if notes:
        result["engine_notes"] = notes
    if raw.get("external"):
        result["external"] = raw["external"]
    if by:
        result["subgroups"] = subgroups.subgroup_analysis(
            raw, request, result, group_level.run_split_frame(run_dir, "--by"), by, band_edges,
            lambda sub_request: run_engine(sub_request, engine))
    variability = None
    if threshold_rule is not None and frame is not None:
        val = validate_predictions(read_predictions_file(val_path), val_path)
        variability = reliability.threshold_variability(binary_view(val, frame), binary_view(data, frame), threshold_rule)
    result["reliability"] = reliability.reliability_sections(raw, data, variability, boot_n, seed)
    if uncalibrated:
        result["uncalibrated_scores"] = uncalibrated
        gate_markdown = f"\n**Not calibrated:** {uncalibrated}.\n"
    else:
        gate_markdown = ""
    gate_markdown += quality_gate_section(result, request, engine, raw)
    if level == "group":
        result["level"] = raw["level"]
        gate_markdown += "\n" + group_level.describe(raw["level"]) + "\n"
    results_path = run_dir / names["results"]
    write_json(results_path, result)
    plot_paths = write_plots(result, data, run_dir, names) if plots else []
    report_path = run_dir / names["report"]
    write_text(report_path, markdown_report(result, run_dir, plot_paths) + gate_markdown)
    return {"results": results_path, "report": report_path, "plots": plot_paths, "result": result}
