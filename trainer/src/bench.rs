//! `cxr-msn bench`: throughput measurements, printed as ratios against a baseline measured
//! in the same run (see BENCHMARKS.md for recorded results).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use cxr_msn::config::{Normalization, ViewConfig};
use cxr_msn::decode::DecodeLimits;

use crate::images::file_decoder;
use crate::loader::{Loader, LoaderConfig, Views};
use crate::source::DataArgs;

/// What to measure.
#[derive(Subcommand, Debug, Clone)]
pub enum BenchTarget {
    /// The data pipeline: decode + all MSN views per image, on one thread, on all cores,
    /// and through the preprocessed cache (cold, then warm).
    ///
    /// Example: cxr-msn bench loader --data data/synth/manifest.csv --images 512
    Loader(LoaderBench),
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

    let mut rows = Vec::new();
    for (name, threads, cached) in [
        ("1 thread, decode every time", 1, false),
        ("all cores, decode every time", cores, false),
    ] {
        let loader = make(threads, cached.then(|| cache.clone()))?;
        time_epochs(&loader, 1)?; // warm-up
        rows.push((
            name.to_string(),
            median(time_epochs(&loader, args.repeats)?),
        ));
    }
    let loader = make(cores, Some(cache.clone()))?;
    let cold = time_epochs(&loader, 1)?;
    rows.push(("all cores, cache cold (writing)".into(), median(cold)));
    rows.push((
        "all cores, cache warm".into(),
        median(time_epochs(&loader, args.repeats)?),
    ));

    let base = rows[0].1.0;
    let mut out = format!(
        "loader: {n} images x (2 at 224 px + {} at 96 px) per epoch, batch {}, {cores} cores\n",
        args.focal_views, args.batch_size
    );
    let _ = writeln!(
        out,
        "{:36} {:>10} {:>12} {:>18} {:>8}",
        "setting", "images/s", "s per epoch", "(min-max)", "speed-up"
    );
    for (name, (med, lo, hi)) in rows {
        let _ = writeln!(
            out,
            "{name:36} {:>10.1} {med:>12.3} {:>18} {:>7.2}x",
            n as f64 / med,
            format!("({lo:.3}-{hi:.3})"),
            base / med
        );
    }
    Ok(out)
}
