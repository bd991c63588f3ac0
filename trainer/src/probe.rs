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
//! The heads see the features standardised per dimension with the training split's mean
//! and standard deviation (MAE's linear probe does the same with a BatchNorm without
//! affine parameters); the pretrained `g` of the image + EHR head is re-expressed for
//! standardised input before training, and its fused output reaches the fresh last layer
//! standardised with statistics fixed at the start (g itself stays in the pretrained
//! space, where learn mode projects it). Everything is folded back afterwards, so the
//! model file holds ordinary linear layers on the encoder's raw [CLS]. On
//! the synthetic world this moved a probe from chance to what a logistic regression on the
//! same features reaches: a [CLS] whose variance sits in one direction (a young encoder's
//! usually does) leaves the useful directions too small for Adam at these learning rates.
//!
//! Deviation, declared: the authors' linear probe also augments the training images each
//! epoch; computing frozen features once is what makes probing feasible on a CPU.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::nn::Linear;
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

/// Per-dimension standardisation of [CLS] features, `(x - mean) / std`, fitted on the
/// training split (a dimension without spread keeps std 1).
#[derive(Debug, Clone, PartialEq)]
struct Standardisation {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Standardisation {
    /// Mean and (population) standard deviation of each of the `d` columns of `cls`
    /// (row-major, `[N, d]`).
    fn fit(cls: &[f32], d: usize) -> Self {
        let n = (cls.len() / d).max(1) as f64;
        let mut sum = vec![0f64; d];
        let mut squares = vec![0f64; d];
        for row in cls.chunks(d) {
            for ((s, q), &x) in sum.iter_mut().zip(&mut squares).zip(row) {
                *s += x as f64;
                *q += x as f64 * x as f64;
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = squares
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let sd = (q / n - m * m).max(0.0).sqrt();
                if sd > 1e-6 { sd as f32 } else { 1.0 }
            })
            .collect();
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    /// Standardises `cls` (`[N, d]`, row-major) in place.
    fn apply(&self, cls: &mut [f32]) {
        for row in cls.chunks_mut(self.mean.len()) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
    }

    /// `linear` re-expressed for raw features in its first `d` inputs when it took
    /// standardised ones: the same outputs for `x` as before for `(x - mean) / std`.
    fn fold(&self, linear: Linear) -> Result<Linear> {
        let scale: Vec<f32> = self.std.iter().map(|s| 1.0 / s).collect();
        let shift: Vec<f32> = self
            .mean
            .iter()
            .zip(&self.std)
            .map(|(m, s)| -m / s)
            .collect();
        affine_inputs(linear, &scale, &shift)
    }

    /// The inverse of [`Self::fold`]: `linear` on raw features becomes the same function of
    /// standardised ones.
    fn unfold(&self, linear: Linear) -> Result<Linear> {
        affine_inputs(linear, &self.std, &self.mean)
    }
}

impl Standardisation {
    /// `x` (`[N, d]`) standardised, on its device.
    fn standardise(&self, x: Tensor<2>) -> Tensor<2> {
        let device = x.device();
        let row =
            |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [1, v.len()]), &device);
        (x - row(&self.mean)) / row(&self.std)
    }
}

/// `linear` (`y = x W + b`, W `[inputs, outputs]`) with the first `scale.len()` rows of W
/// multiplied by `scale` and `shift W` (over those rows, before scaling) added to `b`;
/// computed on the host, as new parameters on the layer's device.
fn affine_inputs(mut linear: Linear, scale: &[f32], shift: &[f32]) -> Result<Linear> {
    let weight = linear.weight.val();
    let device = weight.device();
    let [inputs, outputs] = weight.dims();
    let read = |t: TensorData| {
        t.convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("cannot read a head's weights: {e:?}"))
    };
    let mut w = read(weight.into_data())?;
    let mut b = match &linear.bias {
        Some(bias) => read(bias.val().into_data())?,
        None => vec![0.0; outputs],
    };
    for (i, (&sc, &sh)) in scale.iter().zip(shift).enumerate().take(inputs) {
        for (j, bj) in b.iter_mut().enumerate() {
            *bj += sh * w[i * outputs + j];
            w[i * outputs + j] *= sc;
        }
    }
    linear.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(w, [inputs, outputs]),
        &device,
    ));
    linear.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [outputs]),
        &device,
    )));
    Ok(linear)
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
    /// The head, and the standardisation of its fused embedding that its final linear layer
    /// sees (fixed; folded into that layer at the end).
    Fused(FusedClassifier, Standardisation),
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
            Head::Fused(h, s) => {
                let fused = h.fusion.forward(cls, rows(&f.ehr, idx, e, device));
                h.fc.forward(s.standardise(fused))
            }
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
                Head::Fused(h, s) => {
                    let grads = GradientsParams::from_grads(loss.backward(), &h);
                    Head::Fused(optim.step(lr, h, grads), s)
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
    let (mut train_f, mut val_f, mut test_f) = (
        extract(&encoder, train, &pre_meta, args, &device)?,
        extract(&encoder, val, &pre_meta, args, &device)?,
        extract(&encoder, test, &pre_meta, args, &device)?,
    );
    let standard = Standardisation::fit(&train_f.cls, d);
    for f in [&mut train_f, &mut val_f, &mut test_f] {
        standard.apply(&mut f.cls);
    }

    let ad = Device::flex().autodiff();
    // The fresh layers' initialisation follows the seed: the same command, the same heads.
    ad.seed(args.train.seed);
    let mut heads = vec![("image", Head::Image(LinearClassifier::new(d, labels, &ad)))];
    if let Some(fusion) = msn.ehr_fusion() {
        let mut fusion = fusion.clone().fork(&ad);
        // The pretrained g, for standardised [CLS] features: the same function at the start.
        fusion.g = standard.unfold(fusion.g)?;
        // The statistics of its outputs over the training images, for the fresh linear
        // layer after it (what the [CLS] standardisation is for the image head).
        let all: Vec<usize> = (0..train_f.cls.len() / d).collect();
        // (Outside autodiff: no graph is kept for the whole training split.)
        let cpu = Device::flex();
        let fused = fusion.clone().valid().forward(
            rows(&train_f.cls, &all, d, &cpu),
            rows(&train_f.ehr, &all, e, &cpu),
        );
        let fused = fused
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|err| anyhow::anyhow!("cannot read the fused features: {err:?}"))?;
        // g itself stays in the pretrained space (learn mode projects its output with the
        // pretraining's head); the standardisation sits before the fresh layer instead.
        let out = Standardisation::fit(&fused, d);
        let fused = FusedClassifier::from_fusion(fusion, d, labels, &ad);
        heads.push(("image+ehr", Head::Fused(fused, out)));
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
    // Folded back to the encoder's raw [CLS] features.
    for head in trained {
        match head {
            Head::Image(h) => {
                let mut h = h.valid();
                h.fc = standard.fold(h.fc)?;
                image_head = Some(h);
            }
            Head::Fused(h, out) => {
                let mut h = h.valid();
                h.fusion.g = standard.fold(h.fusion.g)?;
                h.fc = out.fold(h.fc)?;
                fused_head = Some(h);
            }
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
    fn standardisation_matches_hand_values_and_folds_exactly() {
        // Two rows of three features; the last has no spread and keeps std 1.
        let cls = [1.0, 10.0, 5.0, 3.0, 14.0, 5.0];
        let s = Standardisation::fit(&cls, 3);
        assert_eq!(s.mean, [2.0, 12.0, 5.0]);
        assert_eq!(s.std, [1.0, 2.0, 1.0]);
        let mut z = cls;
        s.apply(&mut z);
        assert_eq!(z, [-1.0, -1.0, 0.0, 1.0, 1.0, 0.0]);

        // A Linear(3 + 1 -> 2) on standardised features and one extra input (as g takes
        // the EHR embedding after the [CLS]): folded, it gives the same outputs on raw
        // features; unfolded again, the weights it started with.
        let device = Device::flex();
        let linear = burn::nn::LinearConfig::new(4, 2).init(&device);
        let run = |l: &Linear, x: [f32; 4]| -> Vec<f32> {
            l.forward(Tensor::<2>::from_data(
                TensorData::new(x.to_vec(), [1, 4]),
                &device,
            ))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
        };
        let folded = s.fold(linear.clone()).unwrap();
        for (raw, standard) in [
            ([1.0, 10.0, 5.0, 0.5], [-1.0, -1.0, 0.0, 0.5]),
            ([4.0, 9.0, 7.0, -2.0], [2.0, -1.5, 2.0, -2.0]),
        ] {
            let (a, b) = (run(&folded, raw), run(&linear, standard));
            assert!(
                a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-5),
                "{a:?} {b:?}"
            );
        }
        // On a tensor (as the image + EHR head's last layer sees its input): the hand values.
        let z = s.standardise(Tensor::<2>::from_data(
            TensorData::new(cls.to_vec(), [2, 3]),
            &device,
        ));
        let z: Vec<f32> = z.into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(z, [-1.0, -1.0, 0.0, 1.0, 1.0, 0.0]);
        let back = s.unfold(folded).unwrap();
        let (w0, w1) = (
            linear.weight.val().into_data(),
            back.weight.val().into_data(),
        );
        w0.assert_approx_eq::<f32>(&w1, burn::tensor::Tolerance::absolute(1e-6));
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
