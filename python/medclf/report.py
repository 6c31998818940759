"""`medclf report`: metrics with intervals, operating points, plots and a Markdown report.

The numbers come from ONE R function, `medclf_report_json(request_json)` in R/report.R, run
through rpy2 when it works, else through an `Rscript --vanilla R/calc_model_performance.R`
subprocess, else from the pure-Python mirror below (`python_report`, marked
`"engine": {"name": "python"}`), which follows R/metrics.R to 1e-9 (see the parity tests).
The request is a small JSON object (see R/report.R): predictions_path, val_predictions_path,
positive, threshold, threshold_rule, group, boot_n, seed, legacy.

Outputs in the run folder: results_<split>.json (medclf.results/1), report.md, roc.png, pr.png,
pr_zoom.png (recall 0.95-1 with the recall >= 0.999 operating point), confusion.png and
calibration.png.
"""

import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

from medclf import metrics as M
from medclf.errors import MedclfError
from medclf.fileio import read_json, write_json, write_text

PREDICTIONS_SCHEMA = "medclf.predictions/1"
RESULTS_SCHEMA = "medclf.results/1"
LEGACY_KEYS = ("labels", "predictions", "predictive probabilities", "label probabilities")
ROW_SUM_TOLERANCE = 1e-6
ENGINES = ("auto", "rpy2", "rscript", "python")
RSCRIPT_ERROR_PREFIX = "calc_model_performance.R: error: "


class EngineUnavailable(Exception):
    """An R route cannot run here (no rpy2, no R, missing package); the next route is tried."""


def r_dir():
    """The repository's R/ folder (editable install), or $MEDCLF_R_DIR."""
    import medclf

    override = os.environ.get("MEDCLF_R_DIR")
    return Path(override) if override else Path(medclf.__file__).resolve().parents[2] / "R"


# --------------------------------------------------------------------------- input (mirrors R/io.R)

def _fail(source, message):
    raise MedclfError(f"{source}: {message}")


def read_predictions_file(path):
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        _fail(path, "file is empty; re-create it with `medclf test`")
    try:
        return read_json(path)
    except MedclfError as exc:
        if "not valid JSON" in str(exc):
            raise MedclfError(f"{path}: not valid JSON (truncated?); re-create it with `medclf test`") from exc
        raise


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _matrix(rows, field, source):
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 2:
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            _fail(source, f"{field}: expected a list of rows (one row of class values per image)")
        if len({len(r) for r in rows}) > 1:
            _fail(source, f"{field}: rows have different lengths or non-numeric entries; expected one row of numbers per image")
        for i, r in enumerate(rows):
            for j, v in enumerate(r):
                if v is None:
                    _fail(source, f"{field}: row {i + 1}, column {j + 1} is NaN or missing; every image needs finite values")
        _fail(source, f"{field}: entries must be numbers")
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        i, j = bad[0]
        _fail(source, f"{field}: row {i + 1}, column {j + 1} is NaN or missing; every image needs finite values")
    return arr


def _softmax_rows(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e[:, 0].copy()
    for j in range(1, e.shape[1]):  # sequential sum, as R/io.R, so both agree bit for bit
        total = total + e[:, j]
    return e / total[:, None]


def _present(obj, key):
    return obj.get(key) is not None


def validate_predictions(obj, source):
    """Python mirror of mc_validate_predictions (R/io.R): same checks, same messages."""
    if not isinstance(obj, dict):
        _fail(source, "expected a JSON object with labels and probabilities")
    legacy = "schema" not in obj or obj["schema"] is None
    if not legacy and obj["schema"] != PREDICTIONS_SCHEMA:
        _fail(source, f"schema: '{obj['schema']}' is not supported (expected {PREDICTIONS_SCHEMA})")
    required = LEGACY_KEYS if legacy else ("classes", "labels", "probabilities")
    missing = [k for k in required if k not in obj]
    if missing:
        expected = ("the four keys of test_torchvision.py or a medclf.predictions/1 file" if legacy
                    else "a file written by `medclf test`")
        _fail(source, f"missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}; expected {expected}")
    field = "predictive probabilities" if legacy else "probabilities"
    labels = obj["labels"]
    if not isinstance(labels, list) or any(isinstance(v, (list, dict, str, bool)) for v in labels):
        _fail(source, "labels: expected a list of integer class indices")
    if not labels:
        _fail(source, "labels: empty; there is nothing to report")
    for i, v in enumerate(labels):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            _fail(source, f"labels: entry {i + 1} is NaN or missing")
    for i, v in enumerate(labels):
        if v != round(v):
            _fail(source, f"labels: entry {i + 1} is not an integer class index")
    n = len(labels)
    scores = _matrix(obj[field], field, source)
    lengths = {"labels": n, field: scores.shape[0]}
    for key in ("predictions", "paths", "label probabilities"):
        if _present(obj, key):
            lengths[key] = len(obj[key])
    for key, length in lengths.items():
        if length != n:
            _fail(source, f"{key}: has {length} entries but labels has {n}; every field needs one entry per image")
    if _present(obj, "predictions") and not all(_is_number(v) and not math.isnan(v) for v in obj["predictions"]):
        _fail(source, "predictions: expected a list of integer class indices without missing values")
    k = scores.shape[1]
    if k < 2:
        _fail(source, f"{field}: need at least two columns (one per class), found {k}")
    if legacy:
        probabilities = _softmax_rows(scores)
        classes = [str(i) for i in range(k)]
    else:
        out = np.argwhere((scores < 0) | (scores > 1))
        if len(out):
            i, j = out[0]
            _fail(source, f"{field}: value {scores[i, j]:.15g} at row {i + 1}, column {j + 1} is outside [0, 1]")
        total = scores[:, 0].copy()
        for j in range(1, k):
            total = total + scores[:, j]
        off = np.flatnonzero(np.abs(total - 1) > ROW_SUM_TOLERANCE)
        if len(off):
            _fail(source, f"{field}: row {off[0] + 1} sums to {total[off[0]]:.15g}, not 1 "
                          f"(tolerance {ROW_SUM_TOLERANCE:g}); write softmax probabilities")
        probabilities = scores
        classes = obj["classes"]
        if (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
                or len(set(classes)) != len(classes)):
            _fail(source, "classes: expected a list of distinct class names")
        if len(classes) != k:
            _fail(source, f"classes: has {len(classes)} names but {field} has {k} columns")
    labels_arr = np.asarray(labels, dtype=np.float64)
    bad = np.flatnonzero((labels_arr < 0) | (labels_arr >= k))
    if len(bad):
        _fail(source, f"labels: value {labels[bad[0]]} at entry {bad[0] + 1} is not a class index 0..{k - 1}")
    if legacy:
        declared = "1" if k == 2 else None
    else:
        declared = obj.get("positive_class")
    if declared is not None and declared not in classes:
        _fail(source, f"positive_class: '{declared}' is not one of the classes ({', '.join(classes)})")
    return {"format": "original four-key (logits -> softmax)" if legacy else PREDICTIONS_SCHEMA,
            "split": obj.get("split"), "classes": list(classes), "labels": labels_arr.astype(np.int64),
            "probabilities": probabilities, "paths": obj.get("paths"), "positive_class": declared,
            "model": obj.get("model") if isinstance(obj.get("model"), dict) else None, "source": str(source)}


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
            _fail("group", "expected NAME=CLASS,CLASS (e.g. malignant=mel,bcc,akiec)")
        unknown = [c for c in members if c not in classes]
        if unknown:
            _fail(f"group '{group['name']}'", f"class '{unknown[0]}' is not one of the classes ({', '.join(classes)})")
        if len(members) == len(classes):
            _fail(f"group '{group['name']}'", "contains every class; leave at least one class outside")
        return {"positive": group["name"], "negative": f"not {group['name']}", "members": members,
                "group": {"name": group["name"], "classes": members,
                          "rule": "probability of the group = sum of its classes' probabilities"}}
    if positive is not None and positive not in classes:
        _fail("positive class", f"'{positive}' is not one of the classes ({', '.join(classes)})")
    if positive is None:
        positive = data["positive_class"]
    if positive is None and len(classes) == 2:
        positive = classes[1]
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


def _python_engine():
    import scipy
    import sklearn

    return {"name": "python", "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "sklearn": sklearn.__version__}


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
    selection = None
    if threshold is not None and rule is not None:
        _fail("options", "give either a threshold or a threshold rule, not both")
    if rule is not None:
        val = load_predictions(request, "val_predictions")
        if val is None:
            _fail("threshold rule", f"'{rule}' needs validation predictions (--threshold-from predictions_val.json)")
        if val["classes"] != data["classes"]:
            _fail(val["source"], f"classes ({', '.join(val['classes'])}) differ from the test predictions' classes "
                                 f"({', '.join(data['classes'])})")
        val_view = binary_view(val, frame)
        selection = M.choose_threshold(val_view["is_positive"], val_view["score"], rule)
        selection.update(n_validation=len(val_view["score"]), source=val["source"])
        threshold, source = selection["threshold"], f"validation:{rule}"
    elif threshold is not None:
        if not _is_number(threshold) or not 0 <= threshold <= 1:
            _fail("threshold", f"{threshold} is not a probability in [0, 1]")
        source = "fixed"
    else:
        threshold, source = 0.5, "default"
    y, s = view["is_positive"], view["score"]
    b = M.binary_metrics(y, s, threshold)
    truth = y.astype(np.int64)
    decided = (s >= threshold).astype(np.int64)
    per_class = M.per_class_metrics(truth, decided, np.column_stack([view["other"], s]),
                                    [frame["negative"], frame["positive"]])
    out = {"schema": RESULTS_SCHEMA, "engine": _python_engine(), "task": "binary", "split": data["split"],
           "predictions": data["source"], "input_format": data["format"], "classes": data["classes"],
           "positive_class": frame["positive"], "negative_class": frame["negative"], "grouping": frame["group"],
           "threshold": float(threshold), "threshold_source": source, "threshold_selection": selection,
           "decision_rule": "positive when probability >= threshold", "n": int(len(truth)),
           "n_positive": int(truth.sum()), "n_negative": int((1 - truth).sum()),
           "confusion_matrix": b["confusion_matrix"], "metrics": b["metrics"], "per_class": per_class,
           "macro": M.macro_metrics(per_class), "operating_points": M.operating_points(y, s), "model": data["model"]}
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


def _multiclass_python(request, data):
    if request.get("threshold") is not None or request.get("threshold_rule") is not None:
        _fail("options", "a threshold needs a binary task: name --positive CLASS or --group NAME=CLASS,...")
    m = M.multiclass_metrics(data["labels"], data["probabilities"], data["classes"])
    out = {"schema": RESULTS_SCHEMA, "engine": _python_engine(), "task": "multiclass", "split": data["split"],
           "predictions": data["source"], "input_format": data["format"], "classes": data["classes"],
           "positive_class": None, "threshold": None, "threshold_source": "argmax",
           "decision_rule": "class with the highest probability (first on ties)", "n": int(len(data["labels"])),
           "confusion_matrix": m["confusion_matrix"], "metrics": m["metrics"], "per_class": m["per_class"],
           "macro": m["macro"], "operating_points": [], "model": data["model"]}
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
        _fail("request", "no predictions (predictions_path or predictions)")
    frame = framing(data, request.get("positive"), request.get("group"))
    result = _multiclass_python(request, data) if frame is None else _binary_python(request, data, frame)
    if request.get("legacy"):
        if result["task"] != "binary":
            _fail("--legacy", "the two-array output is binary only; name --positive CLASS or --group")
        m = result["metrics"]
        return [["Accuracy", "Sensitivity", "Specificity", "ROC-AUC", "Cohen's Kappa"],
                [m["accuracy"]["estimate"], m["sensitivity"]["estimate"], m["specificity"]["estimate"],
                 m["roc_auc"]["estimate"], m["cohen_kappa"]["estimate"]]]
    return result


# ------------------------------------------------------------------------------------ engines

def _decode_r_result(text):
    result = json.loads(text)
    if isinstance(result, dict) and result.get("schema") == "medclf.error/1":
        raise MedclfError(result["error"])
    return result


_RPY2_STATE = {}


def quiet_r_console():
    """Route embedded R's console warnings (e.g. start-up notes about empty site libraries) into a
    list instead of stderr; returns the list."""
    from rpy2.rinterface_lib import callbacks

    captured = []
    callbacks.consolewrite_warnerror = captured.append
    callbacks.consolewrite_print = captured.append
    return captured


def rpy2_errors():
    """Exceptions that mean "the rpy2 route cannot run": rpy2's RRuntimeError is not a RuntimeError."""
    basic = (ImportError, OSError, ValueError, RuntimeError)
    try:
        from rpy2.rinterface_lib.embedded import RRuntimeError
    except basic:
        return basic
    return basic + (RRuntimeError,)


def rpy2_report(request):
    """Run medclf_report_json through rpy2 (embedded R). Only JSON strings cross the bridge."""
    try:
        if "function" not in _RPY2_STATE:
            quiet_r_console()
            import rpy2.robjects as ro

            for package in ("pROC", "jsonlite"):
                if not ro.r(f'isTRUE(suppressWarnings(requireNamespace("{package}", quietly = TRUE)))')[0]:
                    raise EngineUnavailable(f"R package {package} is not installed")
            report_r = r_dir() / "report.R"
            if not report_r.is_file():
                raise EngineUnavailable(f"{report_r} not found (set MEDCLF_R_DIR)")
            ro.r.source(str(report_r))
            _RPY2_STATE["function"] = ro.globalenv["medclf_report_json"]
        text = _RPY2_STATE["function"](json.dumps(request))[0]
    except EngineUnavailable:
        raise
    except rpy2_errors() as exc:
        raise EngineUnavailable(f"rpy2: {type(exc).__name__}: {str(exc).strip()[:300]}") from exc
    return _decode_r_result(str(text))


def _rscript_argv(request, out_path):
    script = r_dir() / "calc_model_performance.R"
    if not script.is_file():
        raise EngineUnavailable(f"{script} not found (set MEDCLF_R_DIR)")
    rscript = shutil.which("Rscript")
    if rscript is None:
        raise EngineUnavailable("Rscript is not on PATH")
    argv = [rscript, "--vanilla", str(script), str(request["predictions_path"]), str(out_path)]
    if request.get("positive") is not None:
        argv += ["--positive", str(request["positive"])]
    if request.get("threshold") is not None:
        argv += ["--threshold", repr(float(request["threshold"]))]
    if request.get("threshold_rule") is not None:
        argv += ["--threshold-rule", request["threshold_rule"]]
    if request.get("val_predictions_path") is not None:
        argv += ["--threshold-from", str(request["val_predictions_path"])]
    if request.get("group") is not None:
        argv += ["--group", f"{request['group']['name']}={','.join(request['group']['classes'])}"]
    if request.get("boot_n"):
        argv += ["--boot", str(int(request["boot_n"])), "--seed", str(int(request.get("seed") or 1))]
    if request.get("legacy"):
        argv += ["--legacy"]
    return argv


def rscript_report(request):
    """Run R/calc_model_performance.R in an `Rscript --vanilla` subprocess."""
    if request.get("predictions_path") is None:
        raise EngineUnavailable("the Rscript route needs predictions_path")
    with tempfile.TemporaryDirectory(prefix="medclf-report-") as tmp:
        out_path = Path(tmp) / "results.json"
        argv = _rscript_argv(request, out_path)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)
        except OSError as exc:
            raise EngineUnavailable(f"Rscript: {exc}") from exc
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            user = [ln for ln in lines if ln.startswith(RSCRIPT_ERROR_PREFIX)]
            if user:
                raise MedclfError(user[-1][len(RSCRIPT_ERROR_PREFIX):])
            raise EngineUnavailable("Rscript failed: " + " | ".join(lines[-3:]))
        return _decode_r_result(out_path.read_text(encoding="utf-8"))


def run_engine(request, engine="auto"):
    """(result, notes): the result of the first engine that runs, in the order rpy2, Rscript, Python."""
    if engine not in ENGINES:
        raise MedclfError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    order = {"auto": ("rpy2", "rscript", "python")}.get(engine, (engine,))
    routes = {"rpy2": rpy2_report, "rscript": rscript_report, "python": python_report}
    notes = []
    for name in order:
        try:
            return routes[name](request), notes
        except EngineUnavailable as exc:
            if engine != "auto":
                raise MedclfError(f"--engine {engine} is unavailable here: {exc}; "
                                  "use --engine auto (falls back to Python) or see docs/report.md") from exc
            notes.append(f"{name} unavailable: {exc}")
            warnings.warn(f"medclf report: {name} unavailable ({exc}); trying the next engine", stacklevel=2)
    raise MedclfError("no report engine could run")  # unreachable: python always runs


# ------------------------------------------------------------------------------------- outputs

def parse_group(text):
    """'malignant=mel,bcc,akiec' -> {'name': 'malignant', 'classes': ['mel', 'bcc', 'akiec']}."""
    if text is None:
        return None
    name, sep, members = str(text).partition("=")
    classes = [c.strip() for c in members.split(",")]
    if not sep or not name.strip() or not classes or not all(classes):
        raise MedclfError(f"--group '{text}': expected NAME=CLASS,CLASS (e.g. malignant=mel,bcc,akiec)")
    return {"name": name.strip(), "classes": classes}


def build_request(predictions_path, val_predictions_path=None, positive=None, threshold=None, threshold_rule=None,
                  group=None, boot_n=0, seed=1, legacy=False):
    return {"predictions_path": str(predictions_path),
            "val_predictions_path": None if val_predictions_path is None else str(val_predictions_path),
            "positive": positive, "threshold": threshold, "threshold_rule": threshold_rule,
            "group": parse_group(group) if isinstance(group, str) else group,
            "boot_n": int(boot_n or 0), "seed": int(seed), "legacy": bool(legacy)}


def _fmt(x, digits=3):
    return "NA" if x is None else f"{x:.{digits}f}"


def _interval(v):
    if v.get("lower") is None or v.get("upper") is None:
        return "n/a"
    return f"{_fmt(v['lower'])} to {_fmt(v['upper'])}"


def _provenance(run_dir):
    lines = []
    config_path = run_dir / "config.json"
    if config_path.is_file():
        cfg = read_json(config_path)
        args = cfg.get("arguments", {})
        lines += [f"- model: {cfg.get('architecture')} (weights: {cfg.get('weights')}), "
                  f"{args.get('epochs')} epochs max, image size {args.get('img_size')}, seed {cfg.get('seed')}",
                  f"- splits file: {cfg.get('splits_file')}; data root: {cfg.get('data_root')}",
                  f"- split counts: {cfg.get('counts')}; git commit: {cfg.get('git_commit')}; "
                  f"created {cfg.get('created')}"]
        splits_file = cfg.get("splits_file")
        partition_path = Path(splits_file).parent / "partition.json" if splits_file else None
        if partition_path and partition_path.is_file():
            info = read_json(partition_path)
            grouping = info.get("group_column") or "duplicate clusters"
            lines.append(f"- partition: {partition_path} (seed {info.get('seed')}, ratios {info.get('ratios')}, "
                         f"grouped by {grouping}, {info.get('n_groups')} groups, label map {info.get('label_map')}); "
                         f"leakage report: {json.dumps(info.get('leakage'))[:300]}")
    return lines or ["- no config.json in the run folder (predictions scored without model provenance)"]


def markdown_report(result, run_dir=None, plots=()):
    eng = result["engine"]
    lines = [f"# medclf report: {result.get('predictions')}", "",
             f"Engine: {', '.join(f'{k} {v}' for k, v in eng.items())}. Split: {result.get('split')}. "
             f"n = {result['n']}. Input format: {result.get('input_format')}.", ""]
    if result["task"] == "binary":
        lines.append(f"Positive class **{result['positive_class']}** (vs {result['negative_class']}); "
                     f"{result['decision_rule']}; threshold {result['threshold']:.6g} ({result['threshold_source']}).")
        if result.get("grouping"):
            g = result["grouping"]
            lines.append(f"Clinical grouping: {g['name']} = {', '.join(g['classes'])} ({g['rule']}).")
        sel = result.get("threshold_selection")
        if sel:
            lines.append(f"Threshold chosen on {sel['source']} (n = {sel['n_validation']}) by {sel['rule']}: "
                         f"validation sensitivity {_fmt(sel['sensitivity'])}, specificity {_fmt(sel['specificity'])}.")
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
    boot = (result.get("bootstrap") or {}).get("intervals", {})
    lines += ["", "## Metrics (95% intervals)", "", "| metric | estimate | interval | method | bootstrap |",
              "|---|---|---|---|---|"]
    for name, v in result["metrics"].items():
        b = boot.get(name)
        bs = f"{_fmt(b['lower'])} to {_fmt(b['upper'])}" if b and b.get("lower") is not None else ""
        note = f" ({v['note']})" if v.get("note") else ""
        lines.append(f"| {name} | {_fmt(v['estimate'])} | {_interval(v)} | {v['method']}{note} | {bs} |")
    per_class = result.get("per_class") or {}
    if per_class:
        cols = ["sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "average_precision"]
        lines += ["", "## Per class (one-vs-rest)", "", "| class | n | " + " | ".join(cols) + " |",
                  "|---" * (len(cols) + 2) + "|"]
        for name, pc in per_class.items():
            cells = [f"{_fmt(pc['metrics'][c]['estimate'])} ({_interval(pc['metrics'][c])})" for c in cols]
            lines.append(f"| {name} | {pc['n']} | " + " | ".join(cells) + " |")
        lines.append("| macro | | " + " | ".join(_fmt(result["macro"][c]["estimate"]) for c in cols) + " |")
    if result.get("operating_points"):
        lines += ["", "## Operating points (on this split; step function, no interpolation)", "",
                  "| kind | target | threshold | sensitivity | specificity | precision |", "|---|---|---|---|---|---|"]
        for op in result["operating_points"]:
            thr = "none reaches it" if op["threshold"] is None else f"{op['threshold']:.6g}"
            lines.append(f"| {op['kind']} | {op['target']} | {thr} | {_fmt(op['sensitivity'])} | "
                         f"{_fmt(op['specificity'])} | {_fmt(op['precision'])} |")
    if result.get("bootstrap"):
        b = result["bootstrap"]
        lines += ["", f"Bootstrap: {b['n']} resamples, seed {b['seed']}, {b['method']}."]
    lines += ["", "## Provenance", ""]
    if result.get("model"):
        lines.append(f"- predictions made by: {json.dumps(result['model'])}")
    lines += _provenance(Path(run_dir)) if run_dir else []
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


def write_plots(result, data, out_dir):
    """roc.png, pr.png, pr_zoom.png (binary), confusion.png, calibration.png; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medclf.fileio import atomic_path

    out_dir = Path(out_dir)
    written = []

    def save(fig, name):
        path = out_dir / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    if result["task"] == "binary":
        frame = {"members": (result["grouping"] or {}).get("classes") or [result["positive_class"]]}
        view = binary_view(data, frame)
        series = [(result["positive_class"], view["is_positive"], view["score"], result["metrics"])]
    else:
        series = [(c, data["labels"] == k, data["probabilities"][:, k], result["per_class"][c]["metrics"])
                  for k, c in enumerate(data["classes"])]
    series = [t for t in series if t[1].any() and (~t[1]).any()]

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, y, s, m in series:
        fpr, tpr, _, _ = _binary_curves(y, s)
        auc = m["roc_auc"]
        ax.step(fpr, tpr, where="post", label=f"{name}: AUC {_fmt(auc['estimate'])} ({_interval(auc)})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (DeLong 95% CI)")
    if series:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "only one class present: no ROC curve", ha="center")
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, y, s, m in series:
        _, _, recall, precision = _binary_curves(y, s)
        ax.step(recall, precision, where="pre", label=f"{name}: AP {_fmt(m['average_precision']['estimate'])}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1.01), ylim=(0, 1.01))
    if series:
        ax.legend(fontsize=7, loc="lower left")
    save(fig, "pr.png")

    if result["task"] == "binary" and series:
        name, y, s, _ = series[0]
        _, _, recall, precision = _binary_curves(y, s)
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.step(recall, precision, where="pre", marker=".", label=name)
        for op in result["operating_points"]:
            if op["kind"] == "precision_at_recall" and op["threshold"] is not None:
                ax.plot(op["sensitivity"], op["precision"], "o", ms=8,
                        label=f"recall>={op['target']}: precision {_fmt(op['precision'])} at threshold {op['threshold']:.4g}")
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, recall 0.95-1", xlim=(0.95, 1.001))
        ax.legend(fontsize=7, loc="lower left")
        save(fig, "pr_zoom.png")

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
    save(fig, "confusion.png")

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
    save(fig, "calibration.png")
    return written


def quality_gate_section(result, request, engine):
    """When `medclf test --quality-gate` marked the predictions: score the images that passed
    (predictions_<split>_passed.json beside the file), store {n, passed, rejected, metrics} as
    result["quality_gate"] and return the Markdown section; else "" and result is unchanged."""
    from medclf.quality import passed_subset

    source = Path(request["predictions_path"])
    record = read_predictions_file(source)
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
        subset_result, _ = run_engine(dict(request, predictions_path=str(passed_path)), engine)
        section["metrics"] = subset_result["metrics"]
        lines += ["| metric | all images (n = %d) | passed (n = %d) |" % (n, passed), "|---|---|---|"]
        for name, v in result["metrics"].items():
            w = subset_result["metrics"].get(name)
            if isinstance(v, dict) and "estimate" in v and isinstance(w, dict):
                lines.append(f"| {name} | {_fmt(v['estimate'])} ({_interval(v)}) | {_fmt(w['estimate'])} ({_interval(w)}) |")
    result["quality_gate"] = section
    return "\n".join(lines) + "\n"


def report_run(run_dir, split="test", positive=None, threshold=None, threshold_rule=None, group=None,
               engine="auto", boot_n=0, seed=1, plots=True):
    """Score results/NAME/predictions_<split>.json; write results_<split>.json, report.md and plots."""
    run_dir = Path(run_dir)
    predictions = run_dir / f"predictions_{split}.json"
    if not predictions.is_file():
        raise MedclfError(f"{predictions}: not found; run `medclf test --run {run_dir}` first")
    val_path = None
    if threshold_rule is not None:
        val_path = run_dir / "predictions_val.json"
        if not val_path.is_file():
            raise MedclfError(f"{val_path}: not found; a threshold rule is chosen on validation predictions "
                              f"(`medclf test --run {run_dir}` writes them)")
    request = build_request(predictions, val_path, positive, threshold, threshold_rule, group, boot_n, seed)
    result, notes = run_engine(request, engine)
    if notes:
        result["engine_notes"] = notes
    data = validate_predictions(read_predictions_file(predictions), predictions)
    gate_markdown = quality_gate_section(result, request, engine)
    results_path = run_dir / f"results_{split}.json"
    write_json(results_path, result)
    plot_paths = write_plots(result, data, run_dir) if plots else []
    report_path = run_dir / "report.md"
    write_text(report_path, markdown_report(result, run_dir, plot_paths) + gate_markdown)
    return {"results": results_path, "report": report_path, "plots": plot_paths, "result": result}

