//! The scores of classifier heads on a labelled split, as `probe`, `finetune` and `eval`
//! write them: `metrics.json` (per-label and macro AUROC and AUPRC with 95% bootstrap
//! intervals), `metrics.csv` (the same, one row per head and label), `roc.svg` (the ROC
//! curves of every label, one chart per head) and a short table for the terminal.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::files::write_atomic;
use crate::metrics::{Interval, Intervals, bootstrap, label_column, roc_curve};
use crate::plot::{Frame, Series, line_chart};

/// One head's probabilities on a split, `[N, labels]` row-major.
pub struct HeadScores<'a> {
    /// `image` or `image+ehr`.
    pub name: &'a str,
    /// Probabilities.
    pub scores: &'a [f32],
}

/// A head's metrics, with the counts behind them.
pub struct HeadReport {
    /// `image` or `image+ehr`.
    pub name: String,
    /// Every interval.
    pub intervals: Intervals,
    /// Kept targets and positives per label.
    pub counts: Vec<(usize, usize)>,
}

/// Scores heads against `targets` with `resamples` bootstrap draws.
pub fn score_heads(
    heads: &[HeadScores],
    targets: &[Option<f32>],
    labels: usize,
    resamples: usize,
    seed: u64,
) -> Vec<HeadReport> {
    let counts: Vec<(usize, usize)> = (0..labels)
        .map(|l| {
            let kept = targets.chunks(labels).filter_map(|t| t[l]);
            kept.fold((0, 0), |(n, p), t| (n + 1, p + (t > 0.5) as usize))
        })
        .collect();
    heads
        .iter()
        .map(|h| HeadReport {
            name: h.name.to_string(),
            intervals: bootstrap(h.scores, targets, labels, resamples, seed),
            counts: counts.clone(),
        })
        .collect()
}

fn interval_json(i: Option<Interval>) -> serde_json::Value {
    match i {
        Some(i) => serde_json::json!({ "value": i.value, "ci95": [i.low, i.high] }),
        None => serde_json::Value::Null,
    }
}

/// The JSON of the reports: `{ head: { macro_auroc, macro_auprc, labels: { name: {...} } } }`.
pub fn to_json(reports: &[HeadReport], label_names: &[String]) -> serde_json::Value {
    let mut heads = serde_json::Map::new();
    for r in reports {
        let mut per_label = serde_json::Map::new();
        for (l, name) in label_names.iter().enumerate() {
            per_label.insert(
                name.clone(),
                serde_json::json!({
                    "n": r.counts[l].0,
                    "positives": r.counts[l].1,
                    "auroc": interval_json(r.intervals.auroc[l]),
                    "auprc": interval_json(r.intervals.auprc[l]),
                }),
            );
        }
        heads.insert(
            r.name.clone(),
            serde_json::json!({
                "macro_auroc": interval_json(r.intervals.macro_auroc),
                "macro_auprc": interval_json(r.intervals.macro_auprc),
                "labels": per_label,
            }),
        );
    }
    serde_json::Value::Object(heads)
}

/// The CSV of the reports: one row per head and label, then one `macro` row per head.
pub fn to_csv(reports: &[HeadReport], label_names: &[String]) -> String {
    let mut csv = String::from(
        "head,label,n,positives,auroc,auroc_low,auroc_high,auprc,auprc_low,auprc_high\n",
    );
    let cells = |i: Option<Interval>| {
        i.map_or(",,".to_string(), |i| {
            format!("{},{},{}", i.value, i.low, i.high)
        })
    };
    for r in reports {
        for (l, name) in label_names.iter().enumerate() {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{}",
                r.name,
                csv_field(name),
                r.counts[l].0,
                r.counts[l].1,
                cells(r.intervals.auroc[l]),
                cells(r.intervals.auprc[l])
            );
        }
        let n = targets_total(r);
        let _ = writeln!(
            csv,
            "{},macro,{},,{},{}",
            r.name,
            n,
            cells(r.intervals.macro_auroc),
            cells(r.intervals.macro_auprc)
        );
    }
    csv
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn targets_total(r: &HeadReport) -> usize {
    r.counts.iter().map(|c| c.0).max().unwrap_or(0)
}

/// The short table printed at the end of a command.
pub fn table(reports: &[HeadReport], label_names: &[String]) -> String {
    let mut out = String::new();
    let short = |i: Option<Interval>| {
        i.map_or("n/a".to_string(), |i| {
            format!("{:.3} [{:.3}, {:.3}]", i.value, i.low, i.high)
        })
    };
    let _ = write!(out, "{:28}", "AUROC (95% CI)");
    for r in reports {
        let _ = write!(out, " {:>22}", r.name);
    }
    out.push('\n');
    for (l, name) in label_names.iter().enumerate() {
        let _ = write!(out, "{name:28}");
        for r in reports {
            let _ = write!(out, " {:>22}", short(r.intervals.auroc[l]));
        }
        out.push('\n');
    }
    type Pick = fn(&Intervals) -> Option<Interval>;
    let macros: [(&str, Pick); 2] = [
        ("macro AUROC", |i| i.macro_auroc),
        ("macro AUPRC", |i| i.macro_auprc),
    ];
    for (what, pick) in macros {
        let _ = write!(out, "{what:28}");
        for r in reports {
            let _ = write!(out, " {:>22}", short(pick(&r.intervals)));
        }
        out.push('\n');
    }
    out
}

/// The ROC curves of every label of every head, one chart per head, stacked in one SVG.
pub fn roc_svg(heads: &[HeadScores], targets: &[Option<f32>], label_names: &[String]) -> String {
    let labels = label_names.len();
    let charts: Vec<String> = heads
        .iter()
        .map(|h| {
            let mut series: Vec<Series> = label_names
                .iter()
                .enumerate()
                .filter_map(|(l, name)| {
                    let (s, p) = label_column(h.scores, targets, labels, l);
                    let curve = roc_curve(&s, &p);
                    (!curve.is_empty()).then(|| {
                        let auc = crate::metrics::auroc(&s, &p).unwrap_or(f64::NAN);
                        Series {
                            name: format!("{name} {auc:.2}"),
                            points: curve,
                        }
                    })
                })
                .collect();
            series.push(Series {
                name: "chance".into(),
                points: vec![(0.0, 0.0), (1.0, 1.0)],
            });
            line_chart(
                &Frame {
                    title: format!("ROC curves, head {}", h.name),
                    x_label: "false-positive rate".into(),
                    y_label: "true-positive rate".into(),
                    x_range: Some((0.0, 1.0)),
                    y_range: Some((0.0, 1.0)),
                },
                &series,
            )
        })
        .collect();
    stack(&charts)
}

/// Stacks SVG documents vertically into one.
pub fn stack(charts: &[String]) -> String {
    let height = |svg: &str| -> f64 {
        svg.split("height=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|h| h.parse().ok())
            .unwrap_or(0.0)
    };
    let total: f64 = charts.iter().map(|c| height(c)).sum();
    let mut out =
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"{total}\">\n");
    let mut y = 0.0;
    for c in charts {
        let _ = writeln!(out, "<g transform=\"translate(0 {y})\">\n{c}</g>");
        y += height(c);
    }
    out.push_str("</svg>\n");
    out
}

/// Writes `metrics.json` (with `extra` fields beside the heads), `metrics.csv` and `roc.svg`
/// into `dir`; returns their paths.
pub fn write_all(
    dir: &Path,
    heads: &[HeadScores],
    reports: &[HeadReport],
    targets: &[Option<f32>],
    label_names: &[String],
    extra: serde_json::Value,
) -> Result<Vec<PathBuf>> {
    let mut json = extra;
    if let serde_json::Value::Object(map) = &mut json {
        map.insert("heads".into(), to_json(reports, label_names));
    }
    let files = [
        ("metrics.json", serde_json::to_string_pretty(&json)?),
        ("metrics.csv", to_csv(reports, label_names)),
        ("roc.svg", roc_svg(heads, targets, label_names)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        write_atomic(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_carry_counts_intervals_and_every_label() {
        let names = vec!["Edema".to_string(), "Mass, left".to_string()];
        let scores = [0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.2, 0.6];
        let targets = [
            Some(1.0),
            Some(0.0),
            Some(1.0),
            None,
            Some(0.0),
            Some(1.0),
            Some(0.0),
            Some(0.0),
        ];
        let heads = [HeadScores {
            name: "image",
            scores: &scores,
        }];
        let reports = score_heads(&heads, &targets, 2, 50, 1);
        assert_eq!(reports[0].counts, vec![(4, 2), (3, 1)]);
        assert_eq!(reports[0].intervals.auroc[0].unwrap().value, 1.0);
        let csv = to_csv(&reports, &names);
        assert_eq!(csv.lines().count(), 1 + 2 + 1);
        assert!(csv.contains("image,\"Mass, left\",3,1,"), "{csv}");
        let json = to_json(&reports, &names);
        assert_eq!(json["image"]["labels"]["Edema"]["positives"], 2);
        assert_eq!(json["image"]["macro_auroc"]["value"], 1.0);
        let table = table(&reports, &names);
        assert!(table.contains("macro AUROC") && table.contains("Edema"));
        let svg = roc_svg(&heads, &targets, &names);
        assert_eq!(svg.matches("<path").count(), 3, "two labels and chance");
    }
}
