//! `cxr-msn export`: the model file the browser loads, with operating points.
//!
//! A classifier's probabilities become yes/no findings at a per-label threshold. Export
//! chooses each threshold on a labelled split (validation by default) by Youden's J
//! (sensitivity + specificity - 1, the point of the ROC curve farthest above chance),
//! stores them as the model's operating points, and checks that the written file loads.
//! It also stores the embedding statistics of the same images, so that the page can warn
//! when an image looks unlike them (`cxr_msn::novelty`).
//!
//! `--prototypes-from` adds the MSN projection head and prototypes of the pretraining the
//! classifier's encoder came from, for the browser's learn mode (`cxr_msn::prototype_head`);
//! export refuses them when the encoder is not that pretraining's (after fine-tuning).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use cxr_msn::checkpoint::{ModelMeta, WeightPrecision, load_classifier, write_model_as};
use cxr_msn::classifier::Classifier;
use cxr_msn::novelty::EmbeddingReference;
use cxr_msn::prototype_head::{PrototypeHead, encoder_signature};

use crate::data::Split;
use crate::device::{DeviceArg, choose};
use crate::evaluate::score_items;
use crate::files::write_atomic;
use crate::model_files;
use crate::source::DataArgs;

/// The percentile of the reference images' own embedding distances above which the page
/// warns that an image looks unlike them.
pub const NOVELTY_PERCENTILE: f32 = 99.0;

/// The settings of `cxr-msn export`.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    #[command(flatten)]
    pub source: DataArgs,
    /// The classifier model file (from `probe` or `finetune`).
    #[arg(long)]
    pub model: PathBuf,
    /// The model file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// The labelled split the operating points are chosen on.
    #[arg(long, default_value = "validate")]
    pub split: String,
    /// Loader threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// The MSN pretraining model file the classifier's encoder came from: its projection
    /// head and prototypes are added for the browser's learn mode (about 1.1 M values, 2.6
    /// MB of an f16 file, for ViT-Tiny in the paper profile). Only for a linear probe's
    /// classifier, whose encoder is the pretraining's unchanged.
    #[arg(long, value_name = "PRETRAIN_MODEL")]
    pub prototypes_from: Option<PathBuf>,
    /// Store the weights as 16-bit floats: half the download for the browser, scores within
    /// about 1e-3 of the f32 file's.
    #[arg(long)]
    pub f16: bool,
    /// Where the model scores the split: a hardware GPU through wgpu when there is one
    /// (auto), the CPU, or the wgpu adapter whatever it is (gpu).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
}

/// The threshold maximising Youden's J for one label; 0.5 when the label has one class only.
/// Ties in J go to the lower threshold (more sensitive).
pub fn youden_threshold(scores: &[f32], positive: &[bool]) -> f32 {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return 0.5;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    // Sweep thresholds from high to low: predict positive when score >= threshold.
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut best_j, mut best_t) = (f64::NEG_INFINITY, 0.5f32);
    let mut i = 0;
    while i < order.len() {
        let t = scores[order[i]];
        while i < order.len() && scores[order[i]] == t {
            if positive[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let j = tp as f64 / n_pos as f64 - fp as f64 / n_neg as f64;
        if j >= best_j {
            (best_j, best_t) = (j, t);
        }
    }
    best_t
}

/// Runs the export; returns the report printed by the command.
pub fn run(args: &ExportArgs) -> Result<String> {
    let device = choose(args.device)?.device;
    let (mut model, mut meta) = model_files::classifier(&args.model, &device)?;
    if let Some(path) = &args.prototypes_from {
        model.prototype_head = Some(prototype_head(path, &model, &meta, &device)?);
        meta.prototype_head = true;
    }
    let mut data = args.source.load()?;
    let order: Vec<&str> = meta.labels.iter().map(String::as_str).collect();
    data.reorder_labels(&order)
        .context("the dataset's labels do not cover the model's")?;
    let split = Split::parse(&args.split).with_context(|| {
        format!(
            "unknown split '{}': expected train, validate or test",
            args.split
        )
    })?;
    let items = data.items(Some(split), None, &args.source.policy())?;
    if items.is_empty() {
        return Err(crate::source::empty_split(
            &data,
            &args.split,
            &args.source.data,
        ));
    }
    let labels = meta.labels.len();
    let targets: Vec<Option<f32>> = items.iter().flat_map(|i| i.labels.clone()).collect();
    let n = items.len();
    let scores = score_items(&model, &meta, items, args.threads, &device)?;
    let mut report = format!(
        "operating points (Youden's J on {n} {} images, image-only head):\n",
        args.split
    );
    meta.operating_points = (0..labels)
        .map(|l| {
            let (mut s, mut p) = (Vec::new(), Vec::new());
            for r in 0..n {
                if let Some(t) = targets[r * labels + l] {
                    s.push(scores.image[r * labels + l]);
                    p.push(t > 0.5);
                }
            }
            let t = youden_threshold(&s, &p);
            let _ = writeln!(report, "  {:28} {t:.4}", meta.labels[l]);
            t
        })
        .collect();
    // The "unlike the training images" warning, calibrated on the same split's embeddings.
    meta.embedding_reference =
        EmbeddingReference::fit(&scores.embeddings, model.encoder.dim(), NOVELTY_PERCENTILE);
    if let Some(r) = &meta.embedding_reference {
        let _ = writeln!(
            report,
            "unusual-image warning: embedding distance above {:.2} (the {}th percentile of {} {} images)",
            r.threshold, NOVELTY_PERCENTILE, r.images, args.split
        );
    }
    meta.training.insert(
        "export.operating_points".into(),
        format!(
            "Youden's J on the {} split of {}",
            args.split,
            args.source.data.display()
        ),
    );
    let precision = if args.f16 {
        WeightPrecision::F16
    } else {
        WeightPrecision::F32
    };
    let out = write_model_as(&model, &meta, precision)?;
    load_classifier(&out, &Device::flex()).context("the exported file does not load back")?;
    write_atomic(&args.out, &out)?;
    let _ = writeln!(
        report,
        "wrote {} ({:.1} MB, {precision:?} weights)",
        args.out.display(),
        out.len() as f64 / 1e6
    );
    Ok(report)
}

/// The projection head and prototypes of the MSN pretraining at `path`, after checking that
/// the classifier's encoder is that pretraining's encoder (same [CLS] of the reference
/// image to 1e-4).
fn prototype_head(
    path: &Path,
    model: &Classifier,
    meta: &ModelMeta,
    device: &Device,
) -> Result<PrototypeHead> {
    let (msn, pre_meta) = model_files::msn(path, device)?;
    let size = meta.config.vit.image_size;
    let ours = encoder_signature(&model.encoder, size, &meta.normalization, device)
        .map_err(anyhow::Error::msg)?;
    let theirs = encoder_signature(&msn.encoder(), size, &meta.normalization, device)
        .map_err(anyhow::Error::msg)?;
    let gap = (ours - theirs).abs().max().into_scalar::<f32>();
    // NaN counts as a difference.
    if gap.is_nan() || gap > 1e-4 {
        bail!(
            "{}: the classifier's encoder is not this pretraining's (their [CLS] of a test card \
             differs by {gap:.3e}); the prototypes only fit the encoder they were trained with, \
             so export a linear probe of this pretraining, not a fine-tuned model",
            path.display()
        );
    }
    if pre_meta.config.head != meta.config.head
        || pre_meta.config.num_prototypes != meta.config.num_prototypes
    {
        bail!(
            "{}: its projection head or prototype count differ from the classifier's configuration",
            path.display()
        );
    }
    Ok(PrototypeHead::from_pretraining(&msn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn youden_picks_the_best_separating_threshold() {
        // Positives at 0.6 and above, negatives below: the threshold is the lowest positive.
        let s = [0.1, 0.3, 0.6, 0.8, 0.2, 0.9];
        let p = [false, false, true, true, false, true];
        assert_eq!(youden_threshold(&s, &p), 0.6);
        // One overlapping negative at 0.7: J(0.6) = 1 - 1/3 beats J(0.8) = 2/3 - 0, tie ->
        // the lower threshold.
        let s = [0.1, 0.7, 0.6, 0.8, 0.2, 0.9];
        assert_eq!(youden_threshold(&s, &p), 0.6);
        assert_eq!(youden_threshold(&[0.2, 0.4], &[true, true]), 0.5);
    }
}
