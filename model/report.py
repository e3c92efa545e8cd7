"""Detection metrics and the PNG report of `bflow train` and `bflow eval`.

The report has four panels: score histograms of normal, anomalous and
pseudo-anomalous samples with the threshold, the ROC curve (when anomaly
labels are known), and the per-epoch losses of the three training stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Summary histograms stored in model metadata, so `bflow eval` can draw the
# pseudo-anomaly scores without the flow, which the model file does not hold.
_HIST_BINS = 40


@dataclass
class Metrics:
    """Detection figures for one set of normal and anomalous scores."""

    n_normal: int
    n_anomalous: int
    auroc: float
    auprc: float
    tpr_at_1pct_fpr: float
    fpr_at_threshold: float
    tpr_at_threshold: float

    def as_dict(self) -> dict[str, float | int]:
        """Plain values for JSON and tables."""
        return dict(vars(self))


def tpr_at_fpr(normal: np.ndarray, anomalous: np.ndarray, fpr: float) -> float:
    """Highest true-positive rate whose false-positive rate is at most `fpr`.

    Thresholds are taken at the scores themselves and count `score >= t`.
    """
    if len(normal) == 0 or len(anomalous) == 0:
        return math.nan
    ranked = np.sort(normal)[::-1]
    allowed = math.floor(fpr * len(normal))
    cut = ranked[allowed] if allowed < len(ranked) else -np.inf

    return float(np.mean(anomalous > cut))


def detection_metrics(
    normal: np.ndarray, anomalous: np.ndarray, threshold: float
) -> Metrics:
    """AUROC, AUPRC, TPR at 1 % FPR and the rates at `threshold`.

    Anomalous is the positive class; NaN where a class is empty.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    normal = np.asarray(normal, dtype=np.float64)
    anomalous = np.asarray(anomalous, dtype=np.float64)
    if len(normal) and len(anomalous):
        y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
        s = np.r_[normal, anomalous]
        auroc = float(roc_auc_score(y, s))
        auprc = float(average_precision_score(y, s))
    else:
        auroc = auprc = math.nan

    return Metrics(
        n_normal=len(normal),
        n_anomalous=len(anomalous),
        auroc=auroc,
        auprc=auprc,
        tpr_at_1pct_fpr=tpr_at_fpr(normal, anomalous, 0.01),
        fpr_at_threshold=float(np.mean(normal >= threshold))
        if len(normal)
        else math.nan,
        tpr_at_threshold=float(np.mean(anomalous >= threshold))
        if len(anomalous)
        else math.nan,
    )


def score_histograms(groups: dict[str, np.ndarray]) -> dict[str, Any]:
    """Shared-edge histograms of several score sets, JSON-ready."""
    finite = [g[np.isfinite(g)] for g in groups.values() if len(g)]
    values = np.concatenate(finite) if finite else np.zeros(1)
    low, high = np.quantile(values, [0.001, 0.999]) if values.size else (0, 1)
    if not high > low:
        high = low + 1.0
    edges = np.linspace(low, high, _HIST_BINS + 1)
    out: dict[str, Any] = {"edges": [round(float(e), 6) for e in edges]}
    for name, scores in groups.items():
        clipped = np.clip(scores[np.isfinite(scores)], low, high)
        counts, _ = np.histogram(clipped, bins=edges)
        out[name] = [int(c) for c in counts]

    return out


def write_report(
    path: Path,
    *,
    title: str,
    history: dict[str, list[dict[str, float]]],
    normal: np.ndarray,
    anomalous: np.ndarray | None = None,
    pseudo: np.ndarray | None = None,
    stored_histograms: dict[str, Any] | None = None,
    threshold: float | None = None,
) -> None:
    """Draw the four-panel PNG report.

    Args:
        path: the PNG to write.
        title: first line of the figure title.
        history: per-stage, per-epoch losses (`TrainedModel.history`).
        normal: scores of normal samples.
        anomalous: scores of labeled anomalies, if any.
        pseudo: scores of pseudo-anomalies, if the flow is at hand.
        stored_histograms: `score_histograms` output from the metadata,
            drawn as steps when raw pseudo scores are not available.
        threshold: drawn as a vertical line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    fig.suptitle(title)

    ax = axes[0, 0]
    groups = {"normal": normal}
    if anomalous is not None and len(anomalous):
        groups["anomalous"] = anomalous
    if pseudo is not None and len(pseudo):
        groups["pseudo-anomalous"] = pseudo
    hist = score_histograms(groups)
    edges = np.array(hist["edges"])
    for name in groups:
        counts = np.array(hist[name], dtype=float)
        ax.stairs(counts / max(counts.sum(), 1), edges, label=name)
    if stored_histograms and pseudo is None:
        stored_edges = np.array(stored_histograms["edges"])
        for name in ("pseudo", "normal_val"):
            if name in stored_histograms:
                counts = np.array(stored_histograms[name], dtype=float)
                ax.stairs(
                    counts / max(counts.sum(), 1),
                    stored_edges,
                    linestyle="--",
                    label=f"{name} (at training)",
                )
    if threshold is not None:
        ax.axvline(threshold, color="black", linewidth=1, label="threshold")
    ax.set_xlabel("score (higher = more anomalous)")
    ax.set_ylabel("fraction")
    ax.set_yscale("log")
    ax.set_title("score histograms")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    if anomalous is not None and len(anomalous) and len(normal):
        from sklearn.metrics import roc_auc_score, roc_curve

        y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
        s = np.r_[normal, anomalous]
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"AUROC {roc_auc_score(y, s):.3f}")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no anomaly labels", ha="center", va="center")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("ROC")

    _curves(axes[1, 0], history, [("ae", "recon"), ("ae", "val_recon")], "stage 1")
    _curves(
        axes[1, 1],
        history,
        [
            ("flow", "loss"),
            ("flow", "val_loss"),
            ("clf", "loss_normal"),
            ("clf", "loss_pseudo"),
            ("clf", "val_loss"),
        ],
        "stages 2 (NLL/dim) and 3 (BCE)",
    )

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _curves(
    ax: Any,
    history: dict[str, list[dict[str, float]]],
    series: list[tuple[str, str]],
    title: str,
) -> None:
    drawn = False
    for stage, key in series:
        epochs = history.get(stage, [])
        values = [e[key] for e in epochs if key in e]
        if values:
            ax.plot(range(len(values)), values, marker=".", label=f"{stage} {key}")
            drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no training history", ha="center", va="center")
    ax.set_xlabel("epoch")
    ax.set_title(title)
