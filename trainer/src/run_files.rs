//! The files of a pretraining run folder that record its course: `metrics.jsonl` (one JSON
//! object per step), `epochs.csv` (one row per finished epoch), `loss.svg` (the loss and
//! its parts over the steps), and what built the program (version and git revision).

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::files::{write_atomic, write_atomically};
use crate::plot::{Frame, Series, line_chart};

/// The crate version and the git revision the binary was built from (`unknown` outside a
/// git checkout; `-dirty` when tracked files differed from the commit at build time).
pub fn build_info() -> serde_json::Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git_revision": option_env!("CXR_MSN_GIT_REVISION").unwrap_or("unknown"),
    })
}

/// What one pretraining step recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Epoch of the step.
    pub epoch: usize,
    /// Step number over the whole run.
    pub step: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Weight decay used.
    pub weight_decay: f64,
    /// EMA momentum used.
    pub ema_momentum: f64,
    /// Loss: total and its parts.
    pub loss: f64,
    /// MSN's cross-entropy part (absent for the baselines, whose loss has one part).
    #[serde(default)]
    pub ce: Option<f64>,
    /// MSN's mean-entropy-maximisation part.
    #[serde(default)]
    pub me_max: Option<f64>,
    /// MSN's entropy part.
    #[serde(default)]
    pub entropy: Option<f64>,
    /// MSN: distinct prototypes the batch's targets assign most mass to (MSN's "np").
    #[serde(default)]
    pub prototypes: Option<usize>,
    /// Global gradient norm before clipping (null without clipping).
    pub grad_norm: Option<f64>,
    /// Seconds the step took.
    pub seconds: f64,
}

/// Reads `metrics.jsonl`, keeping the steps before `steps_done` (a run killed after its last
/// checkpoint wrote steps that will run again) and rewriting the file when it held more.
pub fn read_steps(path: &Path, steps_done: usize) -> Result<Vec<StepRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records = Vec::new();
    let mut dropped = false;
    for (i, line) in text.lines().enumerate() {
        // A kill can cut the last line short; it belongs to a step that will run again.
        let Ok(record) = serde_json::from_str::<StepRecord>(line) else {
            if i + 1 == text.lines().count() {
                dropped = true;
                continue;
            }
            anyhow::bail!("{} line {}: not a step record", path.display(), i + 1);
        };
        if record.step < steps_done {
            records.push(record);
        } else {
            dropped = true;
        }
    }
    if dropped {
        write_atomically(path, |w| {
            for r in &records {
                writeln!(w, "{}", serde_json::to_string(r)?)?;
            }
            Ok(())
        })
        .with_context(|| format!("cannot rewrite {}", path.display()))?;
    }
    Ok(records)
}

/// Appends one record to `metrics.jsonl`.
pub fn append_step(file: &mut std::fs::File, record: &StepRecord) -> Result<()> {
    writeln!(file, "{}", serde_json::to_string(record)?)?;
    Ok(())
}

/// `epochs.csv` of the finished epochs (`epochs_done`): means of the loss parts (empty
/// cells for parts the method does not have), the learning rate at the epoch's end,
/// seconds, images per second and, for MSN, the mean over its batches of the distinct
/// prototypes the targets assign most mass to.
pub fn epochs_csv(records: &[StepRecord], epochs_done: usize, batch_size: usize) -> String {
    let mut csv = String::from(
        "epoch,steps,loss,ce,me_max,entropy,lr_end,seconds,images_per_second,prototypes\n",
    );
    for epoch in 0..epochs_done {
        let rows: Vec<&StepRecord> = records.iter().filter(|r| r.epoch == epoch).collect();
        let Some(last) = rows.last() else { continue };
        let n = rows.len() as f64;
        let mean = |f: fn(&StepRecord) -> f64| rows.iter().map(|r| f(r)).sum::<f64>() / n;
        let part = |f: fn(&StepRecord) -> Option<f64>| -> String {
            let values: Option<Vec<f64>> = rows.iter().map(|r| f(r)).collect();
            values.map_or(String::new(), |v| (v.iter().sum::<f64>() / n).to_string())
        };
        let seconds: f64 = rows.iter().map(|r| r.seconds).sum();
        csv.push_str(&format!(
            "{epoch},{},{},{},{},{},{:e},{seconds:.3},{:.2},{}\n",
            rows.len(),
            mean(|r| r.loss),
            part(|r| r.ce),
            part(|r| r.me_max),
            part(|r| r.entropy),
            last.lr,
            (rows.len() * batch_size) as f64 / seconds.max(1e-9),
            part(|r| r.prototypes.map(|n| n as f64)),
        ));
    }
    csv
}

/// The loss and its parts over the steps.
pub fn loss_svg(records: &[StepRecord]) -> String {
    let series = |name: &str, f: fn(&StepRecord) -> Option<f64>| Series {
        name: name.into(),
        points: records
            .iter()
            .filter_map(|r| Some((r.step as f64, f(r)?)))
            .collect(),
    };
    let mut lines = vec![series("total", |r| Some(r.loss))];
    if records.iter().any(|r| r.ce.is_some()) {
        lines.push(series("cross-entropy", |r| r.ce));
        lines.push(series("me-max", |r| r.me_max));
    }
    line_chart(
        &Frame {
            title: "pretraining loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            ..Frame::default()
        },
        &lines,
    )
}

/// Rewrites `epochs.csv` and `loss.svg` in `dir`.
pub fn write_summaries(
    dir: &Path,
    records: &[StepRecord],
    epochs_done: usize,
    batch_size: usize,
) -> Result<()> {
    write_atomic(
        &dir.join("epochs.csv"),
        epochs_csv(records, epochs_done, batch_size).as_bytes(),
    )?;
    write_atomic(&dir.join("loss.svg"), loss_svg(records).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, step: usize, loss: f64) -> StepRecord {
        StepRecord {
            epoch,
            step,
            lr: 1e-4,
            weight_decay: 1e-3,
            ema_momentum: 0.996,
            loss,
            ce: Some(loss - 0.5),
            me_max: Some(0.5),
            entropy: Some(0.0),
            prototypes: None,
            grad_norm: None,
            seconds: 2.0,
        }
    }

    #[test]
    fn steps_after_the_checkpoint_and_a_cut_line_are_dropped_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut text = String::new();
        for s in 0..4 {
            text += &serde_json::to_string(&record(s / 2, s, 3.0 - s as f64)).unwrap();
            text.push('\n');
        }
        text += "{\"epoch\":2,\"st";
        std::fs::write(&path, &text).unwrap();
        let kept = read_steps(&path, 3).unwrap();
        assert_eq!(kept.iter().map(|r| r.step).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(
            read_steps(&path, 3).unwrap(),
            kept,
            "the file now holds those"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        std::fs::write(&path, "garbage\n{}\n").unwrap();
        assert!(format!("{:#}", read_steps(&path, 3).unwrap_err()).contains("line 1"));
    }

    #[test]
    fn epoch_rows_average_their_steps() {
        let records = [record(0, 0, 3.0), record(0, 1, 2.0), record(1, 2, 1.0)];
        let csv = epochs_csv(&records, 1, 8);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2, "only finished epochs");
        assert_eq!(lines[1], "0,2,2.5,2,0.5,0,1e-4,4.000,4.00,");
        // MSN's prototypes in use: the mean over the epoch's batches.
        let mut msn = records.clone();
        (msn[0].prototypes, msn[1].prototypes) = (Some(7), Some(8));
        let csv = epochs_csv(&msn, 1, 8);
        assert!(csv.lines().nth(1).unwrap().ends_with(",4.00,7.5"), "{csv}");
        assert!(loss_svg(&records).contains("<path"));
        // A baseline's records have no parts: empty cells, and old files still read.
        let mut dino = record(0, 0, 3.0);
        (dino.ce, dino.me_max, dino.entropy) = (None, None, None);
        let csv = epochs_csv(&[dino], 1, 8);
        assert!(
            csv.lines().nth(1).unwrap().starts_with("0,1,3,,,,"),
            "{csv}"
        );
        let old = r#"{"epoch":0,"step":0,"lr":1e-4,"weight_decay":0.001,"ema_momentum":0.996,"loss":3.0,"ce":2.5,"me_max":0.5,"entropy":0.0,"grad_norm":null,"seconds":2.0}"#;
        let parsed: StepRecord = serde_json::from_str(old).unwrap();
        assert_eq!(parsed, record(0, 0, 3.0));
    }
}
