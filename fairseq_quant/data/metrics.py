"""Task metrics from predictions and targets (scikit-learn, scipy); values are fractions."""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

__all__ = ["classification_metrics", "regression_metrics"]


def classification_metrics(preds: np.ndarray, targets: np.ndarray) -> dict:
    """Accuracy, and for two classes also F1 (positive class 1) and Matthews correlation.

    ``preds`` and ``targets`` are integer class ids of the same length (> 0).
    """
    out = {"accuracy": float(accuracy_score(targets, preds))}
    if max(int(preds.max(initial=0)), int(targets.max(initial=0))) <= 1:
        out["f1"] = float(f1_score(targets, preds, zero_division=0))
        out["mcc"] = float(matthews_corrcoef(targets, preds))
    return out


def regression_metrics(preds: np.ndarray, targets: np.ndarray) -> dict:
    """Pearson and Spearman correlation (0 where the predictions are constant)."""
    const = np.allclose(preds, preds[0]) if len(preds) else True
    pearson = 0.0 if const else float(pearsonr(preds, targets)[0])
    spearman = 0.0 if const else float(spearmanr(preds, targets)[0])
    return {"pearson": pearson, "spearman": spearman}
