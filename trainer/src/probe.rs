//! `cxr-msn probe`: linear evaluation of a pretrained encoder (METHOD.md section 7), and
//! the classifier model file that `predict` and the browser load. The encoder runs on the
//! device of `--device`; the small heads train on the CPU.
//!
//! The encoder (the EMA target ViT) stays frozen, so its [CLS] features are computed once
//! per image with the evaluation transform (shorter side 256, centre crop 224) and the
//! pretraining's normalisation; then an image-only linear head, and for a multimodal model
//! an image + EHR head seeded with the pretrained f_ehr and g, are trained on them with
//! Adam (lr 1e-4, no weight decay, cosine per epoch, batch 64), masked binary
//! cross-entropy, and early stopping on the validation macro AUROC (patience 5, up to 50
//! epochs). The best heads are scored on the test split: macro AUROC and AUPRC with 95%
//! basic-bootstrap intervals (1,000 resamples).
//!
//! Deviation, declared: the authors' linear probe also augments the training images each
//! epoch; computing frozen features once is what makes probing feasible on a CPU.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{sigmoid, softplus};
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;
use cxr_msn::checkpoint::{ModelMeta, write_model};
use cxr_msn::classifier::Classifier;
use cxr_msn::ehr::FeatureSet;
use cxr_msn::heads::{FusedClassifier, LinearClassifier};
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;
use cxr_msn::rand::seq::SliceRandom;
use cxr_msn::vit::VisionTransformer;

use crate::device::choose;
use crate::downstream::{DownstreamArgs, splits, write_test_report};
use crate::features::cls_features;
use crate::files::write_atomic;
use crate::loader::Item;
use crate::metrics::evaluate;
use crate::model_files;
use crate::report::{HeadScores, csv_field};
use crate::source::DataArgs;

/// The settings of `cxr-msn probe`.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub source: DataArgs,
    /// The pretraining checkpoint (`checkpoint.safetensors` of a pretrain run folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output folder: metrics.json, test_scores.csv, test_targets.csv, classifier.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub train: DownstreamArgs,
}

/// Frozen features of a set of images.
struct Features {
    cls: Vec<f32>,
    ehr: Vec<f32>,
    targets: Vec<Option<f32>>,
}

fn extract(
    encoder: &VisionTransformer,
    items: Vec<Item>,
    meta: &ModelMeta,
    args: &ProbeArgs,
    device: &Device,
) -> Result<Features> {
    let (ehr, targets) = (
        items.iter().flat_map(|i| i.ehr.clone()).collect(),
        items.iter().flat_map(|i| i.labels.clone()).collect(),
    );
    let cls = cls_features(
        encoder,
        items,
        &meta.normalization,
        args.train.threads,
        device,
    )?;
    Ok(Features { cls, ehr, targets })
}

/// Mean binary cross-entropy with logits over the kept targets.
pub(crate) fn masked_bce(logits: Tensor<2>, targets: &[Option<f32>], device: &Device) -> Tensor<1> {
    let dims = logits.dims();
    let y: Vec<f32> = targets.iter().map(|t| t.unwrap_or(0.0)).collect();
    let m: Vec<f32> = targets.iter().map(|t| t.is_some() as u8 as f32).collect();
    let kept = m.iter().sum::<f32>().max(1.0);
    let y = Tensor::<2>::from_data(TensorData::new(y, dims), device);
    let m = Tensor::<2>::from_data(TensorData::new(m, dims), device);
    // log(1 + e^x) - x y, the stable form of BCE on logits.
    let loss = softplus(logits.clone(), 1.0) - logits * y;
    (loss * m).sum().div_scalar(kept as f64)
}

fn rows(data: &[f32], rows: &[usize], width: usize, device: &Device) -> Tensor<2> {
    let picked: Vec<f32> = rows
        .iter()
        .flat_map(|&r| data[r * width..(r + 1) * width].iter().copied())
        .collect();
    Tensor::from_data(TensorData::new(picked, [rows.len(), width]), device)
}

fn probabilities(logits: Tensor<2>) -> Result<Vec<f32>> {
    sigmoid(logits)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// A head being probed: image-only or image + EHR (few exist, so their sizes do not matter).
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Head {
    Image(LinearClassifier),
    Fused(FusedClassifier),
}

impl Head {
    fn logits(
        &self,
        f: &Features,
        idx: &[usize],
        d: usize,
        e: usize,
        device: &Device,
    ) -> Tensor<2> {
        let cls = rows(&f.cls, idx, d, device);
        match self {
            Head::Image(h) => h.forward(cls),
            Head::Fused(h) => h.forward(cls, rows(&f.ehr, idx, e, device)),
        }
    }
}

/// Trains one head with early stopping; returns the best head and its validation AUROC.
#[allow(clippy::too_many_arguments)]
fn train_head(
    mut head: Head,
    train: &Features,
    val: &Features,
    labels: usize,
    d: usize,
    e: usize,
    args: &DownstreamArgs,
    log: &mut String,
) -> Result<(Head, f64)> {
    let device = Device::flex().autodiff();
    let n = train.cls.len() / d;
    let n_val = val.cls.len() / d;
    let all_val: Vec<usize> = (0..n_val).collect();
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (mut best, mut best_auc, mut waited) = (head.clone(), f64::NEG_INFINITY, 0);
    for epoch in 0..args.epochs {
        let lr = args.lr_at(epoch);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(args.batch_size) {
            let targets: Vec<Option<f32>> = chunk
                .iter()
                .flat_map(|&r| train.targets[r * labels..(r + 1) * labels].iter().copied())
                .collect();
            let logits = head.logits(train, chunk, d, e, &device);
            let loss = masked_bce(logits, &targets, &device);
            head = match head {
                Head::Image(h) => {
                    let grads = GradientsParams::from_grads(loss.backward(), &h);
                    Head::Image(optim.step(lr, h, grads))
                }
                Head::Fused(h) => {
                    let grads = GradientsParams::from_grads(loss.backward(), &h);
                    Head::Fused(optim.step(lr, h, grads))
                }
            };
        }
        let scores = probabilities(head.logits(val, &all_val, d, e, &device))?;
        if scores.iter().any(|p| !p.is_finite()) {
            bail!(
                "the head diverged in epoch {} (its scores became NaN or infinite); \
                 nothing was written. Lower the learning rate (--lr)",
                epoch + 1
            );
        }
        let auc = evaluate(&scores, &val.targets, labels)
            .macro_auroc
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            log,
            "  epoch {}/{}: validation macro AUROC {auc:.4}",
            epoch + 1,
            args.epochs
        );
        if auc > best_auc {
            (best, best_auc, waited) = (head.clone(), auc, 0);
        } else {
            waited += 1;
            if waited >= args.patience {
                let _ = writeln!(
                    log,
                    "  stopped: no better validation AUROC for {waited} epochs"
                );
                break;
            }
        }
    }
    Ok((best, best_auc))
}

/// What a probe run gives back besides its files.
pub struct ProbeOutcome {
    /// The report printed by the command.
    pub log: String,
    /// Test probabilities `[N, labels]` of each head, by head name.
    pub test_scores: Vec<(&'static str, Vec<f32>)>,
    /// Test targets `[N, labels]`.
    pub test_targets: Vec<Option<f32>>,
    /// The dataset's label names.
    pub label_names: Vec<String>,
}

/// Runs the linear probe.
pub fn run(args: &ProbeArgs) -> Result<ProbeOutcome> {
    let chosen = choose(args.train.device)?;
    let device = chosen.device;
    let (msn, pre_meta) = model_files::pretraining(&args.checkpoint, &device)?;
    let config = pre_meta.config.clone();
    let data = args.source.load()?;
    let labels = data.label_names.len();
    let features: Option<FeatureSet> = config.ehr.as_ref().map(|e| e.feature_set.clone());
    let policy = args.source.policy();
    let (train, val, test) = splits(&data, features.as_ref(), &policy, &args.train)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let encoder = msn.encoder().valid();
    let d = encoder.dim();
    let e = features.as_ref().map_or(0, FeatureSet::width);
    let mut log = format!(
        "device: {}\nfeatures: {} train, {} validate, {} test images; {labels} labels; encoder D={d}\n",
        chosen.description,
        train.len(),
        val.len(),
        test.len()
    );
    let (train_f, val_f, test_f) = (
        extract(&encoder, train, &pre_meta, args, &device)?,
        extract(&encoder, val, &pre_meta, args, &device)?,
        extract(&encoder, test, &pre_meta, args, &device)?,
    );

    let ad = Device::flex().autodiff();
    let mut heads = vec![("image", Head::Image(LinearClassifier::new(d, labels, &ad)))];
    if let Some(fusion) = msn.ehr_fusion() {
        let fused = FusedClassifier::from_fusion(fusion.clone().fork(&ad), d, labels, &ad);
        heads.push(("image+ehr", Head::Fused(fused)));
    }
    let mut trained = Vec::new();
    let mut validation = serde_json::Map::new();
    let mut test_scores = Vec::new();
    let n_test = test_f.cls.len() / d;
    let idx: Vec<usize> = (0..n_test).collect();
    for (name, head) in heads {
        let _ = writeln!(log, "head {name}:");
        let (best, val_auc) =
            train_head(head, &train_f, &val_f, labels, d, e, &args.train, &mut log)?;
        let logits = best.logits(&test_f, &idx, d, e, &Device::flex());
        test_scores.push((name, probabilities(logits)?));
        validation.insert(name.to_string(), serde_json::json!(val_auc));
        trained.push(best);
    }
    let scored: Vec<HeadScores> = test_scores
        .iter()
        .map(|(name, scores)| HeadScores { name, scores })
        .collect();
    let table = write_test_report(
        &args.out,
        &scored,
        &test_f.targets,
        &data.label_names,
        &args.checkpoint,
        &args.source.data,
        &args.train,
        serde_json::Value::Object(validation),
    )?;
    write_atomic(
        &args.out.join("test_scores.csv"),
        scores_csv(&data.label_names, &scored).as_bytes(),
    )?;
    write_atomic(
        &args.out.join("test_targets.csv"),
        targets_csv(&data.label_names, &test_f.targets).as_bytes(),
    )?;
    log.push_str(&table);

    // The classifier model file: encoder plus the best heads.
    let mut image_head = None;
    let mut fused_head = None;
    for head in trained {
        match head {
            Head::Image(h) => image_head = Some(h.valid()),
            Head::Fused(h) => fused_head = Some(h.valid()),
        }
    }
    let classifier = Classifier {
        encoder,
        image_head: image_head.context("the image head was trained")?,
        fused_head,
        prototype_head: None,
    };
    let mut meta = ModelMeta::classifier(config, data.label_names.clone());
    meta.normalization = pre_meta.normalization.clone();
    meta.training = pre_meta.training.clone();
    meta.training
        .insert("probe.data".into(), args.source.data.display().to_string());
    meta.training.insert(
        "probe.train_fraction".into(),
        args.train.train_fraction.to_string(),
    );
    let file = args.out.join("classifier.safetensors");
    write_atomic(&file, &write_model(&classifier, &meta)?)?;
    let _ = writeln!(
        log,
        "wrote {} and, beside it, metrics.json, metrics.csv, roc.svg, test_scores.csv, \
         test_targets.csv",
        file.display()
    );
    Ok(ProbeOutcome {
        log,
        test_scores,
        test_targets: test_f.targets,
        label_names: data.label_names,
    })
}

/// The per-image test probabilities of every head: `row,head,<labels...>`.
fn scores_csv(label_names: &[String], heads: &[HeadScores]) -> String {
    let mut csv = csv_header("row,head", label_names);
    for head in heads {
        for (r, row) in head.scores.chunks(label_names.len()).enumerate() {
            let _ = write!(csv, "{r},{}", head.name);
            for s in row {
                let _ = write!(csv, ",{s}");
            }
            csv.push('\n');
        }
    }
    csv
}

/// A header line: the leading columns, then the label names.
fn csv_header(leading: &str, label_names: &[String]) -> String {
    let mut csv = String::from(leading);
    for name in label_names {
        csv.push(',');
        csv.push_str(&csv_field(name));
    }
    csv.push('\n');
    csv
}

/// The test targets the scores are judged against: `row,<labels...>`, 1 or 0, empty where
/// a label is left out (so that two runs can be compared image by image).
fn targets_csv(label_names: &[String], targets: &[Option<f32>]) -> String {
    let mut csv = csv_header("row", label_names);
    for (r, row) in targets.chunks(label_names.len().max(1)).enumerate() {
        let _ = write!(csv, "{r}");
        for t in row {
            match t {
                Some(v) => {
                    let _ = write!(csv, ",{v}");
                }
                None => csv.push(','),
            }
        }
        csv.push('\n');
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn separable(n: usize, seed: u64) -> Features {
        use cxr_msn::rand::RngExt;
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut cls, mut targets) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let y = rng.random_bool(0.4);
            let shift = if y { 1.0 } else { -1.0 };
            cls.extend([
                shift + rng.random_range(-0.8..0.8f32),
                rng.random_range(-1.0..1.0f32),
            ]);
            // Label 0 follows feature 0; label 1 is ignored everywhere but one row.
            targets.extend([Some(y as u8 as f32), None]);
        }
        Features {
            cls,
            ehr: Vec::new(),
            targets,
        }
    }

    #[test]
    fn the_head_training_learns_a_separable_label_and_stops_early() {
        let args = DownstreamArgs {
            epochs: 40,
            patience: 5,
            lr: 0.05,
            batch_size: 16,
            train_fraction: 1.0,
            seed: 1,
            bootstrap: 10,
            threads: 1,
            device: crate::device::DeviceArg::Cpu,
        };
        let (train, val) = (separable(200, 1), separable(60, 2));
        let ad = Device::flex().autodiff();
        let head = Head::Image(LinearClassifier::new(2, 2, &ad));
        let mut log = String::new();
        let (best, auc) = train_head(head, &train, &val, 2, 2, 0, &args, &mut log).unwrap();
        assert!(auc > 0.95, "validation AUROC {auc}\n{log}");
        let idx: Vec<usize> = (0..60).collect();
        let scores = probabilities(best.logits(&val, &idx, 2, 0, &Device::flex())).unwrap();
        let m = evaluate(&scores, &val.targets, 2);
        assert_eq!(m.auroc[1], None, "an all-ignored label has no AUROC");
        assert!(
            (m.macro_auroc.unwrap() - auc).abs() < 1e-6,
            "the best head is the one kept"
        );
    }
}
