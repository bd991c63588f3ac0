//! `cxr-msn eval` and `cxr-msn predict`: a classifier model file applied to a dataset split
//! (metrics with confidence intervals) or to image files (a CSV of probabilities).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;
use cxr_msn::checkpoint::ModelMeta;
use cxr_msn::classifier::Classifier;
use cxr_msn::decode::{DecodeLimits, decode_downscaled};
use cxr_msn::ehr::{EhrRecord, Orientation, Sex, ViewPosition};
use cxr_msn::preprocess::BatchData;
use cxr_msn::views::{LOAD_SHORTER_SIDE, eval_view};
use rayon::prelude::*;

use crate::cpu_parallel::{map_ranges, pieces_for};
use crate::data::Split;
use crate::device::{DeviceArg, choose};
use crate::files::write_atomic;
use crate::loader::{Item, Loader};
use crate::model_files;
use crate::report::{HeadScores, score_heads, table, write_all};
use crate::source::DataArgs;

/// Probabilities of a set of images: image-only, and image + EHR where available.
pub struct Scores {
    /// `[N, labels]` image-only probabilities.
    pub image: Vec<f32>,
    /// `[N, labels]` image + EHR probabilities (when the model and the items have EHR).
    pub fused: Option<Vec<f32>>,
    /// `[N, D]` [CLS] embeddings.
    pub embeddings: Vec<f32>,
}

impl Scores {
    /// The heads' scores under their names (`image`, `image+ehr`), for the reports.
    pub fn heads(&self) -> Vec<HeadScores<'_>> {
        let mut heads = vec![HeadScores {
            name: "image",
            scores: &self.image,
        }];
        if let Some(fused) = &self.fused {
            heads.push(HeadScores {
                name: "image+ehr",
                scores: fused,
            });
        }
        heads
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Scores loader items (evaluation transform) with a classifier that lives on `device`.
pub fn score_items(
    model: &Classifier,
    meta: &ModelMeta,
    items: Vec<Item>,
    threads: usize,
    device: &Device,
) -> Result<Scores> {
    let ehr_in = model.fused_head.as_ref().map(|h| h.fusion.ehr_in());
    let use_ehr = ehr_in.is_some_and(|n| items.iter().all(|i| i.ehr.len() == n));
    let loader = Loader::for_scoring(items, meta.normalization.clone(), threads)?;
    let (mut image, mut fused, mut embeddings) = (Vec::new(), Vec::new(), Vec::new());
    for batch in loader.epoch(0) {
        let batch = batch?;
        let b = batch.items.len();
        let ehr = match (use_ehr, ehr_in) {
            (true, Some(n)) => Some(Tensor::from_data(
                TensorData::new(batch.ehr, [b, n]),
                device,
            )),
            _ => None,
        };
        let images = batch.images.to_tensor(device);
        // On the CPU the batch is scored in parts across the cores, in order.
        let parts = map_ranges(device, b, |start, len| {
            let part = |t: Tensor<2>| t.narrow(0, start, len);
            model.forward(
                images.clone().narrow(start, len),
                ehr.clone().map(part),
                false,
            )
        });
        for out in parts {
            let out = out?;
            image.extend(to_vec(out.image_probs)?);
            embeddings.extend(to_vec(out.embedding)?);
            if let Some(f) = out.fused_probs {
                fused.extend(to_vec(f)?);
            }
        }
    }
    Ok(Scores {
        image,
        fused: use_ehr.then_some(fused),
        embeddings,
    })
}

/// The settings of `cxr-msn eval`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub source: DataArgs,
    /// A classifier model file (from `probe`).
    #[arg(long)]
    pub model: PathBuf,
    /// Split to score: train, validate, test, or all.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Output folder: metrics.json, metrics.csv (per-label and macro AUROC and AUPRC with
    /// 95% intervals) and roc.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Bootstrap resamples for the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 24)]
    pub seed: u64,
    /// Loader threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where the model runs: a hardware GPU through wgpu when there is one (auto), the CPU,
    /// or the wgpu adapter whatever it is (gpu).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
}

/// Scores a dataset split with a classifier: per-label AUROC, macro AUROC and AUPRC with
/// 95% intervals, for each head. Dataset labels are put in the model's label order (so a
/// MIMIC-trained head can be scored on CheXpert); a label the dataset lacks is an error.
pub fn run_eval(args: &EvalArgs) -> Result<String> {
    let chosen = choose(args.device)?;
    let (model, meta) = model_files::classifier(&args.model, &chosen.device)?;
    let mut data = args.source.load()?;
    let order: Vec<&str> = meta.labels.iter().map(String::as_str).collect();
    data.reorder_labels(&order)
        .context("the dataset's labels do not cover the model's")?;
    let split = match args.split.as_str() {
        "all" => None,
        s => Some(Split::parse(s).with_context(|| {
            format!("unknown split '{s}': expected train, validate, test or all")
        })?),
    };
    let features = meta.config.ehr.as_ref().map(|e| e.feature_set.clone());
    let items = match data.items(split, features.as_ref(), &args.source.policy()) {
        Ok(items) => items,
        // Without the EHR fields the image + EHR head needs, score the image head only.
        Err(_) if features.is_some() => data.items(split, None, &args.source.policy())?,
        Err(e) => return Err(e),
    };
    if items.is_empty() {
        return Err(crate::source::empty_split(
            &data,
            &args.split,
            &args.source.data,
        ));
    }
    let targets: Vec<Option<f32>> = items.iter().flat_map(|i| i.labels.clone()).collect();
    let n = items.len();
    let scores = score_items(&model, &meta, items, args.threads, &chosen.device)?;
    let labels = meta.labels.len();
    let heads = scores.heads();
    let reports = score_heads(&heads, &targets, labels, args.bootstrap, args.seed);
    let mut report = format!(
        "device: {}\n{n} images of the {} split of {}, {labels} labels\n{}",
        chosen.description,
        args.split,
        args.source.data.display(),
        table(&reports, &meta.labels)
    );
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let extra = serde_json::json!({
            "split": args.split,
            "model": args.model.display().to_string(),
            "data": args.source.data.display().to_string(),
            "seed": args.seed,
        });
        write_all(out, &heads, &reports, &targets, &meta.labels, extra)?;
        let _ = writeln!(
            report,
            "wrote metrics.json, metrics.csv and roc.svg into {}",
            out.display()
        );
    }
    Ok(report)
}

/// The settings of `cxr-msn predict`.
#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    /// A classifier model file (from `probe`).
    #[arg(long)]
    pub model: PathBuf,
    /// An image file (PNG, JPEG, DICOM) or a folder of them.
    #[arg(long)]
    pub input: PathBuf,
    /// The CSV to write: path, then each label's image-only probability, then (when the
    /// model has the head and the EHR is known) each label's image + EHR probability.
    #[arg(long)]
    pub out: PathBuf,
    /// Patient sex (M/F) for the image + EHR head; DICOM headers fill it when present.
    #[arg(long)]
    pub sex: Option<String>,
    /// Age in years (0 to 120); DICOM headers fill it when present.
    #[arg(long, value_parser = crate::cli_values::age_years, allow_negative_numbers = true)]
    pub age: Option<f32>,
    /// View position (PA, AP, LATERAL, LL); DICOM headers fill it when present.
    #[arg(long)]
    pub view: Option<String>,
    /// Orientation (Erect, Recumbent).
    #[arg(long)]
    pub orientation: Option<String>,
    /// In an ICU stay (true/false).
    #[arg(long)]
    pub icu: Option<bool>,
    /// Died in hospital (true/false).
    #[arg(long)]
    pub mortality: Option<bool>,
    /// Where the model runs: a hardware GPU through wgpu when there is one (auto), the CPU,
    /// or the wgpu adapter whatever it is (gpu).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Score the readable images and list the unreadable ones, but succeed. Without it the
    /// readable images are still scored and written, and the command fails at the end.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Also write each image's [CLS] embedding (the encoder's features, the heads' input)
    /// to this CSV: path, then `cls_0` .. `cls_{D-1}`.
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
}

fn image_files(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(
                        e.to_ascii_lowercase().as_str(),
                        "png" | "jpg" | "jpeg" | "dcm" | "dicom"
                    )
                })
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{} holds no .png, .jpg, .jpeg or .dcm files (its subfolders are not searched)",
            input.display()
        );
    }
    Ok(files)
}

/// One scored file: each label's image-only probability, and its image + EHR one when the
/// model has that head and the EHR is known.
struct Row {
    image: Vec<f32>,
    fused: Option<Vec<f32>>,
    /// The [CLS] embedding, when `--embeddings` asks for it.
    embedding: Option<Vec<f32>>,
}

/// Scores image files and writes the CSV; returns a short report.
pub fn run_predict(args: &PredictArgs) -> Result<String> {
    if args.embeddings.as_ref() == Some(&args.out) {
        bail!(
            "--embeddings and --out are both {}: give the embeddings a file of their own",
            args.out.display()
        );
    }
    // The output folders before the work, so that a mistyped one costs no scoring.
    for path in std::iter::once(&args.out).chain(&args.embeddings) {
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot create the folder {}", folder.display()))?;
        }
    }
    let device = choose(args.device)?.device;
    let (model, meta) = model_files::classifier(&args.model, &device)?;
    let given = EhrRecord {
        sex: args.sex.as_deref().map(Sex::parse).transpose()?,
        age: args.age,
        view: args.view.as_deref().map(ViewPosition::parse).transpose()?,
        orientation: args
            .orientation
            .as_deref()
            .map(Orientation::parse)
            .transpose()?,
        died_in_hospital: args.mortality,
        in_icu: args.icu,
    };
    let features = meta.config.ehr.as_ref().map(|e| e.feature_set.clone());
    let mut csv = String::from("path");
    for l in &meta.labels {
        let _ = write!(csv, ",{l}");
    }
    if features.is_some() {
        for l in &meta.labels {
            let _ = write!(csv, ",ehr:{l}");
        }
    }
    csv.push('\n');
    let mut embeddings = String::from("path");
    for i in 0..meta.config.vit.dim {
        let _ = write!(embeddings, ",cls_{i}");
    }
    embeddings.push('\n');
    let files = image_files(&args.input)?;
    // A single file has its forward pass cut across the cores instead.
    let pieces = pieces_for(&device, files.len());
    // Each file is decoded and scored on its own (batch 1), the files in parallel across
    // the cores; the rows keep the files' order.
    let score = |file: &PathBuf| -> Result<std::result::Result<Row, String>> {
        let decoded = match std::fs::read(file)
            .context("cannot read the file")
            .and_then(|bytes| {
                // Loaded as the loader loads images for `eval`, so that a file scores alike.
                Ok(decode_downscaled(
                    &bytes,
                    &DecodeLimits::default(),
                    LOAD_SHORTER_SIDE,
                )?)
            }) {
            Ok(decoded) => decoded,
            Err(e) => return Ok(Err(format!("{}: {e:#}", file.display()))),
        };
        let mut ehr = given.clone();
        if let Some(tags) = &decoded.dicom {
            ehr.sex = ehr.sex.or(tags.sex);
            ehr.age = ehr.age.or(tags.age_years);
            ehr.view = ehr.view.or(tags.view);
        }
        let view = eval_view(&decoded.image);
        drop(decoded);
        let images = BatchData::pack(&[&view], &meta.normalization)?.to_tensor(&device);
        let encoded = features.as_ref().and_then(|f| f.encode(&ehr).ok());
        let ehr_tensor = encoded
            .as_ref()
            .map(|v| Tensor::from_data(TensorData::new(v.clone(), [1, v.len()]), &device));
        let out = model.forward_in_pieces(images, ehr_tensor, &pieces)?;
        Ok(Ok(Row {
            image: to_vec(out.image_probs)?,
            fused: out.fused_probs.map(to_vec).transpose()?,
            embedding: match args.embeddings {
                Some(_) => Some(to_vec(out.embedding)?),
                None => None,
            },
        }))
    };
    let rows: Vec<_> = files.par_iter().map(score).collect();
    let mut fused_count = 0;
    let mut unreadable = Vec::new();
    for (file, row) in files.iter().zip(rows) {
        let row = match row? {
            Ok(row) => row,
            Err(why) => {
                unreadable.push(why);
                continue;
            }
        };
        let _ = write!(csv, "{}", file.display());
        for p in row.image {
            let _ = write!(csv, ",{p}");
        }
        if features.is_some() {
            match row.fused {
                Some(f) => {
                    fused_count += 1;
                    for p in f {
                        let _ = write!(csv, ",{p}");
                    }
                }
                None => csv.push_str(&",".repeat(meta.labels.len())),
            }
        }
        csv.push('\n');
        if let Some(e) = row.embedding {
            let _ = write!(embeddings, "{}", file.display());
            for v in e {
                let _ = write!(embeddings, ",{v}");
            }
            embeddings.push('\n');
        }
    }
    let scored = files.len() - unreadable.len();
    let mut report = String::new();
    if scored > 0 {
        write_atomic(&args.out, csv.as_bytes())?;
        report = format!(
            "scored {scored} images ({fused_count} with EHR) into {}\n",
            args.out.display()
        );
        if let Some(path) = &args.embeddings {
            write_atomic(path, embeddings.as_bytes())?;
            let _ = writeln!(report, "their embeddings into {}", path.display());
        }
    }
    if unreadable.is_empty() {
        return Ok(report);
    }
    let list = format!(
        "{} of {} files could not be read:\n  {}",
        unreadable.len(),
        files.len(),
        unreadable.join("\n  ")
    );
    if args.skip_bad_images && scored > 0 {
        return Ok(format!("{report}skipped {list}\n"));
    }
    let hint = if scored > 0 {
        " (the others were scored; --skip-bad-images makes this a success)"
    } else {
        ""
    };
    bail!("{report}{list}{hint}")
}
