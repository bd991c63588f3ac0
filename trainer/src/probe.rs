//! `cxr-msn probe`: linear evaluation of a pretrained encoder (METHOD.md section 7) on the
//! CPU, and the classifier model file that `predict` and the browser load.
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

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{sigmoid, softplus};
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;
use cxr_msn::checkpoint::{ModelMeta, write_model};
use cxr_msn::classifier::Classifier;
use cxr_msn::decode::DecodeLimits;
use cxr_msn::ehr::FeatureSet;
use cxr_msn::heads::{FusedClassifier, LinearClassifier};
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;
use cxr_msn::rand::seq::SliceRandom;
use cxr_msn::vit::VisionTransformer;

use crate::downstream::{DownstreamArgs, splits};
use crate::files::write_atomic;
use crate::images::file_decoder;
use crate::loader::{Item, Loader, LoaderConfig, Views};
use crate::metrics::{Interval, bootstrap_macro, evaluate};
use crate::model_files;
use crate::source::DataArgs;

/// The settings of `cxr-msn probe`.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub source: DataArgs,
    /// The pretraining checkpoint (`checkpoint.safetensors` of a pretrain run folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output folder: metrics.json, test_scores.csv, classifier.safetensors.
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
    let cfg = LoaderConfig::for_scoring(meta.normalization.clone(), args.train.threads);
    let (ehr, targets) = (
        items.iter().flat_map(|i| i.ehr.clone()).collect(),
        items.iter().flat_map(|i| i.labels.clone()).collect(),
    );
    let loader = Loader::new(
        items,
        Views::Eval,
        cfg,
        file_decoder(DecodeLimits::default()),
    )?;
    let mut cls = Vec::new();
    for batch in loader.epoch(0) {
        let images = batch?.images.to_tensor(device);
        let out = encoder.forward(images, None).into_data();
        cls.extend(
            out.try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
    }
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
        let auc = evaluate(&scores, &val.targets, labels)
            .macro_auroc
            .unwrap_or(f64::NAN);
        let _ = writeln!(log, "  epoch {epoch}: validation macro AUROC {auc:.4}");
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

fn interval_json(i: Option<Interval>) -> serde_json::Value {
    match i {
        Some(i) => serde_json::json!({ "value": i.value, "ci95": [i.low, i.high] }),
        None => serde_json::Value::Null,
    }
}

/// Runs the linear probe; returns the report printed by the command.
pub fn run(args: &ProbeArgs) -> Result<String> {
    let device = Device::flex();
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
        "features: {} train, {} validate, {} test images; {labels} labels; encoder D={d}\n",
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
    if let Some(fusion) = &msn.ehr {
        let fused = FusedClassifier::from_fusion(fusion.clone().fork(&ad), d, labels, &ad);
        heads.push(("image+ehr", Head::Fused(fused)));
    }
    let mut results = serde_json::Map::new();
    let mut scores_csv = String::from("row,head");
    for name in &data.label_names {
        scores_csv.push(',');
        scores_csv.push_str(name);
    }
    scores_csv.push('\n');
    let mut trained = Vec::new();
    for (name, head) in heads {
        let _ = writeln!(log, "head {name}:");
        let (best, val_auc) =
            train_head(head, &train_f, &val_f, labels, d, e, &args.train, &mut log)?;
        let n_test = test_f.cls.len() / d;
        let idx: Vec<usize> = (0..n_test).collect();
        let scores = probabilities(best.logits(&test_f, &idx, d, e, &Device::flex()))?;
        let m = evaluate(&scores, &test_f.targets, labels);
        let (auc, ap) = bootstrap_macro(
            &scores,
            &test_f.targets,
            labels,
            args.train.bootstrap,
            args.train.seed,
        );
        let _ = writeln!(
            log,
            "  test macro AUROC {} ; macro AUPRC {}",
            Interval::describe(auc),
            Interval::describe(ap)
        );
        for (r, row) in scores.chunks(labels).enumerate() {
            let _ = write!(scores_csv, "{r},{name}");
            for s in row {
                let _ = write!(scores_csv, ",{s}");
            }
            scores_csv.push('\n');
        }
        results.insert(
            name.to_string(),
            serde_json::json!({
                "validation_macro_auroc": val_auc,
                "test_macro_auroc": interval_json(auc),
                "test_macro_auprc": interval_json(ap),
                "test_auroc_per_label": data.label_names.iter().zip(&m.auroc)
                    .map(|(l, a)| (l.clone(), serde_json::json!(a))).collect::<serde_json::Map<_, _>>(),
            }),
        );
        trained.push(best);
    }
    let report = serde_json::json!({
        "checkpoint": args.checkpoint.display().to_string(),
        "data": args.source.data.display().to_string(),
        "train_fraction": args.train.train_fraction,
        "seed": args.train.seed,
        "heads": results,
    });
    write_atomic(
        &args.out.join("metrics.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    write_atomic(&args.out.join("test_scores.csv"), scores_csv.as_bytes())?;

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
        "wrote {}, metrics.json and test_scores.csv",
        file.display()
    );
    Ok(log)
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
