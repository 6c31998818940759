"""`medclf calibrate`: recalibrate a run's probabilities on its validation predictions only.

Methods (references and a worked example in docs/report.md):
- temperature (Guo et al. 2017): softmax(z / T), one T > 0 minimising the validation negative
  log-likelihood; z = the file's logits when they have one column per class, else log p (the
  same softmax up to a constant). The decided class never changes.
- platt (Platt 1999): logistic regression on logit(p_k) per class with Platt's smoothed targets
  (N+ + 1)/(N+ + 2) and 1/(N- + 2); multi-class: one-vs-rest, rows renormalised.
- isotonic (Zadrozny & Elkan 2002): isotonic regression of 1(y = k) on p_k per class, clipped
  outside the validation range; multi-class rows renormalised (a row that maps to all zeros
  keeps its uncalibrated probabilities).

Writes <run>/calibrated_<method>/predictions_val.json and predictions_test.json
(medclf.predictions/1 with a "calibration" provenance block) and calibration.json
(medclf.calibration/1), so `medclf report --run <run>/calibrated_<method>` and
`medclf conformal --run <run>/calibrated_<method>` work unchanged.
"""

from pathlib import Path

import numpy as np

from medclf.core import layout, schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import sha256_file, write_json
from medclf.core.predictions import LOG_CLIP, log_probabilities, read_predictions_file, validate_predictions
from medclf.evaluate import metrics as M

CALIBRATION_SCHEMA = schemas.CALIBRATION
METHODS = ("temperature", "isotonic", "platt")


def _log_inputs(obj, probabilities):
    """Per-class scores whose softmax is the probabilities: logits if one per class, else log p."""
    logits = obj.get("logits")
    if logits is not None:
        z = np.asarray(logits, dtype=np.float64)
        if z.shape == probabilities.shape:
            return z
        if z.ndim == 2 and z.shape[1] == 1 and probabilities.shape[1] == 2:  # single-logit (sigmoid) head
            return np.column_stack([np.zeros(len(z)), z[:, 0]])
    return np.log(np.clip(probabilities, LOG_CLIP, 1.0))


def softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(z, labels):
    """T minimising the mean negative log-likelihood of softmax(z / T), searched on log T."""
    from scipy.optimize import minimize_scalar

    def nll(log_t):
        s = z / np.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(labels)), labels]))

    best = minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-8})
    return {"temperature": float(np.exp(best.x))}


def apply_temperature(params, z):
    return softmax(z / params["temperature"])


def fit_platt(p, labels):
    out = []
    for k in range(p.shape[1]):
        y = labels == k
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        target = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
        fit = M.logistic_fit(target, _logit(p[:, k]), None, slope=True)
        if fit is None:
            raise MedclfError(f"platt scaling of class {k}: the logistic fit did not converge; try --method temperature")
        out.append([float(fit[0][0]), float(fit[0][1])])
    return {"intercept_slope": out}


def _logit(p):
    p = np.clip(p, LOG_CLIP, 1 - LOG_CLIP)
    return np.log(p / (1 - p))


def apply_platt(params, p):
    a, b = np.asarray(params["intercept_slope"]).T
    q = 1 / (1 + np.exp(-(a[None, :] + b[None, :] * _logit(p))))
    return _renormalise(q, p)[0]


def fit_isotonic(p, labels):
    from sklearn.isotonic import IsotonicRegression

    models = [IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p[:, k], (labels == k).astype(float))
              for k in range(p.shape[1])]
    return {"breakpoints": [{"x": m.X_thresholds_.tolist(), "y": m.y_thresholds_.tolist()} for m in models]}


def apply_isotonic(params, p):
    q = np.column_stack([np.interp(p[:, k], bp["x"], bp["y"]) for k, bp in enumerate(params["breakpoints"])])
    return _renormalise(q, p)[0]


def _renormalise(q, fallback):
    """(rows of one-vs-rest probabilities scaled to sum 1, number of all-zero rows, which keep `fallback`)."""
    if q.shape[1] == 2:  # binary: the positive column is the calibrated one
        q = np.column_stack([1 - q[:, 1], q[:, 1]])
    total = q.sum(axis=1, keepdims=True)
    zero = total[:, 0] <= 0
    out = np.where(zero[:, None], fallback, q / np.where(total > 0, total, 1))
    return out, int(zero.sum())


FITTERS = {"temperature": (fit_temperature, apply_temperature, True),
           "platt": (fit_platt, apply_platt, False),
           "isotonic": (fit_isotonic, apply_isotonic, False)}


def load_contract(path):
    """(raw object, validated data) of a medclf.predictions/1 file; legacy four-key files refused."""
    path = Path(path)
    if not path.is_file():
        raise MedclfError(f"{path}: not found; run `medclf test --run {path.parent}` first (it writes val and test)")
    obj = read_predictions_file(path)
    data = validate_predictions(obj, path)
    if not isinstance(obj, dict) or obj.get("schema") is None:
        raise MedclfError(f"{path}: the original four-key format has no classes; write it with `medclf test`")
    return obj, data


def calibrated_record(obj, probabilities, provenance):
    """The input record with calibrated probabilities (and decisions, log-probability logits).
    The uncertainty block is recomputed from them: MC-dropout or ensemble samples were not
    calibrated, so only the entropy of the calibrated probabilities is kept."""
    from medclf.evaluate.uncertainty import uncertainty_record

    probs = probabilities.tolist()
    return dict(obj, probabilities=probs, **{"predictive probabilities": probs},
                predictions=[int(k) for k in probabilities.argmax(axis=1)],
                logits=log_probabilities(probabilities).tolist(), calibration=provenance,
                uncertainty=uncertainty_record("softmax", probabilities=probabilities))


def load_val_and_test(run_dir):
    """((path, raw, data) of predictions_val.json, the same of predictions_test.json): what is
    fitted on val and applied to test; their classes must agree."""
    val_path, test_path = layout.predictions_file(run_dir, "val"), layout.predictions_file(run_dir, "test")
    val_obj, val = load_contract(val_path)
    test_obj, test = load_contract(test_path)
    if val["classes"] != test["classes"]:
        raise MedclfError(f"{val_path}: classes {val['classes']} differ from {test_path}'s {test['classes']}")
    return (val_path, val_obj, val), (test_path, test_obj, test)


def run_calibrate(run_dir, method, out_dir=None):
    """Fit `method` on <run>/predictions_val.json, apply it to val and test; returns written paths."""
    from medclf.core.provenance import git_commit, library_versions

    if method not in FITTERS:
        raise MedclfError(f"--method {method}: use one of {', '.join(METHODS)}")
    run_dir = Path(run_dir)
    (val_path, val_obj, val), (test_path, test_obj, test) = load_val_and_test(run_dir)
    fit, apply, on_logits = FITTERS[method]
    val_in = _log_inputs(val_obj, val["probabilities"]) if on_logits else val["probabilities"]
    params = fit(val_in, val["labels"])
    provenance = {"method": method, "parameters": params, "fitted_on": str(val_path),
                  "fitted_on_sha256": sha256_file(val_path), "n_fitted": int(len(val["labels"]))}
    out_dir = Path(out_dir or run_dir / f"calibrated_{method}")
    written = []
    for name, obj, data, path in (("val", val_obj, val, val_path), ("test", test_obj, test, test_path)):
        inputs = _log_inputs(obj, data["probabilities"]) if on_logits else data["probabilities"]
        calibrated = apply(params, inputs)
        record = calibrated_record(obj, calibrated, dict(provenance, source=str(path), source_sha256=sha256_file(path)))
        written.append(layout.predictions_file(out_dir, name))
        write_json(written[-1], record)
    summary = {"schema": CALIBRATION_SCHEMA, **provenance, "outputs": [str(p) for p in written],
               "library_versions": library_versions(), "git_commit": git_commit()}
    write_json(out_dir / "calibration.json", summary)
    return written + [out_dir / "calibration.json"]
