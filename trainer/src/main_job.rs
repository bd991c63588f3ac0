//! The main job with nothing to download: `cxr-msn demo` generates the synthetic X-ray world
//! (when it is not there yet) and runs pretrain -> probe -> eval -> embed -> export end to
//! end; `cxr-msn compare` runs vanilla MSN against MSN + EHR on the same world, the paper's
//! experiment in miniature, and reports both with 95% intervals and their paired difference.
//!
//! The defaults are sized for two CPU cores (a few minutes per pretraining epoch); a GPU,
//! more images and more epochs give the method room to show.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::device::DeviceArg;
use crate::downstream::DownstreamArgs;
use crate::metrics::{Interval, bootstrap_macro, paired_macro_auroc_difference};
use crate::pretrain::PretrainArgs;
use crate::probe::{ProbeArgs, ProbeOutcome};
use crate::source::DataArgs;
use crate::{embed, evaluate, export, pretrain, probe, synthetic};

/// The synthetic world: where it lives and, when it is generated, how big it is.
#[derive(Args, Debug, Clone)]
pub struct WorldArgs {
    /// Folder of the synthetic world; generated there when it holds no manifest.csv.
    #[arg(long, default_value = "data/synth")]
    pub synth: PathBuf,
    /// Images in the synthetic world, when it is generated (80% train, 10% each validate
    /// and test).
    #[arg(long, default_value_t = 400)]
    pub count: usize,
}

impl WorldArgs {
    /// The world's manifest.
    pub fn manifest(&self) -> PathBuf {
        self.synth.join("manifest.csv")
    }

    /// The world as a dataset.
    pub fn source(&self) -> DataArgs {
        DataArgs::manifest(self.manifest())
    }

    /// The decode cache beside the world.
    pub fn cache(&self) -> PathBuf {
        self.synth.with_extension("cache")
    }
}

/// How every run is pretrained and probed (sized for two CPU cores by default).
#[derive(Args, Debug, Clone)]
pub struct RecipeArgs {
    /// Recipe: `paper` or `msn`.
    #[arg(long, default_value = "paper")]
    pub profile: String,
    /// ViT size: tiny, tiny-3h, small, base.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Pretraining epochs.
    #[arg(long, default_value_t = 1, value_parser = crate::cli_values::at_least_one)]
    pub epochs: usize,
    /// Images per pretraining batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Focal (96 px) anchor views per image.
    #[arg(long, default_value_t = 10)]
    pub focal_views: usize,
    /// Transformer blocks (default: the preset's 12); fewer only for smoke runs.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Linear-probe epochs (early stopping on validation AUROC, patience 5).
    #[arg(long, default_value_t = 30)]
    pub probe_epochs: usize,
    /// Linear-probe learning rate (higher than the paper's 1e-4, for the small demo set).
    #[arg(long, default_value_t = 1e-3)]
    pub probe_lr: f64,
    /// Bootstrap resamples for the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of pretraining (the probe uses the authors' 24).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Loader threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where to train: a hardware GPU through wgpu when there is one (auto), the CPU, or the
    /// wgpu adapter whatever it is (gpu).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
}

impl RecipeArgs {
    /// The settings of one pretraining run of `method` (with EHR set `ehr` or `none`).
    pub fn pretrain_args(
        &self,
        source: DataArgs,
        method: &str,
        ehr: &str,
        out: &Path,
        cache: Option<PathBuf>,
    ) -> PretrainArgs {
        PretrainArgs {
            source,
            out: out.to_path_buf(),
            profile: self.profile.clone(),
            method: method.into(),
            preset: self.preset.clone(),
            ehr: ehr.to_string(),
            channels: 3,
            epochs: Some(self.epochs),
            batch_size: Some(self.batch_size),
            focal_views: Some(self.focal_views),
            depth: self.depth,
            device: self.device,
            seed: self.seed,
            threads: self.threads,
            cache,
            config: None,
            print_config: false,
            init: None,
            stop_after: None,
            save_every_steps: None,
            save_every_minutes: 15.0,
        }
    }

    /// The downstream settings of a linear probe, `epochs` long at `lr` (the authors'
    /// patience 5, batch 64 and seed 24).
    pub fn downstream(&self, epochs: usize, lr: f64) -> DownstreamArgs {
        DownstreamArgs {
            epochs,
            patience: 5,
            lr,
            batch_size: 64,
            train_fraction: 1.0,
            seed: 24,
            bootstrap: self.bootstrap,
            threads: self.threads,
            device: self.device,
        }
    }

    /// The settings of the linear probe of the run in `run` (into `run/probe`).
    pub fn probe_args(&self, source: DataArgs, run: &Path) -> ProbeArgs {
        ProbeArgs {
            source,
            checkpoint: run.join("checkpoint.safetensors"),
            out: run.join("probe"),
            train: self.downstream(self.probe_epochs, self.probe_lr),
        }
    }
}

/// The settings of `cxr-msn demo` and `cxr-msn compare`.
#[derive(Args, Debug, Clone)]
pub struct MainJobArgs {
    /// Run folder (default: runs/demo for `demo`, runs/compare for `compare`). Running the
    /// same command again continues its pretraining where it stopped.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub world: WorldArgs,
    /// EHR feature set of the multimodal model (see `cxr-msn info`); `none` for vanilla MSN
    /// (`demo` only).
    #[arg(long, default_value = "demographic")]
    pub ehr: String,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Also write the browser model with 16-bit weights (model-f16.safetensors).
    #[arg(long)]
    pub f16: bool,
}

/// Makes the synthetic world unless it is there.
pub fn ensure_world(world: &WorldArgs, threads: usize, log: &mut dyn Write) -> Result<()> {
    if world.manifest().exists() {
        writeln!(
            log,
            "== synthetic world: using {} (delete the folder to make a new one)",
            world.manifest().display()
        )?;
        return Ok(());
    }
    writeln!(
        log,
        "== synthetic world: generating {} images into {}",
        world.count,
        world.synth.display()
    )?;
    let started = Instant::now();
    let cfg = synthetic::SynthConfig {
        count: world.count,
        threads,
        ..synthetic::SynthConfig::default()
    };
    synthetic::generate(&world.synth, &cfg)?;
    writeln!(log, "   done in {:.1} s", started.elapsed().as_secs_f64())?;
    Ok(())
}

/// Pretrains into `run` and probes the result.
fn pretrain_and_probe(
    args: &MainJobArgs,
    ehr: &str,
    run: &Path,
    log: &mut dyn Write,
) -> Result<ProbeOutcome> {
    writeln!(
        log,
        "== pretrain: {} MSN, ViT-{}, EHR {ehr}, {} epoch(s) -> {}",
        args.recipe.profile,
        args.recipe.preset,
        args.recipe.epochs,
        run.display()
    )?;
    pretrain::run(
        &args.recipe.pretrain_args(
            args.world.source(),
            "msn",
            ehr,
            run,
            Some(args.world.cache()),
        ),
        log,
    )
    .with_context(|| format!("pretraining into {}", run.display()))?;
    stop_if_asked()?;
    writeln!(log, "== linear probe -> {}", run.join("probe").display())?;
    let outcome = probe::run(&args.recipe.probe_args(args.world.source(), run))?;
    write!(log, "{}", outcome.log)?;
    Ok(outcome)
}

/// Stops between stages after Ctrl-C (pretraining itself stops after its current step).
pub fn stop_if_asked() -> Result<()> {
    if crate::interrupt::requested() {
        bail!("stopped on request; run the same command to continue");
    }
    Ok(())
}

/// `cxr-msn demo`: the whole pipeline on the synthetic world (or continues it).
pub fn run_demo(args: &MainJobArgs, log: &mut dyn Write) -> Result<()> {
    let started = Instant::now();
    let run = args.out.clone().unwrap_or_else(|| "runs/demo".into());
    ensure_world(&args.world, args.recipe.threads, log)?;
    pretrain_and_probe(args, &args.ehr, &run, log)?;
    stop_if_asked()?;
    let classifier = run.join("probe/classifier.safetensors");
    writeln!(
        log,
        "== evaluate on the test split -> {}",
        run.join("eval").display()
    )?;
    let report = evaluate::run_eval(&evaluate::EvalArgs {
        source: args.world.source(),
        model: classifier.clone(),
        split: "test".into(),
        out: Some(run.join("eval")),
        bootstrap: args.recipe.bootstrap,
        seed: 24,
        threads: args.recipe.threads,
        device: args.recipe.device,
    })?;
    write!(log, "{report}")?;
    stop_if_asked()?;
    writeln!(log, "== embedding map -> {}", run.join("embed").display())?;
    let report = embed::run(&embed::EmbedArgs {
        source: args.world.source(),
        model: classifier.clone(),
        split: "test".into(),
        out: run.join("embed"),
        threads: args.recipe.threads,
        device: args.recipe.device,
    })?;
    write!(log, "{report}")?;
    let mut exports = vec![(run.join("model.safetensors"), false)];
    if args.f16 {
        exports.push((run.join("model-f16.safetensors"), true));
    }
    for (file, f16) in exports {
        writeln!(log, "== export for the browser -> {}", file.display())?;
        let report = export::run(&export::ExportArgs {
            source: args.world.source(),
            model: classifier.clone(),
            out: file,
            split: "validate".into(),
            threads: args.recipe.threads,
            // The probe's encoder is this pretraining's: the page's learn mode shows its
            // prototypes.
            prototypes_from: Some(run.join("checkpoint.safetensors")),
            f16,
            device: args.recipe.device,
        })?;
        write!(log, "{report}")?;
    }
    let onnx = run.join("model.onnx");
    writeln!(log, "== export for ONNX Runtime -> {}", onnx.display())?;
    let report = crate::weights::onnx::run(&crate::weights::onnx::ExportOnnxArgs {
        model: run.join("model.safetensors"),
        out: onnx,
        no_ehr: false,
        f16: false,
    })?;
    write!(log, "{report}")?;
    writeln!(
        log,
        "\nDone in {}. Results in {}:\n\
         \x20 pretraining   config.json, metrics.jsonl, epochs.csv, loss.svg, checkpoint.safetensors\n\
         \x20 linear probe  probe/metrics.json, probe/metrics.csv, probe/roc.svg, probe/classifier.safetensors\n\
         \x20 test scores   eval/metrics.json, eval/metrics.csv, eval/roc.svg\n\
         \x20 embedding     embed/embedding_map.svg, embed/clusters.json, embed/embedding_map.json (the page's map)\n\
         \x20 browser model {}\n\
         \x20 ONNX model    {} (for ONNX Runtime and other ONNX tools)",
        crate::progress::duration(started.elapsed().as_secs_f64()),
        run.display(),
        run.join("model.safetensors").display(),
        run.join("model.onnx").display()
    )?;
    Ok(())
}

/// `cxr-msn compare`: vanilla MSN against MSN + EHR, trained alike on the same world.
pub fn run_compare(args: &MainJobArgs, log: &mut dyn Write) -> Result<()> {
    if args.ehr == "none" {
        bail!("--ehr must name a feature set to compare with vanilla MSN (e.g. demographic)");
    }
    let started = Instant::now();
    let root = args.out.clone().unwrap_or_else(|| "runs/compare".into());
    ensure_world(&args.world, args.recipe.threads, log)?;
    let vanilla = pretrain_and_probe(args, "none", &root.join("vanilla"), log)?;
    let arm_name = format!("ehr-{}", args.ehr);
    let multimodal = pretrain_and_probe(args, &args.ehr, &root.join(&arm_name), log)?;
    if vanilla.test_targets != multimodal.test_targets {
        bail!(
            "the two runs were tested on different images; use a dataset where every image has the EHR fields"
        );
    }
    let labels = vanilla.label_names.len();
    let targets = &vanilla.test_targets;
    let head = |o: &ProbeOutcome, name: &str| {
        o.test_scores
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone())
    };
    let (a, b) = (
        head(&vanilla, "image").context("the image head")?,
        head(&multimodal, "image").context("the image head")?,
    );
    let mut rows = vec![
        ("vanilla MSN, image head".to_string(), a.clone()),
        (format!("MSN + EHR ({}), image head", args.ehr), b.clone()),
    ];
    if let Some(f) = head(&multimodal, "image+ehr") {
        rows.push((format!("MSN + EHR ({}), image + EHR head", args.ehr), f));
    }
    let n = targets.len() / labels.max(1);
    let mut text = format!(
        "\nVanilla MSN vs MSN + EHR on {n} test images of {} ({} epoch(s) each):\n",
        args.world.manifest().display(),
        args.recipe.epochs
    );
    let mut json = serde_json::Map::new();
    for (name, scores) in &rows {
        let (auc, ap) = bootstrap_macro(scores, targets, labels, args.recipe.bootstrap, 24);
        let _ = writeln!(
            text,
            "  {name:44} macro AUROC {}  macro AUPRC {}",
            Interval::describe(auc),
            Interval::describe(ap)
        );
        json.insert(
            name.clone(),
            serde_json::json!({
                "macro_auroc": auc.map(|i| [i.value, i.low, i.high]),
                "macro_auprc": ap.map(|i| [i.value, i.low, i.high]),
            }),
        );
    }
    let diff = paired_macro_auroc_difference(&a, &b, targets, labels, args.recipe.bootstrap, 24);
    let _ = writeln!(
        text,
        "  image head, MSN + EHR minus vanilla: {} (paired bootstrap; an interval holding 0 \
         means no difference is shown at this size)",
        Interval::describe(diff)
    );
    json.insert(
        "image_head_difference".into(),
        serde_json::json!(diff.map(|i| [i.value, i.low, i.high])),
    );
    let file = root.join("comparison.json");
    crate::files::write_atomic(&file, serde_json::to_string_pretty(&json)?.as_bytes())?;
    write!(log, "{text}")?;
    writeln!(
        log,
        "Done in {}; wrote {} (runs in {} and {})",
        crate::progress::duration(started.elapsed().as_secs_f64()),
        file.display(),
        root.join("vanilla").display(),
        root.join(arm_name).display()
    )?;
    Ok(())
}
