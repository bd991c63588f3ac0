//! `cxr-msn finetune`: the whole classifier trained end to end (METHOD.md section 7), on
//! the device of `--device`: the pretrained EMA target encoder with an image-only head
//! and, for a multimodal model, an image + EHR head seeded with the pretrained f_ehr and g, both heads' masked
//! binary cross-entropies summed. Training images get the fine-tuning augmentation (flip,
//! random affine, centre crop 224); validation and test images the evaluation transform.
//! Adam (lr 1e-4, no weight decay, cosine per epoch), early stopping on the validation
//! macro AUROC of the image head (patience 5, up to 50 epochs), test metrics with 95%
//! intervals, and the best model as a classifier file.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use cxr_msn::checkpoint::{ModelMeta, write_model};
use cxr_msn::classifier::Classifier;
use cxr_msn::decode::DecodeLimits;
use cxr_msn::ehr::FeatureSet;
use cxr_msn::views::AffineConfig;

use crate::cpu_parallel;
use crate::device::choose;
use crate::downstream::{DownstreamArgs, splits, write_test_report};
use crate::evaluate::score_items;
use crate::files::write_atomic;
use crate::images::file_decoder;
use crate::loader::{Loader, LoaderConfig, Views};
use crate::metrics::evaluate;
use crate::model_files;
use crate::probe::masked_bce;
use crate::progress::Progress;
use crate::source::DataArgs;
use crate::split_backward::{finish_backward, forward_parts};

/// The settings of `cxr-msn finetune`.
#[derive(Args, Debug, Clone)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub source: DataArgs,
    /// The pretraining checkpoint (`checkpoint.safetensors` of a pretrain run folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output folder: metrics.json and classifier.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Preprocessed-image cache folder.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[command(flatten)]
    pub train: DownstreamArgs,
}

/// Fine-tunes and returns the report printed by the command.
pub fn run(args: &FinetuneArgs) -> Result<String> {
    let chosen = choose(args.train.device)?;
    let device = chosen.device.clone().autodiff();
    device.seed(args.train.seed);
    let (msn, pre_meta) = model_files::pretraining(&args.checkpoint, &device)?;
    let config = pre_meta.config.clone();
    let data = args.source.load()?;
    let labels = data.label_names.len();
    let features: Option<FeatureSet> = config.ehr.as_ref().map(|e| e.feature_set.clone());
    let ehr_in = features.as_ref().map(FeatureSet::width);
    let policy = args.source.policy();
    let (train, val, test) = splits(&data, features.as_ref(), &policy, &args.train)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let mut meta = ModelMeta::classifier(config.clone(), data.label_names.clone());
    meta.normalization = pre_meta.normalization.clone();
    meta.training = pre_meta.training.clone();
    meta.training.insert(
        "finetune.data".into(),
        args.source.data.display().to_string(),
    );
    meta.training.insert(
        "finetune.train_fraction".into(),
        args.train.train_fraction.to_string(),
    );

    let mut cfg = LoaderConfig::new(meta.normalization.clone());
    cfg.batch_size = args.train.batch_size.min(train.len());
    cfg.threads = args.train.threads;
    cfg.seed = args.train.seed;
    cfg.cache_dir = args.cache.clone();
    let loader = Loader::new(
        train,
        Views::Train(AffineConfig::default()),
        cfg,
        file_decoder(DecodeLimits::default()),
    )?;

    let mut model = msn.classifier(&config, labels, &device);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let mut log = format!("device: {}\n", chosen.description);
    let (mut best, mut best_auc, mut waited) = (model.valid(), f64::NEG_INFINITY, 0);
    let val_targets: Vec<Option<f32>> = val.iter().flat_map(|i| i.labels.clone()).collect();
    let per_epoch = loader.batches_per_epoch();
    let mut step = 0;
    let mut progress = Progress::new(0, per_epoch * args.train.epochs, args.train.batch_size);
    for epoch in 0..args.train.epochs {
        let lr = args.train.lr_at(epoch);
        for batch in loader.epoch(epoch) {
            let batch = batch?;
            let b = batch.items.len();
            let images = batch.images.to_tensor(&device);
            let ehr = ehr_in
                .map(|n| Tensor::from_data(TensorData::new(batch.ehr.clone(), [b, n]), &device));
            let heads_loss = |cls: Tensor<2>| {
                let mut loss = masked_bce(
                    model.image_head.forward(cls.clone()),
                    &batch.labels,
                    &device,
                );
                if let (Some(head), Some(e)) = (&model.fused_head, ehr.clone()) {
                    loss = loss + masked_bce(head.forward(cls, e), &batch.labels, &device);
                }
                loss
            };
            // On the CPU the encoder's forward and backward run over parts of the batch at
            // once (crate::split_backward); the heads and the loss see the whole batch.
            let ranges = cpu_parallel::ranges(&device, b);
            let grads = if ranges.len() > 1 {
                let parts: Vec<_> =
                    forward_parts(&model.encoder, &ranges, |encoder, start, len| {
                        (
                            vec![encoder.forward(images.clone().narrow(start, len), None)],
                            (),
                        )
                    })
                    .into_iter()
                    .map(|(part, ())| part)
                    .collect();
                let cls = Tensor::cat(parts.iter().map(|p| p.leaves()[0].clone()).collect(), 0);
                finish_backward(heads_loss(cls).backward(), &model, parts)
            } else {
                let cls = model.encoder.forward(images, None);
                GradientsParams::from_grads(heads_loss(cls).backward(), &model)
            };
            model = optim.step(lr, model, grads);
            step += 1;
            let status = format!("fine-tune epoch {}/{}", epoch + 1, args.train.epochs);
            // The progress line goes to the terminal (or the log); the report is returned.
            progress.show(step, &status, &mut std::io::stdout())?;
        }
        progress.finish_line();
        if !crate::finite::weights_finite(&model) {
            bail!(
                "fine-tuning diverged in epoch {} (the weights became NaN or infinite); \
                 nothing was written. Lower the learning rate (--lr)",
                epoch + 1
            );
        }
        let current: Classifier = model.valid();
        let scores = score_items(
            &current,
            &meta,
            val.clone(),
            args.train.threads,
            &chosen.device,
        )?;
        let auc = evaluate(&scores.image, &val_targets, labels)
            .macro_auroc
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            log,
            "epoch {}/{}: validation macro AUROC {auc:.4}",
            epoch + 1,
            args.train.epochs
        );
        if auc > best_auc {
            (best, best_auc, waited) = (current, auc, 0);
        } else {
            waited += 1;
            if waited >= args.train.patience {
                let _ = writeln!(
                    log,
                    "stopped: no better validation AUROC for {waited} epochs"
                );
                break;
            }
        }
    }

    let targets: Vec<Option<f32>> = test.iter().flat_map(|i| i.labels.clone()).collect();
    let scores = score_items(&best, &meta, test, args.train.threads, &chosen.device)?;
    let table = write_test_report(
        &args.out,
        &scores.heads(),
        &targets,
        &data.label_names,
        &args.checkpoint,
        &args.source.data,
        &args.train,
        serde_json::json!({ "image": best_auc }),
    )?;
    log.push_str(&table);
    let file = args.out.join("classifier.safetensors");
    write_atomic(&file, &write_model(&best, &meta)?)?;
    let _ = writeln!(
        log,
        "wrote {} and, beside it, metrics.json, metrics.csv, roc.svg",
        file.display()
    );
    Ok(log)
}
