//! Evaluation metrics of METHOD.md section 7: per-label AUROC and average precision (AUPRC),
//! their macro means, and 95% confidence intervals by the basic bootstrap over test rows.
//!
//! Scores are `[N, L]` row-major; targets are `Option<f32>` per cell (`None` = left out,
//! e.g. an ignored uncertain label). A label whose kept targets hold one class only has no
//! AUROC and is left out of the macro means (as scikit-learn would refuse it).

use cxr_msn::rand::rngs::StdRng;
use cxr_msn::rand::{RngExt, SeedableRng};

/// Area under the ROC curve of one label: the probability that a random positive scores
/// above a random negative, ties counting half (the Mann-Whitney U statistic, equal to
/// scikit-learn's `roc_auc_score`). `None` when one class is absent.
pub fn auroc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // Average ranks (1-based) with ties sharing their mean rank.
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += order[i..=j].iter().filter(|&&k| positive[k]).count() as f64 * mean_rank;
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos * n_neg) as f64)
}

/// Cumulative (true positives, false positives) after each distinct score, from the
/// highest score down: the points of the ROC and precision-recall curves.
fn cumulative_counts(scores: &[f32], positive: &[bool]) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut counts = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            if positive[k] {
                tp += 1;
            } else {
                fp += 1;
            }
        }
        counts.push((tp, fp));
        i = j + 1;
    }
    counts
}

/// Average precision (area under the precision-recall curve as scikit-learn's
/// `average_precision_score`): sum over distinct thresholds of (R_k - R_{k-1}) P_k.
/// `None` without positives.
pub fn average_precision(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    if n_pos == 0 {
        return None;
    }
    let (mut ap, mut last_recall) = (0.0, 0.0);
    for (tp, fp) in cumulative_counts(scores, positive) {
        let recall = tp as f64 / n_pos as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - last_recall) * precision;
        last_recall = recall;
    }
    Some(ap)
}

/// Per-label and macro metrics of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// AUROC per label (`None` where one class is absent).
    pub auroc: Vec<Option<f64>>,
    /// Average precision per label (`None` without positives or negatives).
    pub average_precision: Vec<Option<f64>>,
    /// Mean AUROC over the labels that have one.
    pub macro_auroc: Option<f64>,
    /// Mean average precision over the same labels.
    pub macro_average_precision: Option<f64>,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Metrics of `scores` (`[N, L]`) against `targets` (`[N, L]`), over the rows `rows`.
pub fn evaluate_rows(
    scores: &[f32],
    targets: &[Option<f32>],
    labels: usize,
    rows: &[usize],
) -> Metrics {
    let mut auroc_all = Vec::with_capacity(labels);
    let mut ap_all = Vec::with_capacity(labels);
    for l in 0..labels {
        let (mut s, mut p) = (
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
        );
        for &r in rows {
            if let Some(t) = targets[r * labels + l] {
                s.push(scores[r * labels + l]);
                p.push(t > 0.5);
            }
        }
        let a = auroc(&s, &p);
        auroc_all.push(a);
        ap_all.push(a.and_then(|_| average_precision(&s, &p)));
    }
    Metrics {
        macro_auroc: mean(auroc_all.iter().flatten().copied()),
        macro_average_precision: mean(ap_all.iter().flatten().copied()),
        auroc: auroc_all,
        average_precision: ap_all,
    }
}

/// Metrics over all rows.
pub fn evaluate(scores: &[f32], targets: &[Option<f32>], labels: usize) -> Metrics {
    let n = scores.len() / labels.max(1);
    evaluate_rows(scores, targets, labels, &(0..n).collect::<Vec<_>>())
}

/// A point estimate with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// On all rows.
    pub value: f64,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

impl Interval {
    /// `value (95% CI low to high)`, or `n/a` when there is none.
    pub fn describe(interval: Option<Interval>) -> String {
        interval.map_or("n/a".to_string(), |i| {
            format!("{:.4} (95% CI {:.4} to {:.4})", i.value, i.low, i.high)
        })
    }
}

/// Per-label and macro AUROC and AUPRC, each with its 95% interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Intervals {
    /// AUROC per label (`None` where one class is absent).
    pub auroc: Vec<Option<Interval>>,
    /// Average precision per label.
    pub auprc: Vec<Option<Interval>>,
    /// Macro AUROC.
    pub macro_auroc: Option<Interval>,
    /// Macro average precision.
    pub macro_auprc: Option<Interval>,
}

/// The basic-bootstrap interval (2 theta - q97.5, 2 theta - q2.5) of METHOD.md section 7
/// ("theta - percentile of theta_b - theta"), clipped to the metric's `range`: on a small
/// test set the basic bootstrap reaches past it (an AUROC of 0.9 whose draws spread down to
/// 0.6 gets an upper end of 1.2), and a bound no metric can take says nothing more than the
/// range's end. `None` without an estimate or draws.
fn basic_interval(theta: Option<f64>, mut draws: Vec<f64>, range: [f64; 2]) -> Option<Interval> {
    let theta = theta?;
    if draws.is_empty() {
        return None;
    }
    draws.sort_by(f64::total_cmp);
    let q = |f: f64| draws[((f * (draws.len() - 1) as f64).round() as usize).min(draws.len() - 1)];
    Some(Interval {
        value: theta,
        low: (2.0 * theta - q(0.975)).clamp(range[0], range[1]),
        high: (2.0 * theta - q(0.025)).clamp(range[0], range[1]),
    })
}

/// The range of AUROC and average precision.
const UNIT: [f64; 2] = [0.0, 1.0];

/// 95% basic-bootstrap intervals of every metric: `resamples` draws of the rows with
/// replacement (seeded); a draw in which a label has one class only adds no value to that
/// label's interval.
pub fn bootstrap(
    scores: &[f32],
    targets: &[Option<f32>],
    labels: usize,
    resamples: usize,
    seed: u64,
) -> Intervals {
    let n = scores.len() / labels.max(1);
    let full = evaluate(scores, targets, labels);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut a, mut p) = (Vec::with_capacity(resamples), Vec::with_capacity(resamples));
    let (mut la, mut lp) = (vec![Vec::new(); labels], vec![Vec::new(); labels]);
    for _ in 0..resamples {
        let rows: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
        let m = evaluate_rows(scores, targets, labels, &rows);
        a.extend(m.macro_auroc);
        p.extend(m.macro_average_precision);
        for l in 0..labels {
            la[l].extend(m.auroc[l]);
            lp[l].extend(m.average_precision[l]);
        }
    }
    Intervals {
        auroc: (0..labels)
            .map(|l| basic_interval(full.auroc[l], std::mem::take(&mut la[l]), UNIT))
            .collect(),
        auprc: (0..labels)
            .map(|l| basic_interval(full.average_precision[l], std::mem::take(&mut lp[l]), UNIT))
            .collect(),
        macro_auroc: basic_interval(full.macro_auroc, a, UNIT),
        macro_auprc: basic_interval(full.macro_average_precision, p, UNIT),
    }
}

/// 95% basic-bootstrap intervals of the macro AUROC and macro AUPRC (see [`bootstrap`]).
pub fn bootstrap_macro(
    scores: &[f32],
    targets: &[Option<f32>],
    labels: usize,
    resamples: usize,
    seed: u64,
) -> (Option<Interval>, Option<Interval>) {
    let b = bootstrap(scores, targets, labels, resamples, seed);
    (b.macro_auroc, b.macro_auprc)
}

/// The difference of macro AUROC, `b` minus `a`, of two score sets on the same rows, with
/// its 95% paired basic-bootstrap interval (both scored on each resample of the rows).
pub fn paired_macro_auroc_difference(
    a: &[f32],
    b: &[f32],
    targets: &[Option<f32>],
    labels: usize,
    resamples: usize,
    seed: u64,
) -> Option<Interval> {
    let n = targets.len() / labels.max(1);
    let diff = |rows: &[usize]| {
        let ma = evaluate_rows(a, targets, labels, rows).macro_auroc?;
        let mb = evaluate_rows(b, targets, labels, rows).macro_auroc?;
        Some(mb - ma)
    };
    let all: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let draws: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            let rows: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
            diff(&rows)
        })
        .collect();
    basic_interval(diff(&all), draws, [-1.0, 1.0])
}

/// The ROC curve of one label: `(false-positive rate, true-positive rate)` at every distinct
/// threshold, from (0, 0) to (1, 1). Empty when one class is absent.
pub fn roc_curve(scores: &[f32], positive: &[bool]) -> Vec<(f64, f64)> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Vec::new();
    }
    let points = cumulative_counts(scores, positive)
        .into_iter()
        .map(|(tp, fp)| (fp as f64 / n_neg as f64, tp as f64 / n_pos as f64));
    std::iter::once((0.0, 0.0)).chain(points).collect()
}

/// Scores and kept targets of one label (`l` of `labels`), as `roc_curve` takes them.
pub fn label_column(
    scores: &[f32],
    targets: &[Option<f32>],
    labels: usize,
    l: usize,
) -> (Vec<f32>, Vec<bool>) {
    scores
        .chunks(labels)
        .zip(targets.chunks(labels))
        .filter_map(|(s, t)| t[l].map(|t| (s[l], t > 0.5)))
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Case {
        labels: Vec<Vec<u8>>,
        scores: Vec<Vec<f64>>,
        auroc: Vec<Option<f64>>,
        average_precision: Vec<Option<f64>>,
        macro_auroc: f64,
        macro_average_precision: f64,
    }

    #[test]
    fn auroc_and_average_precision_match_scikit_learn() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/metrics/cases.json"),
        )
        .unwrap();
        let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
        for (c, case) in cases.iter().enumerate() {
            let labels = case.labels[0].len();
            let scores: Vec<f32> = case.scores.iter().flatten().map(|&s| s as f32).collect();
            let targets: Vec<Option<f32>> = case
                .labels
                .iter()
                .flatten()
                .map(|&l| Some(l as f32))
                .collect();
            let m = evaluate(&scores, &targets, labels);
            for l in 0..labels {
                match (m.auroc[l], case.auroc[l]) {
                    (Some(a), Some(b)) => {
                        assert!((a - b).abs() < 1e-12, "case {c} label {l}: {a} vs {b}")
                    }
                    (None, None) => {}
                    other => panic!("case {c} label {l}: {other:?}"),
                }
                match (m.average_precision[l], case.average_precision[l]) {
                    (Some(a), Some(b)) => {
                        assert!((a - b).abs() < 1e-12, "case {c} label {l} AP: {a} vs {b}")
                    }
                    (None, None) => {}
                    other => panic!("case {c} label {l} AP: {other:?}"),
                }
            }
            assert!((m.macro_auroc.unwrap() - case.macro_auroc).abs() < 1e-12);
            assert!(
                (m.macro_average_precision.unwrap() - case.macro_average_precision).abs() < 1e-12
            );
        }
    }

    #[test]
    fn hand_derived_cases() {
        // Perfect, reversed, and all ties.
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(auroc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        // One positive ranked second of three: AP = 1/2.
        assert_eq!(
            average_precision(&[0.9, 0.5, 0.1], &[false, true, false]),
            Some(0.5)
        );
        // Ignored targets are left out.
        let m = evaluate(&[0.1, 0.9, 0.5], &[Some(0.0), Some(1.0), None], 1);
        assert_eq!(m.auroc[0], Some(1.0));
    }

    #[test]
    fn bootstrap_intervals_bracket_the_estimate_and_narrow_with_more_data() {
        let mut rng = StdRng::seed_from_u64(3);
        let make = |n: usize, rng: &mut StdRng| {
            let mut scores = Vec::new();
            let mut targets = Vec::new();
            for _ in 0..n {
                let y = rng.random_bool(0.3);
                scores.push(rng.random_range(0.0..1.0f32) + if y { 0.4 } else { 0.0 });
                targets.push(Some(y as u8 as f32));
            }
            (scores, targets)
        };
        let (s, t) = make(100, &mut rng);
        let (auc, ap) = bootstrap_macro(&s, &t, 1, 1000, 1);
        let (auc, ap) = (auc.unwrap(), ap.unwrap());
        assert!(auc.low < auc.value && auc.value < auc.high && auc.high <= 1.0);
        assert!(ap.low < ap.value && ap.value < ap.high);
        let (s, t) = make(2000, &mut rng);
        let big = bootstrap_macro(&s, &t, 1, 300, 1).0.unwrap();
        assert!(
            big.high - big.low < (auc.high - auc.low) / 2.0,
            "more rows, tighter interval"
        );
        assert_eq!(
            bootstrap_macro(&s, &t, 1, 50, 9),
            bootstrap_macro(&s, &t, 1, 50, 9)
        );
    }

    #[test]
    fn basic_intervals_stay_within_the_metrics_range() {
        // theta 0.9, 101 draws 0.6, 0.604, ..., 1.0: q2.5 and q97.5 are draws 3 and 98
        // (2.5 and 97.5 rounded away from 0), 0.612 and 0.992, so 2 theta - q is 0.808 and
        // 1.188; the upper end is clipped to 1.
        let draws: Vec<f64> = (0..=100).map(|i| 0.6 + 0.004 * f64::from(i)).collect();
        let i = basic_interval(Some(0.9), draws.clone(), UNIT).unwrap();
        assert!((i.low - 0.808).abs() < 1e-12 && i.high == 1.0, "{i:?}");
        // Mirrored near 0, and a difference of AUROCs within [-1, 1].
        let mirrored: Vec<f64> = draws.iter().map(|d| 1.0 - d).collect();
        let i = basic_interval(Some(0.1), mirrored, UNIT).unwrap();
        assert!(i.low == 0.0 && (i.high - 0.188).abs() < 1e-12, "{i:?}");
        let wide: Vec<f64> = draws.iter().map(|d| 2.0 * d - 1.0).collect();
        let i = basic_interval(Some(0.8), wide, [-1.0, 1.0]).unwrap();
        assert!(i.high == 1.0 && (i.low - 0.616).abs() < 1e-12, "{i:?}");
    }

    #[test]
    fn roc_curve_by_hand_and_its_area_is_the_auroc() {
        // Scores 0.9 (+), 0.8 (-), 0.7 (+), 0.7 (-), 0.1 (-): 2 positives, 3 negatives.
        let s = [0.9, 0.8, 0.7, 0.7, 0.1];
        let p = [true, false, true, false, false];
        let curve = roc_curve(&s, &p);
        let third = 1.0 / 3.0;
        let expected = [
            (0.0, 0.0),
            (0.0, 0.5),
            (third, 0.5),
            (2.0 * third, 1.0),
            (1.0, 1.0),
        ];
        assert_eq!(curve.len(), expected.len());
        for (a, b) in curve.iter().zip(expected) {
            assert!(
                (a.0 - b.0).abs() < 1e-12 && (a.1 - b.1).abs() < 1e-12,
                "{curve:?}"
            );
        }
        let area: f64 = curve
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!((area - auroc(&s, &p).unwrap()).abs() < 1e-12);
        assert!(roc_curve(&[0.2, 0.3], &[true, true]).is_empty());
        let (col, pos) = label_column(
            &[0.1, 0.2, 0.3, 0.4],
            &[None, Some(1.0), Some(0.0), Some(0.0)],
            2,
            1,
        );
        assert_eq!((col, pos), (vec![0.2, 0.4], vec![true, false]));
    }

    #[test]
    fn per_label_intervals_bracket_each_label_and_a_one_class_label_has_none() {
        let mut rng = StdRng::seed_from_u64(5);
        let (mut scores, mut targets) = (Vec::new(), Vec::new());
        for _ in 0..300 {
            let y = rng.random_bool(0.4);
            scores.push(rng.random_range(0.0..1.0f32) + if y { 0.5 } else { 0.0 });
            scores.push(rng.random_range(0.0..1.0f32));
            targets.push(Some(y as u8 as f32));
            targets.push(Some(0.0)); // label 1: negatives only
        }
        let b = bootstrap(&scores, &targets, 2, 400, 2);
        let full = evaluate(&scores, &targets, 2);
        let a0 = b.auroc[0].unwrap();
        assert_eq!(a0.value, full.auroc[0].unwrap());
        assert!(a0.low < a0.value && a0.value < a0.high);
        assert_eq!((b.auroc[1], b.auprc[1]), (None, None));
        assert_eq!(
            b.macro_auroc.unwrap().value,
            a0.value,
            "the macro mean skips label 1"
        );
    }

    #[test]
    fn a_paired_difference_is_zero_for_identical_scores_and_signed_otherwise() {
        let mut rng = StdRng::seed_from_u64(8);
        let (mut good, mut poor, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..400 {
            let y = rng.random_bool(0.5);
            let noise = rng.random_range(0.0..1.0f32);
            good.push(noise + if y { 0.8 } else { 0.0 });
            poor.push(noise + if y { 0.1 } else { 0.0 });
            targets.push(Some(y as u8 as f32));
        }
        let same = paired_macro_auroc_difference(&good, &good, &targets, 1, 100, 1).unwrap();
        assert_eq!((same.value, same.low, same.high), (0.0, 0.0, 0.0));
        let d = paired_macro_auroc_difference(&poor, &good, &targets, 1, 300, 1).unwrap();
        let (a, b) = (
            evaluate(&poor, &targets, 1).macro_auroc.unwrap(),
            evaluate(&good, &targets, 1).macro_auroc.unwrap(),
        );
        assert!((d.value - (b - a)).abs() < 1e-12);
        assert!(
            d.low > 0.0,
            "a clearly better scorer: the interval excludes 0 ({d:?})"
        );
    }
}
