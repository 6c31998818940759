"""Pure metric functions in Python (no I/O).

They serve two purposes: the training loop's monitored validation metrics, and the pure-Python
fallback of the R report (engine "python"), which must agree with R to 1e-9. Each function
states its 0/0 convention.
"""

import numpy as np
from scipy.stats import rankdata


def roc_auc(labels_binary, scores):
    """Area under the ROC curve of `scores` for labels in {0, 1}, 1 = positive, higher score =
    more positive (pROC's direction "<"). Ties count one half (Mann-Whitney).
    One class absent: NaN (the AUC is undefined), never an error."""
    y = np.asarray(labels_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr_macro(labels, probabilities):
    """Macro average of one-vs-rest AUCs over classes; classes absent from `labels` are
    skipped (their AUC is undefined). All undefined: NaN. Two classes: the AUC of class 1."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[1] == 2:
        return roc_auc(labels == 1, probabilities[:, 1])
    aucs = [roc_auc(labels == k, probabilities[:, k]) for k in range(probabilities.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def balanced_accuracy(labels, predictions, n_classes=None):
    """Mean recall over the classes present in `labels` (the ISIC 2018 headline metric).
    A class with no true examples has recall 0/0 and is left out of the mean; no examples: NaN."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    present = np.unique(labels) if n_classes is None else [k for k in range(n_classes) if (labels == k).any()]
    if len(present) == 0:
        return float("nan")
    return float(np.mean([(predictions[labels == k] == k).mean() for k in present]))
