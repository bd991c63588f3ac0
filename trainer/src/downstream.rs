//! What `probe` and `finetune` share: their training flags and the train / validate / test
//! items of a dataset.

use std::path::Path;

use anyhow::{Result, bail};
use clap::Args;
use cxr_msn::ehr::FeatureSet;
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;
use cxr_msn::rand::seq::SliceRandom;

use crate::data::{Dataset, LabelPolicy, Split};
use crate::device::DeviceArg;
use crate::loader::Item;
use crate::report::{HeadScores, score_heads, table, write_all};

/// Downstream training settings (METHOD.md section 7; the authors' values by default).
#[derive(Args, Debug, Clone)]
pub struct DownstreamArgs {
    /// Most epochs.
    #[arg(long, default_value_t = 50, value_parser = crate::cli_values::at_least_one)]
    pub epochs: usize,
    /// Epochs without a better validation macro AUROC before stopping.
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    /// Adam learning rate (cosine to 0 over the epochs).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Fraction of the training images used (low-data regime: 0.05, 0.25, ...).
    #[arg(long, default_value_t = 1.0)]
    pub train_fraction: f64,
    /// Seed (the authors used 24).
    #[arg(long, default_value_t = 24)]
    pub seed: u64,
    /// Bootstrap resamples for the 95% confidence intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Loader threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where the encoder runs: a hardware GPU through wgpu when there is one (auto), the
    /// CPU, or the wgpu adapter whatever it is (gpu).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
}

impl DownstreamArgs {
    /// The learning rate of `epoch`: cosine from `lr` to 0, stepped per epoch.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        0.5 * self.lr * (1.0 + (std::f64::consts::PI * epoch as f64 / self.epochs as f64).cos())
    }
}

/// Scores the heads on the test split and writes the report of `probe` and `finetune`
/// (`metrics.json`, `metrics.csv`, `roc.svg` in `out`); returns the table to print.
#[allow(clippy::too_many_arguments)]
pub fn write_test_report(
    out: &Path,
    heads: &[HeadScores],
    targets: &[Option<f32>],
    label_names: &[String],
    checkpoint: &Path,
    data: &Path,
    args: &DownstreamArgs,
    validation_macro_auroc: serde_json::Value,
) -> Result<String> {
    let reports = score_heads(heads, targets, label_names.len(), args.bootstrap, args.seed);
    let extra = serde_json::json!({
        "split": "test",
        "checkpoint": checkpoint.display().to_string(),
        "data": data.display().to_string(),
        "train_fraction": args.train_fraction,
        "seed": args.seed,
        "validation_macro_auroc": validation_macro_auroc,
    });
    write_all(out, heads, &reports, targets, label_names, extra)?;
    Ok(format!("test split:\n{}", table(&reports, label_names)))
}

/// Train (a seeded `train_fraction` of it), validate and test items; each must be non-empty.
pub fn splits(
    data: &Dataset,
    features: Option<&FeatureSet>,
    policy: &LabelPolicy,
    args: &DownstreamArgs,
) -> Result<(Vec<Item>, Vec<Item>, Vec<Item>)> {
    if !(args.train_fraction > 0.0 && args.train_fraction <= 1.0) {
        bail!(
            "--train-fraction must be in (0, 1], got {}",
            args.train_fraction
        );
    }
    let mut train = data.items(Some(Split::Train), features, policy)?;
    let val = data.items(Some(Split::Validate), features, policy)?;
    let test = data.items(Some(Split::Test), features, policy)?;
    if train.is_empty() || val.is_empty() || test.is_empty() {
        bail!(
            "training a classifier needs train, validate and test images; this dataset has {}, {} and {}",
            train.len(),
            val.len(),
            test.len()
        );
    }
    train.shuffle(&mut StdRng::seed_from_u64(args.seed));
    train.truncate(((train.len() as f64 * args.train_fraction).ceil() as usize).max(1));
    Ok((train, val, test))
}
