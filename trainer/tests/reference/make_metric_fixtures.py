#!/usr/bin/env python3
"""Reference numbers for trainer/src/metrics.rs, computed with scikit-learn.

Writes trainer/tests/data/metrics/cases.json: score/label sets (with ties, imbalance, a
label column with one class only) and sklearn's roc_auc_score and average_precision_score
for each column, plus the macro means over the columns that have both classes.

Run: python3 trainer/tests/reference/make_metric_fixtures.py
Pinned: numpy==2.4.6, scikit-learn==1.9.1.
"""

import json
import pathlib

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

rng = np.random.default_rng(11)
cases = []
for n, k, prevalence, tie_round in [(40, 3, [0.5, 0.2, 0.05], None), (200, 4, [0.3, 0.1, 0.6, 0.02], 1),
                                    (15, 2, [0.4, 0.0], 2)]:
    labels = (rng.random((n, k)) < np.array(prevalence)).astype(int)
    labels[0, :] = 1 if prevalence[0] > 0 else 0  # make sure column 0 has both classes
    labels[1, 0] = 0
    scores = rng.random((n, k)) * 0.6 + labels * rng.random((n, k)) * 0.5
    if tie_round is not None:
        scores = np.round(scores, tie_round)  # many ties
    scores = scores.astype(np.float32)  # the Rust side reads f32
    auroc, ap = [], []
    for j in range(k):
        if labels[:, j].min() == labels[:, j].max():
            auroc.append(None)
            ap.append(None)
        else:
            auroc.append(float(roc_auc_score(labels[:, j], scores[:, j])))
            ap.append(float(average_precision_score(labels[:, j], scores[:, j])))
    valid = [a for a in auroc if a is not None]
    cases.append({
        "labels": labels.tolist(),
        "scores": scores.astype(float).tolist(),
        "auroc": auroc,
        "average_precision": ap,
        "macro_auroc": float(np.mean(valid)),
        "macro_average_precision": float(np.mean([a for a in ap if a is not None])),
    })
out = pathlib.Path(__file__).resolve().parents[1] / "data" / "metrics" / "cases.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(cases) + "\n")
print(f"wrote {out}")


def silhouette_fixture():
    """Silhouette scores (scikit-learn) of small labelled point sets, for metrics.rs."""
    from sklearn.metrics import silhouette_score

    rng2 = np.random.default_rng(5)
    cases2 = []
    for n, d, groups in [(30, 3, 2), (50, 5, 3)]:
        labels = rng2.integers(0, groups, n)
        points = (rng2.normal(size=(n, d)) + labels[:, None] * 1.5).astype(np.float32)
        cases2.append({
            "points": points.astype(float).tolist(),
            "groups": labels.tolist(),
            "silhouette": float(silhouette_score(points.astype(np.float64), labels)),
        })
    out2 = pathlib.Path(__file__).resolve().parents[1] / "data" / "metrics" / "silhouette.json"
    out2.write_text(json.dumps(cases2) + "\n")
    print(f"wrote {out2}")


silhouette_fixture()
