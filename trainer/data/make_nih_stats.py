#!/usr/bin/env python3
"""Derives the statistics the synthetic X-ray world draws from, from the real NIH
ChestX-ray14 metadata table (Data_Entry_2017_v2020.csv.gz; NIH Clinical Center, no
restrictions on use; Wang et al., "ChestX-ray8", CVPR 2017).

Writes trainer/src/synthetic/nih_stats.json: image counts per (age decade, sex, view) cell
and, per cell, how many images carry each NIH finding. Only these counts are used, so the
generator reproduces the real joint distribution of age, sex and view and each finding's
dependence on them.

Run: python3 trainer/data/make_nih_stats.py [path/to/Data_Entry_2017_v2020.csv.gz]
(default path: ../shared/data/nih/ beside the repository). Standard library only.
"""

import csv
import gzip
import json
import pathlib
import sys

FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
]
AGE_BINS = 10  # decades 0-9, ..., 80-89, 90+
SEXES = ["M", "F"]
VIEWS = ["PA", "AP"]


def main():
    repo = pathlib.Path(__file__).resolve().parents[2]
    src = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else (
        repo.parent / "shared" / "data" / "nih" / "Data_Entry_2017_v2020.csv.gz")
    cells = {}
    skipped = 0
    with gzip.open(src, "rt", newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        col = {name: i for i, name in enumerate(header)}
        sex_col = col.get("Patient Gender", col.get("Patient Sex"))
        for row in rows:
            age = int(row[col["Patient Age"]])
            sex, view = row[sex_col], row[col["View Position"]]
            if not (0 <= age <= 120) or sex not in SEXES or view not in VIEWS:
                skipped += 1
                continue
            key = (min(age // 10, AGE_BINS - 1), SEXES.index(sex), VIEWS.index(view))
            cell = cells.setdefault(key, [0] + [0] * len(FINDINGS))
            cell[0] += 1
            for finding in row[col["Finding Labels"]].split("|"):
                if finding in FINDINGS:
                    cell[1 + FINDINGS.index(finding)] += 1
    out = {
        "source": "NIH ChestX-ray14 Data_Entry_2017_v2020.csv (NIH Clinical Center; "
                  "Wang et al., ChestX-ray8, CVPR 2017)",
        "findings": FINDINGS,
        "age_bins": "decades: 0-9, 10-19, ..., 80-89, 90+",
        "sexes": SEXES,
        "views": VIEWS,
        "skipped_rows": skipped,
        # [age_bin, sex, view, images, count of each finding...]
        "cells": [list(k) + v for k, v in sorted(cells.items())],
    }
    dst = repo / "trainer" / "src" / "synthetic" / "nih_stats.json"
    dst.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {dst} ({len(cells)} cells, {sum(c[0] for c in cells.values())} images, "
          f"{skipped} skipped)")


if __name__ == "__main__":
    main()
