//! `cxr-msn bench`: throughput measurements, printed as ratios against a baseline measured
//! in the same run (see BENCHMARKS.md for recorded results).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use cxr_msn::config::{Normalization, ViewConfig};
use cxr_msn::decode::DecodeLimits;

use burn::tensor::{Device, Distribution, Tensor};
use cxr_msn::config::{Method, MsnConfig, Profile, VitConfig, VitPreset};
use cxr_msn::ehr::FeatureSet;
use cxr_msn::msn::{AnchorGroup, MsnBatch};
use cxr_msn::pixels::Pixels;
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;

use crate::cpu_parallel::encode;
use crate::device::{DeviceArg, choose};
use crate::files::write_atomic;
use crate::images::file_decoder;
use crate::loader::{Loader, LoaderConfig, Views};
use crate::pretrain::{StepSchedule, train_step};
use crate::source::DataArgs;
use crate::weights::onnx::onnx_model;
use cxr_msn::checkpoint::ModelMeta;
use cxr_msn::pretrained::Pretrained;

/// What to measure.
#[derive(Subcommand, Debug, Clone)]
pub enum BenchTarget {
    /// The data pipeline: decode + all MSN views per image, on one thread, on all cores,
    /// and through the preprocessed cache (cold, then warm).
    ///
    /// Example: cxr-msn bench loader --data data/synth/manifest.csv --images 512
    Loader(LoaderBench),
    /// One pretraining step (masks, forward, loss, backward, AdamW, EMA) on random views,
    /// timed over repetitions after a warm-up; `scripts/bench` sets PyTorch beside it.
    ///
    /// Example: cxr-msn bench step --preset tiny --batch-size 8 --ehr demographic
    Step(StepBench),
    /// Encoder inference ([CLS] features of 224 px images) without gradients.
    ///
    /// Example: cxr-msn bench infer --preset small --batch-size 32
    Infer(InferBench),
}

/// Settings of the training-step benchmark.
#[derive(Args, Debug, Clone)]
pub struct StepBench {
    /// ViT size: tiny, tiny-3h, small, base.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Recipe: `paper` or `msn`.
    #[arg(long, default_value = "paper")]
    profile: String,
    /// EHR feature set, or `none` for vanilla MSN (MSN only: the baselines are image-only).
    #[arg(long, default_value = "demographic")]
    ehr: String,
    /// Pretraining method: `msn`, or the baselines `dino` and `mae` (with their own views:
    /// DINO's local views are the focal views, MAE takes one view per image).
    #[arg(long, default_value = "msn")]
    method: String,
    /// Images per batch (each: a 224 px target, a 224 px anchor and the focal views).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Focal views per image.
    #[arg(long, default_value_t = 10)]
    focal_views: usize,
    /// Timed repetitions after the warm-up (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[command(flatten)]
    pub run: RunSettings,
}

/// How a timed benchmark runs and reports.
#[derive(Args, Debug, Clone)]
pub struct RunSettings {
    /// Untimed runs first (the first compiles kernels on a GPU).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Where it runs.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Print one JSON object instead of a line (for scripts/bench).
    #[arg(long)]
    pub json: bool,
}

/// Settings of the inference benchmark.
#[derive(Args, Debug, Clone)]
pub struct InferBench {
    /// ViT size: tiny, tiny-3h, small, base.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Timed repetitions after the warm-up (the median is reported).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Also write the timed encoder (its architecture and random weights) as an ONNX graph,
    /// as `export-onnx` writes it: scripts/bench times the same model in ONNX Runtime.
    #[arg(long)]
    onnx: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunSettings,
}

/// Median, minimum and maximum of timings, and the process's peak memory so far.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Timing {
    /// What was measured.
    pub what: String,
    /// The device, in words.
    pub device: String,
    /// Median seconds.
    pub median_s: f64,
    /// Fastest repetition.
    pub min_s: f64,
    /// Slowest repetition.
    pub max_s: f64,
    /// Repetitions timed.
    pub repeats: usize,
    /// Peak resident memory of the process in MiB (Linux `VmHWM`; `None` elsewhere).
    pub peak_rss_mib: Option<f64>,
}

impl Timing {
    fn new(what: String, device: String, times: Vec<f64>) -> Self {
        let repeats = times.len();
        let (median_s, min_s, max_s) = median(times);
        Self {
            what,
            device,
            median_s,
            min_s,
            max_s,
            repeats,
            peak_rss_mib: peak_rss_mib(),
        }
    }

    /// The JSON line or a one-line summary.
    pub fn report(&self, json: bool) -> String {
        if json {
            return serde_json::to_string(self).unwrap_or_default() + "\n";
        }
        format!(
            "{}: {:.4} s median of {} ({:.4}-{:.4}) on {}; peak memory {}\n",
            self.what,
            self.median_s,
            self.repeats,
            self.min_s,
            self.max_s,
            self.device,
            self.peak_rss_mib
                .map_or("unknown".to_string(), |m| format!("{m:.0} MiB"))
        )
    }
}

/// Peak resident set size of this process, from `/proc/self/status` (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Brings the peak resident set ([`peak_rss_mib`]) down to the current one (Linux 4.0 and
/// later), so that the next reading is the peak of what runs in between. Returns whether
/// it could; elsewhere the reading stays the process's peak since it started.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Random grey images `[B, 1, S, S]` on `device`, uniform in [0, 1), with ImageNet's
/// normalisation over `channels`: what the loader hands the encoder.
fn random_grey(b: usize, size: usize, channels: usize, device: &Device) -> Pixels {
    Pixels::Grey {
        grey: Tensor::random([b, 1, size, size], Distribution::Uniform(0.0, 1.0), device),
        normalization: Normalization::imagenet(channels),
    }
}

/// Times pretraining steps on random views.
pub fn run_step(args: &StepBench) -> Result<Timing> {
    let profile = Profile::from_name(&args.profile)?;
    let preset = VitPreset::from_name(&args.preset)?;
    let method = Method::from_name(&args.method)?;
    if method == Method::Random {
        bail!("--method random trains nothing; choose msn, dino or mae");
    }
    let mut config = MsnConfig::for_profile(profile, preset).with_method(method);
    let ehr = if method == Method::Msn && args.ehr != "none" {
        config = config.with_ehr(FeatureSet::from_name(&args.ehr)?);
        args.ehr.as_str()
    } else {
        "none"
    };
    config.optim.batch_size = args.batch_size;
    if method != Method::Mae {
        config.views.focal_views = args.focal_views;
    }
    config.validate()?;
    let chosen = choose(args.run.device)?;
    let device = chosen.device.autodiff();
    device.seed(0);
    let mut model = Pretrained::init(&config, &device)?;
    let mut optim = crate::fused_adamw::adamw();
    let (b, c, v) = (args.batch_size, config.vit.channels, &config.views);
    let ehr_in = config.ehr.as_ref().map(|e| e.feature_set.width());
    // MAE takes the target view only.
    let anchor_views = if method == Method::Mae { 0 } else { 1 };
    let batch = || MsnBatch {
        target: random_grey(b, v.large_size, c, &device),
        anchors: [(anchor_views, v.large_size), (v.focal_views, v.focal_size)]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, size)| AnchorGroup {
                images: random_grey(n * b, size, c, &device),
            })
            .collect(),
        ehr: ehr_in.map(|n| Tensor::random([b, n], Distribution::Uniform(0.0, 1.0), &device)),
    };
    let schedule = StepSchedule {
        lr: config.optim.peak_lr,
        weight_decay: config.optim.weight_decay_start,
        momentum: config.ema.base_momentum,
        epoch: 0,
    };
    let mut rng = StdRng::seed_from_u64(0);
    let mut times = Vec::with_capacity(args.repeats);
    for i in 0..args.run.warmup + args.repeats {
        let batch = batch();
        let start = Instant::now();
        // The step reads the loss back, so the time includes the device's work.
        model = match train_step(model, &mut optim, batch, &config, schedule, &mut rng)? {
            Ok(done) => done.model,
            Err(d) => bail!("the benchmark's step diverged: {d:?}"),
        };
        if i >= args.run.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let what = format!(
        "{} pretraining step, ViT-{} {} profile, EHR {ehr}, batch {b} x ({} x {} px + {} x {} px)",
        method.name(),
        args.preset,
        args.profile,
        1 + anchor_views,
        v.large_size,
        v.focal_views,
        v.focal_size
    );
    Ok(Timing::new(what, chosen.description, times))
}

/// Times encoder inference.
pub fn run_infer(args: &InferBench) -> Result<Timing> {
    let preset = VitPreset::from_name(&args.preset)?;
    let vit = VitConfig::preset(preset, 3);
    let chosen = choose(args.run.device)?;
    let device = chosen.device;
    device.seed(0);
    let encoder = vit.init(&device);
    if let Some(path) = &args.onnx {
        let mut meta = ModelMeta::pretraining(MsnConfig::for_profile(Profile::Paper, preset));
        meta.config.vit = vit.clone();
        // The normalisation `random_grey` gives the images.
        meta.normalization = Normalization::imagenet(vit.channels);
        let model = onnx_model(&encoder, None, &meta, false, false)?;
        write_atomic(path, &model.encode())?;
    }
    let size = vit.image_size;
    let mut times = Vec::with_capacity(args.repeats);
    for i in 0..args.run.warmup + args.repeats {
        let images = random_grey(args.batch_size, size, 3, &device);
        let start = Instant::now();
        let features = encode(&encoder, images);
        // Reading the result back waits for the device.
        features
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("cannot read the features back: {e:?}"))?;
        if i >= args.run.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let what = format!(
        "inference, ViT-{} at {size} px, batch {}",
        args.preset, args.batch_size
    );
    Ok(Timing::new(what, chosen.description, times))
}

/// Settings of the loader benchmark.
#[derive(Args, Debug, Clone)]
pub struct LoaderBench {
    #[command(flatten)]
    source: DataArgs,
    /// Images per measured epoch (the first N of the dataset).
    #[arg(long = "count", default_value_t = 256)]
    count: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Focal views per image (M = 1 + this).
    #[arg(long, default_value_t = 10)]
    focal_views: usize,
    /// Timed repetitions after one warm-up (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Cache folder for the cached runs (default: a temporary folder, removed afterwards).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Print a JSON array of the settings' timings instead of the table (for scripts/bench).
    #[arg(long)]
    pub json: bool,
}

/// Seconds of each repetition of `epoch`.
fn time_epochs(loader: &Loader, runs: usize) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(runs);
    for epoch in 0..runs {
        let start = Instant::now();
        for batch in loader.epoch(epoch) {
            batch?;
        }
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Runs the loader benchmark and returns the report.
pub fn run_loader(args: &LoaderBench) -> Result<String> {
    let data = args.source.load()?;
    let items: Vec<_> = data
        .items(None, None, &args.source.policy())?
        .into_iter()
        .take(args.count)
        .collect();
    if items.len() < args.batch_size {
        bail!(
            "{} images are fewer than one batch of {}",
            items.len(),
            args.batch_size
        );
    }
    let n = items.len() / args.batch_size * args.batch_size;
    let views = Views::Msn(ViewConfig {
        focal_views: args.focal_views,
        ..ViewConfig::default()
    });
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let temp = tempfile::tempdir()?;
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(|| temp.path().join("cache"));
    let make = |threads: usize, cache_dir: Option<PathBuf>| {
        let mut cfg = LoaderConfig::new(Normalization::imagenet(3));
        cfg.batch_size = args.batch_size;
        cfg.threads = threads;
        cfg.cache_dir = cache_dir;
        Loader::new(
            items.clone(),
            views.clone(),
            cfg,
            file_decoder(DecodeLimits::default()),
        )
    };

    // (setting, (median, min, max) seconds per epoch, the peak resident set while it ran).
    let mut rows = Vec::new();
    let resets = reset_peak_rss();
    for (name, threads) in [
        ("1 thread, decode every time", 1),
        ("all cores, decode every time", cores),
    ] {
        reset_peak_rss();
        let loader = make(threads, None)?;
        time_epochs(&loader, 1)?; // warm-up
        let times = median(time_epochs(&loader, args.repeats)?);
        rows.push((name.to_string(), times, peak_rss_mib()));
    }
    reset_peak_rss();
    let loader = make(cores, Some(cache.clone()))?;
    let cold = median(time_epochs(&loader, 1)?);
    rows.push((
        "all cores, cache cold (writing)".into(),
        cold,
        peak_rss_mib(),
    ));
    reset_peak_rss();
    let warm = median(time_epochs(&loader, args.repeats)?);
    rows.push(("all cores, cache warm".into(), warm, peak_rss_mib()));

    if args.json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, (med, lo, hi), peak)| {
                serde_json::json!({
                    "what": format!("loader, {name}"),
                    "images": n,
                    "median_s": med,
                    "min_s": lo,
                    "max_s": hi,
                    "repeats": args.repeats,
                    "device": format!("cxr-msn loader, {cores} cores"),
                    "peak_rss_mib": peak,
                    "peak_rss_per_setting": resets,
                })
            })
            .collect();
        return Ok(serde_json::to_string(&rows)? + "\n");
    }
    let base = rows[0].1.0;
    let mut out = format!(
        "loader: {n} images x (2 at 224 px + {} at 96 px) per epoch, batch {}, {cores} cores\n",
        args.focal_views, args.batch_size
    );
    let _ = writeln!(
        out,
        "{:36} {:>10} {:>12} {:>18} {:>8} {:>9}",
        "setting", "images/s", "s per epoch", "(min-max)", "speed-up", "peak MiB"
    );
    for (name, (med, lo, hi), peak) in rows {
        let peak = peak.map_or_else(|| "?".into(), |p| format!("{p:.0}"));
        let _ = writeln!(
            out,
            "{name:36} {:>10.1} {med:>12.3} {:>18} {:>7.2}x {peak:>9}",
            n as f64 / med,
            format!("({lo:.3}-{hi:.3})"),
            base / med
        );
    }
    if !resets {
        out.push_str(
            "peak MiB: the process's peak since it started (no /proc/self/clear_refs here)\n",
        );
    }
    Ok(out)
}
