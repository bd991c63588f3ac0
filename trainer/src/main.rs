//! `cxr-msn`: the command-line tool of the project. A thin layer: each subcommand parses
//! its flags and calls the `cxr_msn_trainer` library (data, pretraining, downstream
//! training and scoring), which calls the `cxr_msn` model crate. Errors are printed once,
//! as one chain of causes, and give exit status 1.

mod allocator;
mod quiet_vulkan;

/// See `allocator.rs`: zeroed allocations are written, which spares Burn's CPU backend
/// page faults and cross-core TLB flushes.
#[global_allocator]
static ALLOCATOR: allocator::ZeroedByWriting = allocator::ZeroedByWriting;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cxr_msn::checkpoint::{ModelKind, load_classifier, read_meta};
use cxr_msn::config::ViewConfig;
use cxr_msn::config::{DinoConfig, MaeConfig, Method, MsnConfig, Profile, VitConfig, VitPreset};
use cxr_msn::decode::DecodeLimits;
use cxr_msn::ehr::FeatureSet;
use cxr_msn::pretrained::load_pretrained;
use cxr_msn_trainer::source::{DataArgs, describe};
use cxr_msn_trainer::{
    baselines, bench, contact_sheet, ehr_command, embed, evaluate, export, finetune, interrupt,
    main_job, pretrain, probe, synthetic, weights,
};

#[derive(Parser, Debug)]
#[command(
    name = "cxr-msn",
    version,
    about = "Multimodal Masked Siamese Networks for chest X-rays"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job, nothing to download: generate the synthetic X-ray world (first run
    /// only), pretrain a multimodal MSN, probe it, score the test split, map the embeddings
    /// and export the browser model and an ONNX copy; prints where everything is. Sized for
    /// two CPU cores.
    ///
    /// Example: cxr-msn demo
    ///
    /// Longer: cxr-msn demo --epochs 5 --count 2000 --out runs/demo-5
    Demo(main_job::MainJobArgs),
    /// The paper's experiment in miniature: vanilla MSN against MSN + EHR, pretrained and
    /// probed alike on the synthetic world; macro AUROC with 95% CIs and the paired
    /// difference.
    ///
    /// Example: cxr-msn compare --ehr demographic --epochs 2
    Compare(main_job::MainJobArgs),
    /// The paper's comparison, re-runnable: random init, MAE, DINO, vanilla MSN and MSN
    /// with each EHR group, pretrained alike, then linear probe and fine-tune; one table of
    /// macro AUROC with 95% CIs (CSV, Markdown) and a plot. Running it again continues.
    ///
    /// Example: cxr-msn baselines --epochs 2
    ///
    /// On a dataset: cxr-msn baselines --format nih --data Data_Entry_2017.csv --ehr-sets
    /// demographic --out runs/nih-baselines
    Baselines(baselines::BaselinesArgs),
    /// List the ViT presets, the two pretraining profiles and the 23 EHR feature sets.
    ///
    /// Example: cxr-msn info
    Info,
    /// Print what a model file holds: kind, architecture, profile, EHR features, labels
    /// (after checking that its weights fit the architecture it declares).
    ///
    /// Example: cxr-msn inspect runs/tiny/model.safetensors
    Inspect {
        /// A model file written by cxr-msn (safetensors with cxr-msn metadata).
        file: PathBuf,
    },
    /// Generate the synthetic X-ray world: chest-radiograph-like PNGs whose findings are
    /// visible, with EHR drawn from real NIH statistics, and a manifest CSV.
    ///
    /// Example: cxr-msn synth --out data/synth --count 2000
    Synth {
        /// Output folder (images/ and manifest.csv are written into it).
        #[arg(long)]
        out: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Seed: the same seed gives the same files.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Worker threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Pretrain a (multimodal) MSN on a GPU through wgpu, or on the CPU; running it again
    /// continues the run (Ctrl-C saves first).
    ///
    /// Example: cxr-msn pretrain --data data/synth/manifest.csv --ehr demographic --out runs/demo
    Pretrain(pretrain::PretrainArgs),
    /// Linear evaluation of a pretrained encoder: heads trained on frozen features with
    /// early stopping, test macro AUROC/AUPRC with 95% CIs, and a classifier model file.
    ///
    /// Example: cxr-msn probe --data data/synth/manifest.csv --checkpoint runs/demo/checkpoint.safetensors --out runs/demo/probe
    Probe(probe::ProbeArgs),
    /// Fine-tune the pretrained encoder with the classifier heads end to end, with early
    /// stopping; test metrics with 95% CIs and a classifier model file.
    ///
    /// Example: cxr-msn finetune --data data/synth/manifest.csv --checkpoint runs/demo/checkpoint.safetensors --out runs/demo/finetune
    Finetune(finetune::FinetuneArgs),
    /// Map the encoder's embedding space in 2-D (principal components) and measure how well
    /// it separates each finding and EHR group (silhouette).
    ///
    /// Example: cxr-msn embed --data data/synth/manifest.csv --model runs/demo/checkpoint.safetensors --out runs/demo/embed
    Embed(embed::EmbedArgs),
    /// Write the model file the browser loads: a classifier with per-label operating points
    /// chosen on a labelled split (Youden's J); --f16 halves its size.
    ///
    /// Example: cxr-msn export --data data/synth/manifest.csv --model runs/demo/probe/classifier.safetensors --out static/model.safetensors
    Export(export::ExportArgs),
    /// Bring PyTorch weights in: the official MSN release, the authors' Lightning
    /// checkpoint, or a torchvision / timm ViT (.pth, .pt, .ckpt or .safetensors) becomes
    /// a pretraining model file for pretrain --init, probe, finetune and embed, with a
    /// report of every tensor loaded, skipped or initialised fresh.
    ///
    /// Example: cxr-msn import vits16_800ep.pth.tar --channels 1 --out runs/msn-vits/imported.safetensors
    Import(weights::import::ImportArgs),
    /// Write a model's encoder for PyTorch: safetensors with torchvision or timm names.
    ///
    /// Example: cxr-msn export-torch runs/demo/checkpoint.safetensors --names timm --out encoder.safetensors
    ExportTorch(weights::export::ExportTorchArgs),
    /// Write a model file as ONNX (opset 17) for ONNX Runtime and other ONNX tools: the
    /// grey image (and the encoded EHR) in; the embedding and both heads' probabilities out.
    ///
    /// Example: cxr-msn export-onnx runs/demo/probe/classifier.safetensors --out classifier.onnx
    ExportOnnx(weights::onnx::ExportOnnxArgs),
    /// Score a dataset split with a classifier model file: per-label and macro AUROC and
    /// AUPRC with 95% CIs, for the image-only and the image + EHR head (labels are matched
    /// by name, so a MIMIC-trained model scores on CheXpert).
    ///
    /// Example: cxr-msn eval --data data/synth/manifest.csv --model runs/demo/probe/classifier.safetensors --out runs/demo/eval
    Eval(evaluate::EvalArgs),
    /// Score image files (PNG, JPEG, DICOM; one file or a folder) into a CSV of
    /// probabilities; EHR from flags or DICOM headers feeds the image + EHR head.
    ///
    /// Example: cxr-msn predict --model classifier.safetensors --input xrays/ --out predictions.csv --age 67 --sex F
    Predict(evaluate::PredictArgs),
    /// Read a dataset as training would and describe it: rows kept and dropped (with
    /// reasons), splits, label prevalence under the label policy, EHR completeness.
    ///
    /// Example: cxr-msn data --data data/synth/manifest.csv
    ///
    /// NIH: cxr-msn data --format nih --data nih/Data_Entry_2017_v2020.csv.gz --remove-no-finding
    Data {
        #[command(flatten)]
        source: DataArgs,
        /// Also decode every image and list the ones that fail (an error unless
        /// --skip-bad-images).
        #[arg(long)]
        check_images: bool,
    },
    /// Draw the views pretraining would make of one image (evaluation view, target, random
    /// anchor, focal views) and save them side by side as a PNG.
    ///
    /// Example: cxr-msn views --image data/synth/images/000001.png --out views.png --seed 3
    Views {
        /// A PNG, JPEG or DICOM file.
        #[arg(long)]
        image: PathBuf,
        /// The PNG to write.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the crops and flips.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Focal views.
        #[arg(long, default_value_t = 10)]
        focal_views: usize,
    },
    /// Measure throughput against a baseline in the same run (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        target: bench::BenchTarget,
    },
    /// Link MIMIC-CXR images to MIMIC-IV and write one row of EHR facts per image.
    ///
    /// Sex and age come from patients, in-hospital mortality from the admission whose
    /// dates contain the scan date, ICU from an ICU stay containing it; view and
    /// orientation from the MIMIC-CXR metadata. Images without sex and images with a rare
    /// view (other than PA, LATERAL, AP, LL) are dropped and counted; a missing view or
    /// orientation is imputed with the most frequent value among images of the same
    /// PerformedProcedureStepDescription (else overall) and flagged.
    ///
    /// Example: cxr-msn ehr --mimic-cxr data/mimic-cxr-jpg/2.0.0 --mimic-iv data/mimiciv/2.2 --out data/ehr.csv
    Ehr(ehr_command::EhrArgs),
}

/// The exit status after a stop on request.
const INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    // Before any thread exists (it sets an environment variable).
    quiet_vulkan::quiet_device_select();
    // Freed blocks stay with the process for reuse (glibc; see `allocator.rs`).
    allocator::keep_freed_blocks();
    let cli = Cli::parse();
    // Ctrl-C / SIGTERM in the commands that train: save and stop after the current step
    // (a second one quits at once). Other commands keep the default: stop at once.
    if matches!(
        cli.command,
        Command::Pretrain(_) | Command::Demo(_) | Command::Compare(_)
    ) && let Err(e) = interrupt::install()
    {
        eprintln!("warning: Ctrl-C will not save first ({e})");
    }
    let result = run(cli.command);
    // A run stopped on request (Ctrl-C, SIGTERM) has saved its work but not finished it:
    // status 130 (128 + SIGINT, as a shell reports a command Ctrl-C ended), so that
    // `cxr-msn pretrain ... && cxr-msn probe ...` does not go on with a half-trained model.
    let stopped = ExitCode::from(INTERRUPTED);
    match result {
        Ok(()) if interrupt::requested() => stopped,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes on one line: what failed, in which file, and why.
            eprintln!("error: {e:#}");
            if let Some(advice) = cxr_msn_trainer::files::advice(&e) {
                eprintln!("hint: {advice}");
            } else if e
                .chain()
                .any(|c| c.downcast_ref::<cxr_msn::decode::DecodeError>().is_some())
            {
                eprintln!(
                    "hint: --skip-bad-images decodes every image first and leaves out those \
                     that cannot be read; `cxr-msn data --check-images` lists them"
                );
            }
            if interrupt::requested() {
                stopped
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Info => {
            print!("{}", info());
            Ok(())
        }
        Command::Inspect { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let meta = read_meta(&bytes).with_context(|| format!("{}", file.display()))?;
            // The weights must fit the architecture the metadata declares (loading is lazy:
            // a file that declares a huge model over small weights allocates nothing).
            let device = burn::tensor::Device::flex();
            let weights = match meta.kind {
                ModelKind::Classifier => load_classifier(&bytes, &device).map(drop),
                ModelKind::Pretraining => load_pretrained(&bytes, &device).map(drop),
            };
            weights.with_context(|| format!("{}", file.display()))?;
            println!("{}", file.display());
            print!("{meta}");
            Ok(())
        }
        Command::Synth {
            out,
            count,
            size,
            seed,
            threads,
        } => {
            let cfg = synthetic::SynthConfig {
                count,
                size,
                seed,
                threads,
            };
            let started = std::time::Instant::now();
            let summary = synthetic::generate(&out, &cfg)?;
            println!(
                "wrote {} images of {size}x{size} px and {} in {:.1} s",
                summary.images,
                summary.manifest.display(),
                started.elapsed().as_secs_f64()
            );
            if summary.removed > 0 {
                println!(
                    "removed the {} images of the earlier, larger world in {}",
                    summary.removed,
                    out.display()
                );
            }
            for (label, n) in cxr_msn::labels::MIMIC_LABELS.iter().zip(summary.positives) {
                println!(
                    "  {label:28} {n:6} ({:.1}%)",
                    100.0 * n as f64 / summary.images as f64
                );
            }
            Ok(())
        }
        Command::Data {
            source,
            check_images,
        } => {
            // With --skip-bad-images the load has decoded every image and left out (and
            // listed) those that fail.
            let mut data = source.load()?;
            let total = data.records.len();
            let failures = if check_images && !source.skip_bad_images {
                data.drop_unreadable_images(&DecodeLimits::default())
            } else {
                Vec::new()
            };
            print!("{}", describe(&data, &source.policy()));
            if !check_images && !source.skip_bad_images {
                // Cheap, unlike decoding: a wrong --images folder shows here, not at the
                // first batch of a training run.
                let missing: Vec<&std::path::Path> = data
                    .records
                    .iter()
                    .map(|r| r.image.as_path())
                    .filter(|p| !p.is_file())
                    .collect();
                println!("image files found: {} of {total}", total - missing.len());
                for path in missing.iter().take(5) {
                    println!("  missing: {}", path.display());
                }
                if !missing.is_empty() {
                    // A warning, not an error: the table alone (its labels and EHR) is worth
                    // reading before the images are downloaded.
                    eprintln!(
                        "warning: {} image files are not there: training would stop at the \
                         first (for NIH and CheXpert, --images names the folder they are in)",
                        missing.len()
                    );
                }
            }
            if check_images {
                println!("images decoded: {} of {total}", total - failures.len());
                for (_, message) in failures.iter().take(20) {
                    println!("  {message}");
                }
                if !failures.is_empty() {
                    anyhow::bail!(
                        "{} images cannot be read (--skip-bad-images drops and counts them)",
                        failures.len()
                    );
                }
            }
            Ok(())
        }
        Command::Views {
            image,
            out,
            seed,
            focal_views,
        } => {
            let views = ViewConfig {
                focal_views,
                ..ViewConfig::default()
            };
            contact_sheet::write_sheet(&image, &out, &views, seed)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Demo(args) => main_job::run_demo(&args, &mut std::io::stdout()),
        Command::Compare(args) => main_job::run_compare(&args, &mut std::io::stdout()),
        Command::Baselines(args) => {
            print!("{}", baselines::run(&args, &mut std::io::stdout())?);
            Ok(())
        }
        Command::Pretrain(args) => {
            pretrain::run(&args, &mut std::io::stdout())?;
            Ok(())
        }
        Command::Probe(args) => {
            print!("{}", probe::run(&args)?.log);
            Ok(())
        }
        Command::Finetune(args) => {
            print!("{}", finetune::run(&args)?);
            Ok(())
        }
        Command::Embed(args) => {
            print!("{}", embed::run(&args)?);
            Ok(())
        }
        Command::Export(args) => {
            print!("{}", export::run(&args)?);
            Ok(())
        }
        Command::Import(args) => {
            print!("{}", weights::import::run(&args)?);
            Ok(())
        }
        Command::ExportTorch(args) => {
            print!("{}", weights::export::run(&args)?);
            Ok(())
        }
        Command::ExportOnnx(args) => {
            print!("{}", weights::onnx::run(&args)?);
            Ok(())
        }
        Command::Eval(args) => {
            print!("{}", evaluate::run_eval(&args)?);
            Ok(())
        }
        Command::Predict(args) => {
            print!("{}", evaluate::run_predict(&args)?);
            Ok(())
        }
        Command::Bench { target } => {
            match target {
                bench::BenchTarget::Loader(args) => print!("{}", bench::run_loader(&args)?),
                bench::BenchTarget::Step(args) => {
                    print!("{}", bench::run_step(&args)?.report(args.run.json));
                }
                bench::BenchTarget::Infer(args) => {
                    print!("{}", bench::run_infer(&args)?.report(args.run.json));
                }
            }
            Ok(())
        }
        Command::Ehr(args) => {
            print!("{}", ehr_command::run(&args)?);
            Ok(())
        }
    }
}

fn info() -> String {
    let mut out = String::from("ViT presets (patch 16, 12 blocks, 224 px grid):\n");
    for preset in VitPreset::ALL {
        let v = VitConfig::preset(preset, 3);
        out += &format!("  {:8} D={:3}  heads={:2}\n", preset.name(), v.dim, v.heads);
    }
    out += "\nProfiles:\n";
    for profile in [Profile::Paper, Profile::Msn] {
        let c = MsnConfig::for_profile(profile, VitPreset::Tiny);
        out += &format!(
            "  {:6} head D->{}->{}->{} (bias before BN: {}), {} prototypes {}, mask {} on {:?}, \
             head BN {:?}, EMA {}->{} {:?}, batch {} x {} epochs, {:?}\n",
            profile.name(),
            c.head.hidden,
            c.head.hidden,
            if profile == Profile::Paper {
                "D".to_string()
            } else {
                c.head.d_out.to_string()
            },
            c.head.bias_before_bn,
            c.num_prototypes,
            if c.freeze_prototypes {
                "frozen"
            } else {
                "learned"
            },
            c.mask_ratio,
            c.mask_scope,
            c.head_bn,
            c.ema.base_momentum,
            c.ema.final_momentum,
            c.ema.timing,
            c.optim.batch_size,
            c.optim.epochs,
            c.optim.precision,
        );
    }
    out += "\nPretraining methods (--method NAME; the baselines are image-only and share the \
            encoder, views, optimiser and schedules):\n";
    let (d, m) = (DinoConfig::default(), MaeConfig::default());
    for (method, what) in [
        (
            Method::Msn,
            "Masked Siamese Networks, with EHR in the anchor branch when --ehr names a set"
                .to_string(),
        ),
        (
            Method::Dino,
            format!(
                "DINO: head {}-{}-{}, centring, teacher temperature {}->{}, cosine momentum",
                d.hidden,
                d.bottleneck,
                d.out_dim,
                d.warmup_teacher_temperature,
                d.teacher_temperature
            ),
        ),
        (
            Method::Mae,
            format!(
                "MAE: mask ratio {}, decoder {} wide, {} blocks, {} heads, {} pixels",
                m.mask_ratio,
                m.decoder_dim,
                m.decoder_depth,
                m.decoder_heads,
                if m.norm_pix_loss { "normalised" } else { "raw" }
            ),
        ),
        (
            Method::Random,
            "no pretraining: the encoder at its seeded random initialisation".to_string(),
        ),
    ] {
        out += &format!("  {:8} {what}\n", method.name());
    }
    out += "\nEHR feature sets (--ehr NAME; fields may also be joined with '+'):\n";
    for name in FeatureSet::NAMED {
        let set = FeatureSet::from_name(name).expect("named sets parse");
        out += &format!("  {:28} {:2} values\n", name, set.width());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lists_every_preset_profile_and_feature_set() {
        let text = info();
        for name in [
            "tiny",
            "tiny-3h",
            "small",
            "base",
            "paper",
            "msn",
            "all-age10",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert_eq!(text.matches(" values\n").count(), 23);
    }

    #[test]
    fn the_cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_explains_itself_with_an_example() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        for sub in cli.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            if name == "bench" {
                continue; // a group; its subcommand carries the example
            }
            let help = sub.render_long_help().to_string();
            assert!(
                help.contains("Example") && help.contains(&format!("cxr-msn {name}")),
                "`cxr-msn {name} --help` has no example:\n{help}"
            );
        }
    }
}
