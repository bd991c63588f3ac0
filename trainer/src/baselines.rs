//! `cxr-msn baselines`: the paper's comparison, re-runnable. Every method (random
//! initialisation, MAE, DINO, vanilla MSN) and MSN with each EHR feature group is
//! pretrained with the same encoder, data, views, optimiser and schedules, then evaluated
//! the same way, by linear probe and by fine-tuning, on the same test images. The result
//! is one table of macro AUROC with 95% intervals (`comparison.csv`, `comparison.md`) and
//! a plot (`comparison.svg`).
//!
//! Each arm lives in its own run folder under `--out`. Running the command again continues:
//! pretraining resumes where it stopped (exactly), and a probe or fine-tune whose
//! `metrics.json` exists is kept, so a long grid survives interruptions and can be
//! extended (add a method or an EHR set and run again).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use cxr_msn::config::Method;
use cxr_msn::ehr::FeatureSet;
use serde::Serialize;

use crate::downstream::DownstreamArgs;
use crate::files::write_atomic;
use crate::finetune::{self, FinetuneArgs};
use crate::main_job::{RecipeArgs, WorldArgs, ensure_world, stop_if_asked};
use crate::metrics::paired_macro_auroc_difference;
use crate::plot::{IntervalRow, interval_chart};
use crate::source::DataArgs;
use crate::{pretrain, probe};

/// The `--data` value that stands for the synthetic world (the default).
pub const SYNTHETIC: &str = "synthetic";

/// The settings of `cxr-msn baselines`.
#[derive(Args, Debug, Clone)]
#[command(mut_arg("data", |a| {
    let help = "The dataset to compare on, with --format (a manifest CSV, the MIMIC-CXR-JPG folder, \
        the CheXpert or NIH CSV); `synthetic` uses the synthetic world of --synth";
    a.required(false)
        .default_value(SYNTHETIC)
        .help(help)
        .long_help(help)
}))]
pub struct BaselinesArgs {
    /// Folder of the whole comparison (one run folder per arm). Running the same command
    /// again continues it.
    #[arg(long, default_value = "runs/baselines")]
    pub out: PathBuf,
    /// The dataset to compare on (`--data` with --format and the other dataset flags of
    /// `pretrain`); by default (`--data synthetic`) the synthetic world of --synth.
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub world: WorldArgs,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Methods, in table order: any of random, mae, dino, msn.
    #[arg(long, value_delimiter = ',', default_value = "random,mae,dino,msn")]
    pub methods: Vec<String>,
    /// EHR feature sets, each an extra MSN arm (see `cxr-msn info`); `every` for all 23 of
    /// the paper's sets; `none` for no EHR arm.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "demographic,scan,inpatient"
    )]
    pub ehr_sets: Vec<String>,
    /// Fine-tuning epochs of each arm (early stopping on validation AUROC, patience 5);
    /// 0 leaves fine-tuning out.
    #[arg(long, default_value_t = 3)]
    pub finetune_epochs: usize,
    /// Fine-tuning learning rate (the authors' 1e-4).
    #[arg(long, default_value_t = 1e-4)]
    pub finetune_lr: f64,
    /// Fraction of the training images the probe and the fine-tune see (the low-data
    /// regime: 0.05, 0.25, ...); each fraction has its own result folders, so several can
    /// live in one comparison folder.
    #[arg(long, default_value_t = 1.0)]
    pub train_fraction: f64,
    /// Preprocessed-image cache folder (default: beside the synthetic world; none for a
    /// dataset).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// One pretraining run of the grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Arm {
    /// Folder name and table label.
    pub name: String,
    /// The pretraining method.
    pub method: Method,
    /// MSN's EHR feature set, if any.
    pub ehr: Option<String>,
}

/// The arms of a comparison: every method in the order given, then MSN with each EHR set.
pub fn arms(methods: &[String], ehr_sets: &[String]) -> Result<Vec<Arm>> {
    let mut out = Vec::new();
    for name in methods.iter().map(|m| m.trim()).filter(|m| !m.is_empty()) {
        let method = Method::from_name(name)?;
        out.push(Arm {
            name: method.name().into(),
            method,
            ehr: None,
        });
    }
    let sets: Vec<&str> = ehr_sets
        .iter()
        .map(|s| s.trim())
        .flat_map(|s| match s {
            "every" => FeatureSet::NAMED.to_vec(),
            other => vec![other],
        })
        .filter(|s| !s.is_empty() && *s != "none")
        .collect();
    for set in sets {
        FeatureSet::from_name(set).with_context(|| format!("--ehr-sets {set}"))?;
        out.push(Arm {
            name: format!("msn-ehr-{set}"),
            method: Method::Msn,
            ehr: Some(set.to_string()),
        });
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = out.iter().find(|a| !seen.insert(a.name.clone())) {
        bail!("{} is listed twice", dup.name);
    }
    if out.is_empty() {
        bail!("nothing to compare: give --methods and/or --ehr-sets");
    }
    Ok(out)
}

impl Arm {
    /// The label of a row of the table.
    pub fn label(&self) -> String {
        match (&self.ehr, self.method) {
            (Some(set), _) => format!("MSN + EHR ({set})"),
            (None, Method::Msn) => "vanilla MSN".into(),
            (None, Method::Dino) => "DINO".into(),
            (None, Method::Mae) => "MAE".into(),
            (None, Method::Random) => "random init".into(),
        }
    }
}

/// A macro score with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    /// On all test rows.
    pub value: f64,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

/// One head of one evaluation of one arm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultRow {
    /// The arm's folder name.
    pub arm: String,
    /// `probe` or `finetune`.
    pub evaluation: String,
    /// `image` or `image+ehr`.
    pub head: String,
    /// Macro AUROC.
    pub macro_auroc: Option<Scored>,
    /// Macro AUPRC.
    pub macro_auprc: Option<Scored>,
    /// Macro AUROC minus vanilla MSN's on the same test images, with a paired bootstrap
    /// interval (linear probe, image head; `None` elsewhere or when not comparable).
    pub minus_msn: Option<Scored>,
}

/// The macro scores of each head in a `metrics.json` of `probe` or `finetune`.
pub fn read_metrics(path: &Path) -> Result<BTreeMap<String, [Option<Scored>; 2]>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is malformed", path.display()))?;
    let heads = json
        .get("heads")
        .and_then(|h| h.as_object())
        .with_context(|| format!("{} has no heads", path.display()))?;
    let scored = |v: &serde_json::Value| -> Option<Scored> {
        let ci = v.get("ci95")?.as_array()?;
        Some(Scored {
            value: v.get("value")?.as_f64()?,
            low: ci.first()?.as_f64()?,
            high: ci.get(1)?.as_f64()?,
        })
    };
    Ok(heads
        .iter()
        .map(|(name, h)| {
            let get = |k: &str| h.get(k).and_then(scored);
            (name.clone(), [get("macro_auroc"), get("macro_auprc")])
        })
        .collect())
}

/// `0.712 [0.650, 0.771]`, or `n/a`.
fn cell(s: Option<Scored>) -> String {
    s.map_or("n/a".into(), |s| {
        format!("{:.3} [{:.3}, {:.3}]", s.value, s.low, s.high)
    })
}

/// The comparison as CSV: one line per arm, evaluation and head.
pub fn comparison_csv(arms: &[Arm], rows: &[ResultRow]) -> String {
    let mut csv = String::from(
        "arm,method,ehr,evaluation,head,macro_auroc,auroc_low,auroc_high,macro_auprc,\
         auprc_low,auprc_high,auroc_minus_msn,minus_msn_low,minus_msn_high\n",
    );
    let num = |s: Option<Scored>| {
        s.map_or(",,".to_string(), |s| {
            format!("{},{},{}", s.value, s.low, s.high)
        })
    };
    for r in rows {
        let Some(arm) = arms.iter().find(|a| a.name == r.arm) else {
            continue;
        };
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{}",
            r.arm,
            arm.method.name(),
            arm.ehr.as_deref().unwrap_or(""),
            r.evaluation,
            r.head,
            num(r.macro_auroc),
            num(r.macro_auprc),
            num(r.minus_msn)
        );
    }
    csv
}

/// The comparison as a Markdown table: macro AUROC [95% CI] of the image head by linear
/// probe (and its paired difference from vanilla MSN) and by fine-tuning, then the
/// image + EHR head of the multimodal arms.
pub fn comparison_markdown(arms: &[Arm], rows: &[ResultRow], finetuned: bool) -> String {
    let find = |arm: &str, evaluation: &str, head: &str| {
        rows.iter()
            .find(|r| r.arm == arm && r.evaluation == evaluation && r.head == head)
    };
    let mut md = String::from(
        "| pretraining | head | linear probe macro AUROC [95% CI] | probe minus vanilla MSN \
         [paired 95% CI] |",
    );
    md += if finetuned {
        " fine-tune macro AUROC [95% CI] |\n|---|---|---|---|---|\n"
    } else {
        "\n|---|---|---|---|\n"
    };
    for arm in arms {
        for head in ["image", "image+ehr"] {
            let has = rows.iter().any(|r| r.arm == arm.name && r.head == head);
            if !has {
                continue;
            }
            let probe = find(&arm.name, "probe", head);
            let _ = write!(
                md,
                "| {} | {} | {} | {} |",
                arm.label(),
                if head == "image" {
                    "image"
                } else {
                    "image + EHR"
                },
                cell(probe.and_then(|r| r.macro_auroc)),
                match probe.and_then(|r| r.minus_msn) {
                    Some(d) => format!("{:+.3} [{:+.3}, {:+.3}]", d.value, d.low, d.high),
                    None => "".into(),
                }
            );
            if finetuned {
                let finetune = find(&arm.name, "finetune", head);
                let _ = write!(md, " {} |", cell(finetune.and_then(|r| r.macro_auroc)));
            }
            md.push('\n');
        }
    }
    md
}

/// Runs (or continues) the comparison; returns the report to print.
pub fn run(args: &BaselinesArgs, log: &mut dyn Write) -> Result<String> {
    let started = Instant::now();
    let arms = arms(&args.methods, &args.ehr_sets)?;
    if !(args.train_fraction > 0.0 && args.train_fraction <= 1.0) {
        bail!(
            "--train-fraction must be in (0, 1], got {}",
            args.train_fraction
        );
    }
    // `probe` and `finetune` for all the training images, `probe-25%` for a quarter.
    let suffix = if args.train_fraction == 1.0 {
        String::new()
    } else {
        format!("-{}%", percent(args.train_fraction))
    };
    let (source, cache) = if args.data.data.as_os_str() == SYNTHETIC {
        ensure_world(&args.world, args.recipe.threads, log)?;
        (
            args.world.source(),
            Some(args.cache.clone().unwrap_or_else(|| args.world.cache())),
        )
    } else {
        (args.data.clone(), args.cache.clone())
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    // What the kept results depend on: a second run must not mix in other settings.
    let recipe = serde_json::json!({
        "data": source.data,
        "format": format!("{:?}", source.format),
        "profile": args.recipe.profile,
        "preset": args.recipe.preset,
        "depth": args.recipe.depth,
        "epochs": args.recipe.epochs,
        "batch_size": args.recipe.batch_size,
        "focal_views": args.recipe.focal_views,
        "seed": args.recipe.seed,
        "probe_epochs": args.recipe.probe_epochs,
        "probe_lr": args.recipe.probe_lr,
        "finetune_epochs": args.finetune_epochs,
        "finetune_lr": args.finetune_lr,
        "train_fraction": args.train_fraction,
        "bootstrap": args.recipe.bootstrap,
    });
    let grid_file = args.out.join(format!("grid{suffix}.json"));
    check_same_recipe(&grid_file, &recipe)?;
    let settings = serde_json::json!({
        "recipe": recipe,
        "arms": arms,
        "build": crate::run_files::build_info(),
    });
    write_atomic(
        &grid_file,
        serde_json::to_string_pretty(&settings)?.as_bytes(),
    )?;

    let mut rows = Vec::new();
    for (i, arm) in arms.iter().enumerate() {
        let dir = args.out.join(&arm.name);
        writeln!(
            log,
            "== [{}/{}] {}: pretrain ({} epoch(s)) -> {}",
            i + 1,
            arms.len(),
            arm.label(),
            args.recipe.epochs,
            dir.display()
        )?;
        let ehr = arm.ehr.as_deref().unwrap_or("none");
        let pretrain_args =
            args.recipe
                .pretrain_args(source.clone(), arm.method.name(), ehr, &dir, cache.clone());
        pretrain::run(&pretrain_args, log)
            .with_context(|| format!("pretraining {}", dir.display()))?;
        if !dir.join("state.json").exists() && arm.method != Method::Random {
            bail!(
                "{} stopped before its first checkpoint; run the same command to continue",
                dir.display()
            );
        }
        stop_if_asked()?;

        let probe_dir = dir.join(format!("probe{suffix}"));
        let probe_metrics = probe_dir.join("metrics.json");
        // The classifier is the last file a probe or a fine-tune writes.
        if probe_dir.join("classifier.safetensors").exists() {
            writeln!(log, "== linear probe: kept {}", probe_metrics.display())?;
        } else {
            writeln!(log, "== linear probe -> {}", probe_dir.display())?;
            let mut probe_args = args.recipe.probe_args(source.clone(), &dir);
            probe_args.out = probe_dir.clone();
            probe_args.train.train_fraction = args.train_fraction;
            let outcome = probe::run(&probe_args)?;
            write!(log, "{}", outcome.log)?;
        }
        collect(&mut rows, arm, "probe", &probe_metrics)?;
        stop_if_asked()?;

        if args.finetune_epochs > 0 {
            let out = dir.join(format!("finetune{suffix}"));
            let metrics = out.join("metrics.json");
            if out.join("classifier.safetensors").exists() {
                writeln!(log, "== fine-tune: kept {}", metrics.display())?;
            } else {
                writeln!(log, "== fine-tune -> {}", out.display())?;
                let report = finetune::run(&FinetuneArgs {
                    source: source.clone(),
                    checkpoint: dir.join("checkpoint.safetensors"),
                    out,
                    cache: cache.clone(),
                    train: DownstreamArgs {
                        train_fraction: args.train_fraction,
                        ..args
                            .recipe
                            .downstream(args.finetune_epochs, args.finetune_lr)
                    },
                })?;
                write!(log, "{report}")?;
            }
            collect(&mut rows, arm, "finetune", &metrics)?;
            stop_if_asked()?;
        }
    }

    paired_differences(
        &mut rows,
        &args.out,
        &format!("probe{suffix}"),
        args.recipe.bootstrap,
    )?;
    let finetuned = args.finetune_epochs > 0;
    let markdown = comparison_markdown(&arms, &rows, finetuned);
    let file = |name: &str| args.out.join(format!("comparison{suffix}.{name}"));
    write_atomic(&file("csv"), comparison_csv(&arms, &rows).as_bytes())?;
    let title = format!(
        "{} pretraining epoch(s), ViT-{}, {} profile{}; test macro AUROC with 95% CIs",
        args.recipe.epochs,
        args.recipe.preset,
        args.recipe.profile,
        if suffix.is_empty() {
            String::new()
        } else {
            format!(
                ", {}% of the training images downstream",
                percent(args.train_fraction)
            )
        }
    );
    write_atomic(
        &file("md"),
        format!("# Pretraining methods compared\n\n{title}.\n\n{markdown}").as_bytes(),
    )?;
    let plot_rows: Vec<IntervalRow> = arms
        .iter()
        .flat_map(|arm| {
            ["image", "image+ehr"].into_iter().filter_map(|head| {
                let pick = |evaluation: &str| {
                    rows.iter()
                        .find(|r| r.arm == arm.name && r.head == head && r.evaluation == evaluation)
                        .and_then(|r| r.macro_auroc)
                        .map(|s| (s.value, s.low, s.high))
                };
                let values = vec![pick("probe"), pick("finetune")];
                values.iter().any(Option::is_some).then(|| IntervalRow {
                    label: if head == "image" {
                        arm.label()
                    } else {
                        format!("{}, image + EHR head", arm.label())
                    },
                    values,
                })
            })
        })
        .collect();
    write_atomic(
        &file("svg"),
        interval_chart(
            &title,
            "macro AUROC",
            &["linear probe", "fine-tune"],
            &plot_rows,
        )
        .as_bytes(),
    )?;
    Ok(format!(
        "\n{markdown}\nDone in {}; wrote {} with .md and .svg beside it (runs in {}/<arm>).\n",
        crate::progress::duration(started.elapsed().as_secs_f64()),
        file("csv").display(),
        args.out.display()
    ))
}

/// Refuses to continue a comparison folder whose earlier run used other settings (arms may
/// be added; everything the results depend on must stay).
fn check_same_recipe(grid_file: &Path, recipe: &serde_json::Value) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(grid_file) else {
        return Ok(());
    };
    let before: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is malformed", grid_file.display()))?;
    let Some(old) = before.get("recipe").and_then(|r| r.as_object()) else {
        return Ok(());
    };
    for (key, value) in recipe.as_object().into_iter().flatten() {
        if let Some(was) = old.get(key)
            && was != value
        {
            bail!(
                "{} was run with {key} = {was}, this command asks for {value}; use another \
                 --out folder (or the same settings) so that results are not mixed",
                grid_file.display()
            );
        }
    }
    Ok(())
}

/// A fraction as a percentage to 0.1 (0.07 -> "7", not 7.000000000000001).
fn percent(fraction: f64) -> String {
    ((fraction * 1000.0).round() / 10.0).to_string()
}

/// Adds the rows of one evaluation's `metrics.json`.
fn collect(rows: &mut Vec<ResultRow>, arm: &Arm, evaluation: &str, metrics: &Path) -> Result<()> {
    for (head, [auroc, auprc]) in read_metrics(metrics)? {
        rows.push(ResultRow {
            arm: arm.name.clone(),
            evaluation: evaluation.into(),
            head,
            macro_auroc: auroc,
            macro_auprc: auprc,
            minus_msn: None,
        });
    }
    Ok(())
}

/// What a probe wrote about each test image.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeScores {
    /// Number of labels.
    pub labels: usize,
    /// Probabilities `[images x labels]` per head (`test_scores.csv`).
    pub heads: BTreeMap<String, Vec<f32>>,
    /// The targets `[images x labels]` (`test_targets.csv`; `None` for a left-out label).
    pub targets: Vec<Option<f32>>,
}

/// Reads `test_scores.csv` and `test_targets.csv` of a probe folder.
pub fn read_probe_scores(dir: &Path) -> Result<ProbeScores> {
    // The rows of a CSV file, each checked to have as many fields as its header.
    let read = |name: &str| -> Result<(usize, Vec<Vec<String>>)> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text.lines();
        let width = lines.next().map_or(0, |h| h.split(',').count());
        let mut rows = Vec::new();
        for (i, line) in lines.enumerate() {
            let row: Vec<String> = line.split(',').map(String::from).collect();
            if row.len() != width {
                bail!(
                    "{} row {}: {} fields, the header has {width}",
                    path.display(),
                    i + 1,
                    row.len()
                );
            }
            rows.push(row);
        }
        Ok((width, rows))
    };
    let number = |cell: &str, file: &str| -> Result<f32> {
        cell.parse()
            .with_context(|| format!("{}: '{cell}' is not a number", dir.join(file).display()))
    };
    // `row,head,<labels...>` and `row,<labels...>`.
    let (width, rows) = read("test_scores.csv")?;
    let labels = width.saturating_sub(2);
    let mut heads: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for row in rows {
        let values = row[2..]
            .iter()
            .map(|c| number(c, "test_scores.csv"))
            .collect::<Result<Vec<f32>>>()?;
        heads.entry(row[1].clone()).or_default().extend(values);
    }
    let (width, rows) = read("test_targets.csv")?;
    if width != labels + 1 {
        bail!(
            "{} has {} labels, test_scores.csv beside it {labels}",
            dir.join("test_targets.csv").display(),
            width.saturating_sub(1)
        );
    }
    let mut targets = Vec::new();
    for row in rows {
        for c in &row[1..] {
            targets.push(if c.is_empty() {
                None
            } else {
                Some(number(c, "test_targets.csv")?)
            });
        }
    }
    Ok(ProbeScores {
        labels,
        heads,
        targets,
    })
}

/// Fills `minus_msn` of every arm's probe image row: its macro AUROC minus vanilla MSN's,
/// with a paired bootstrap over the same test images (seed 24). Left empty when there is no
/// vanilla MSN arm, or when an arm was tested on other images (an EHR set that drops
/// images without its fields).
fn paired_differences(
    rows: &mut [ResultRow],
    out: &Path,
    probe: &str,
    resamples: usize,
) -> Result<()> {
    let msn_dir = out.join(Method::Msn.name()).join(probe);
    if !rows.iter().any(|r| r.arm == Method::Msn.name())
        || !msn_dir.join("test_targets.csv").exists()
    {
        return Ok(());
    }
    let msn = read_probe_scores(&msn_dir)?;
    let Some(reference) = msn.heads.get("image") else {
        return Ok(());
    };
    for row in rows
        .iter_mut()
        .filter(|r| r.evaluation == "probe" && r.head == "image" && r.arm != Method::Msn.name())
    {
        let dir = out.join(&row.arm).join(probe);
        if !dir.join("test_targets.csv").exists() {
            // A probe of an older version wrote no targets: nothing to pair with.
            continue;
        }
        let other = read_probe_scores(&dir)?;
        if other.targets != msn.targets || other.labels != msn.labels {
            continue;
        }
        if let Some(own) = other.heads.get("image") {
            row.minus_msn = paired_macro_auroc_difference(
                reference,
                own,
                &msn.targets,
                msn.labels,
                resamples,
                24,
            )
            .map(|i| Scored {
                value: i.value,
                low: i.low,
                high: i.high,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_follow_the_order_given_and_refuse_typos_and_repeats() {
        let a = arms(
            &["random".into(), "msn".into()],
            &["demographic".into(), "none".into()],
        )
        .unwrap();
        let names: Vec<&str> = a.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["random", "msn", "msn-ehr-demographic"]);
        assert_eq!(a[2].label(), "MSN + EHR (demographic)");
        assert!(arms(&["byol".into()], &[]).is_err());
        assert!(arms(&[], &["demografic".into()]).is_err());
        assert!(arms(&["msn".into(), "msn".into()], &[]).is_err());
        assert!(arms(&[], &["none".into()]).is_err());
        assert_eq!(
            arms(&[], &["every".into()]).unwrap().len(),
            23,
            "the paper's 23 sets"
        );
    }

    #[test]
    fn tables_show_every_arm_and_head_with_its_interval() {
        let a = arms(&["dino".into()], &["sex".into()]).unwrap();
        let s = |v: f64| {
            Some(Scored {
                value: v,
                low: v - 0.1,
                high: v + 0.1,
            })
        };
        let row = |arm: &str, evaluation: &str, head: &str, v: f64| ResultRow {
            arm: arm.into(),
            evaluation: evaluation.into(),
            head: head.into(),
            macro_auroc: s(v),
            macro_auprc: None,
            minus_msn: None,
        };
        let rows = vec![
            row("dino", "probe", "image", 0.6),
            row("dino", "finetune", "image", 0.65),
            row("msn-ehr-sex", "probe", "image", 0.7),
            row("msn-ehr-sex", "probe", "image+ehr", 0.75),
        ];
        let md = comparison_markdown(&a, &rows, true);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 5, "{md}");
        assert_eq!(
            lines[2],
            "| DINO | image | 0.600 [0.500, 0.700] |  | 0.650 [0.550, 0.750] |"
        );
        assert_eq!(
            lines[4],
            "| MSN + EHR (sex) | image + EHR | 0.750 [0.650, 0.850] |  | n/a |"
        );
        let csv = comparison_csv(&a, &rows);
        assert!(
            csv.lines()
                .any(|l| l == "msn-ehr-sex,msn,sex,probe,image+ehr,0.75,0.65,0.85,,,,,,"),
            "{csv}"
        );
    }

    #[test]
    fn the_paired_difference_from_vanilla_msn_uses_the_same_test_images() {
        let dir = tempfile::tempdir().unwrap();
        // One label, six images: DINO ranks them perfectly (AUROC 1); MSN orders 6 of the 9
        // positive-negative pairs correctly (AUROC 2/3).
        let targets = "row,Effusion\n0,1\n1,1\n2,1\n3,0\n4,0\n5,0\n";
        for (arm, scores) in [
            ("msn", [0.9, 0.2, 0.5, 0.6, 0.1, 0.4]),
            ("dino", [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]),
        ] {
            let probe = dir.path().join(arm).join("probe");
            std::fs::create_dir_all(&probe).unwrap();
            let mut csv = String::from("row,head,Effusion\n");
            for (i, v) in scores.iter().enumerate() {
                csv += &format!("{i},image,{v}\n");
            }
            std::fs::write(probe.join("test_scores.csv"), csv).unwrap();
            std::fs::write(probe.join("test_targets.csv"), targets).unwrap();
        }
        let read = read_probe_scores(&dir.path().join("dino/probe")).unwrap();
        assert_eq!((read.labels, read.targets.len()), (1, 6));
        let row = |arm: &str| ResultRow {
            arm: arm.into(),
            evaluation: "probe".into(),
            head: "image".into(),
            macro_auroc: None,
            macro_auprc: None,
            minus_msn: None,
        };
        let mut rows = vec![row("msn"), row("dino")];
        paired_differences(&mut rows, dir.path(), "probe", 200).unwrap();
        assert!(
            rows[0].minus_msn.is_none(),
            "no difference of MSN from itself"
        );
        let d = rows[1].minus_msn.expect("a paired difference");
        assert!((d.value - (1.0 - 6.0 / 9.0)).abs() < 1e-9, "{d:?}");
        assert!(d.low <= d.value && d.value <= d.high, "{d:?}");
        // Other test images (a different target column): no difference is claimed.
        std::fs::write(
            dir.path().join("dino/probe/test_targets.csv"),
            "row,Effusion\n0,0\n1,1\n2,1\n3,0\n4,0\n5,1\n",
        )
        .unwrap();
        let mut rows = vec![row("msn"), row("dino")];
        paired_differences(&mut rows, dir.path(), "probe", 200).unwrap();
        assert!(rows[1].minus_msn.is_none());
    }

    #[test]
    fn a_comparison_folder_refuses_other_settings_but_takes_new_arms() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grid.json");
        let recipe = serde_json::json!({"epochs": 1, "probe_epochs": 30});
        check_same_recipe(&file, &recipe).unwrap();
        std::fs::write(
            &file,
            serde_json::json!({"recipe": recipe, "arms": []}).to_string(),
        )
        .unwrap();
        check_same_recipe(&file, &recipe).unwrap();
        let other = serde_json::json!({"epochs": 1, "probe_epochs": 5});
        let err = check_same_recipe(&file, &other).unwrap_err().to_string();
        assert!(
            err.contains("probe_epochs = 30") && err.contains("another --out"),
            "{err}"
        );
    }

    #[test]
    fn metrics_files_are_read_per_head() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("metrics.json");
        std::fs::write(
            &file,
            r#"{"heads":{"image":{"macro_auroc":{"value":0.7,"ci95":[0.6,0.8]},"macro_auprc":null}}}"#,
        )
        .unwrap();
        let m = read_metrics(&file).unwrap();
        assert_eq!(m["image"][0].unwrap().high, 0.8);
        assert!(m["image"][1].is_none());
        std::fs::write(&file, "{}").unwrap();
        assert!(format!("{:#}", read_metrics(&file).unwrap_err()).contains("no heads"));
    }
}
