//! `cxr-msn import`: a foreign checkpoint becomes a cxr-msn pretraining model file, which
//! `pretrain --init`, `probe`, `finetune` and `embed` take like one of our own.
//!
//! The architecture is read off the file (width, depth, patch, MLP, head, prototypes, EHR
//! layers); only the number of attention heads cannot be, and comes from the width (the
//! DeiT/ViT presets: 192 -> 3, 384 -> 6, 768 -> 12, ...) or `--heads`. Parts the file lacks
//! (the head of a plain ViT, EHR layers, prototypes) are initialised as a fresh model
//! would be, and the report says so.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{ChainAdapter, FloatCastAdapter, ModuleSnapshot, PyTorchToBurnAdapter, bridge};
use burn::tensor::{DType, Device};
use clap::Args;
use cxr_msn::checkpoint::{ModelMeta, write_model};
use cxr_msn::config::{EhrConfig, HeadConfig, MsnConfig, Profile, VitConfig, VitPreset};
use cxr_msn::ehr::FeatureSet;
use cxr_msn::msn::MultimodalMsn;
use serde::Serialize;

use super::adapt::{SourceArchitecture, fold_to_grey, infer, resize_positions};
use super::layout::{Layout, why_unused};
use super::source::read_tensors;
use crate::files::write_atomic;

/// `cxr-msn import` settings.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ImportArgs {
    /// The checkpoint: .pth / .pt / .pth.tar / Lightning .ckpt (torch.save) or .safetensors.
    pub checkpoint: PathBuf,
    /// Output model file (a cxr-msn pretraining model; a report is written beside it as
    /// <out>.import.txt).
    #[arg(long)]
    pub out: PathBuf,
    /// Key layout of the checkpoint; detected from its names when not given.
    #[arg(long, value_enum)]
    pub layout: Option<Layout>,
    /// Pretraining profile of the model file (`paper` or `msn`); default: `msn` for the
    /// official MSN release, `paper` otherwise. The head sizes come from the file when it
    /// has a head.
    #[arg(long)]
    pub profile: Option<String>,
    /// EHR feature set of the anchor branch, or `none`. A file with EHR layers (the
    /// authors' checkpoint) keeps them only under a feature set of the same width.
    #[arg(long, default_value = "none")]
    pub ehr: String,
    /// Input channels of the model: 3 (default: as the file) or 1, which folds an RGB
    /// patch embedding into one grey channel exactly (for grey X-rays replicated to RGB
    /// and ImageNet-normalised, as the source models saw them).
    #[arg(long)]
    pub channels: Option<usize>,
    /// Input side in pixels of the model; a position grid of another size is resized
    /// bicubically.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Attention heads (default: what the file records, as `export-torch` writes it, else
    /// from the width, as the DeiT/ViT presets).
    #[arg(long)]
    pub heads: Option<usize>,
}

/// One line of the report: a tensor of the file and where it went.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    /// Name in the file.
    pub from: String,
    /// Parameter path in the cxr-msn model.
    pub to: String,
    /// What was done beyond renaming (resize, fold, copy into the target branch).
    pub note: String,
}

/// Every tensor loaded, skipped or missing.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The file.
    pub source: PathBuf,
    /// Its layout.
    pub layout: Layout,
    /// The attention heads of the model and where the number came from (the tensors'
    /// shapes do not tell it).
    pub heads: String,
    /// Tensors that went into the model.
    pub loaded: Vec<Loaded>,
    /// Tensors of the file that were not used, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Model parameters the file did not provide (initialised as a new model's).
    pub initialised: Vec<String>,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({} layout): {} tensors loaded, {} skipped, {} model parameters initialised fresh",
            self.source.display(),
            self.layout.name(),
            self.loaded.len(),
            self.skipped.len(),
            self.initialised.len()
        )?;
        writeln!(f, "attention heads: {}", self.heads)?;
        writeln!(f, "\nloaded:")?;
        for l in &self.loaded {
            let note = if l.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", l.note)
            };
            writeln!(f, "  {} -> {}{note}", l.from, l.to)?;
        }
        writeln!(f, "\nskipped:")?;
        for (name, why) in &self.skipped {
            writeln!(f, "  {name}: {why}")?;
        }
        writeln!(f, "\ninitialised fresh (not in the file):")?;
        for name in &self.initialised {
            writeln!(f, "  {name}")?;
        }
        Ok(())
    }
}

/// The result of an import.
#[derive(Debug)]
pub struct Imported {
    /// The model, on the CPU.
    pub model: MultimodalMsn,
    /// Its metadata (pretraining kind).
    pub meta: ModelMeta,
    /// What happened to every tensor.
    pub report: ImportReport,
}

/// Attention heads of the standard ViT/DeiT widths (head width 64).
fn heads_for_width(dim: usize) -> Option<usize> {
    match dim {
        192 => Some(3),
        384 => Some(6),
        768 => Some(12),
        1024 | 1280 => Some(16),
        _ => None,
    }
}

/// The model configuration of an import: the profile's recipe with the file's
/// architecture.
fn config_for(
    arch: &SourceArchitecture,
    args: &ImportArgs,
    layout: Layout,
    heads: usize,
) -> Result<MsnConfig> {
    let profile = match &args.profile {
        Some(p) => Profile::from_name(p)?,
        None => layout.default_profile(),
    };
    if heads == 0 || !arch.dim.is_multiple_of(heads) {
        bail!(
            "{heads} attention heads do not divide the token width {}",
            arch.dim
        );
    }
    if !arch.mlp_hidden.is_multiple_of(arch.dim) {
        bail!(
            "the MLP width {} is not a multiple of the token width {}",
            arch.mlp_hidden,
            arch.dim
        );
    }
    let channels = args.channels.unwrap_or(arch.channels);
    if channels != arch.channels && !(arch.channels == 3 && channels == 1) {
        bail!(
            "--channels {channels}: a {}-channel patch embedding can only be kept or folded \
             from 3 channels to 1",
            arch.channels
        );
    }
    let mut config = MsnConfig::for_profile(profile, VitPreset::Tiny);
    config.vit = VitConfig {
        image_size: args.image_size,
        patch_size: arch.patch_size,
        channels,
        dim: arch.dim,
        depth: arch.depth,
        heads,
        mlp_ratio: arch.mlp_hidden / arch.dim,
        layer_norm_eps: 1e-6,
    };
    config.head = match arch.head {
        Some(h) => HeadConfig {
            d_in: arch.dim,
            hidden: h.hidden,
            d_out: h.d_out,
            bias_before_bn: h.bias_before_bn,
            ..config.head
        },
        None => {
            // The profile's head for this width.
            let d = arch.dim;
            match profile {
                Profile::Paper => HeadConfig {
                    d_in: d,
                    hidden: 4 * d,
                    d_out: d,
                    ..config.head
                },
                Profile::Msn => HeadConfig {
                    d_in: d,
                    ..config.head
                },
            }
        }
    };
    if let Some(k) = arch.prototypes {
        config.num_prototypes = k;
    }
    config.ehr = match args.ehr.as_str() {
        "none" => None,
        name => {
            let features = FeatureSet::from_name(name)?;
            match arch.ehr {
                Some((ehr_in, ehr_dim)) => {
                    if features.width() != ehr_in {
                        bail!(
                            "--ehr {name} has {} values, the file's EHR layers take {ehr_in}; \
                             choose a feature set of width {ehr_in} (cxr-msn info lists them)",
                            features.width()
                        );
                    }
                    Some(EhrConfig {
                        feature_set: features,
                        ehr_dim,
                    })
                }
                None => Some(EhrConfig::new(features)),
            }
        }
    };
    config.validate()?;
    Ok(config)
}

fn to_data(t: &PackTensor) -> Result<burn::tensor::TensorData> {
    bridge::to_data(t).map_err(|e| anyhow::anyhow!("cannot read tensor {}: {e:?}", t.name))
}

/// Imports the checkpoint `args.checkpoint`.
pub fn import(args: &ImportArgs) -> Result<Imported> {
    let path = &args.checkpoint;
    let ours = super::source::safetensors_metadata(path).is_some_and(|m| {
        m.get(cxr_msn::checkpoint::KEY_FORMAT)
            .and_then(|v| v.as_str())
            == Some(cxr_msn::checkpoint::FORMAT_NAME)
    });
    if ours {
        bail!(
            "{} is already a cxr-msn model file: commands take it as it is (`pretrain --init`, \
             `probe`, `finetune`, `predict`); `import` brings in PyTorch weights",
            path.display()
        );
    }
    let tensors = read_tensors(path)?;
    let names: Vec<String> = tensors.iter().map(|t| t.name.clone()).collect();
    let layout = match args.layout.or_else(|| Layout::detect(&names)) {
        Some(l) => l,
        None => {
            let mut first: Vec<&str> = names.iter().map(String::as_str).collect();
            first.sort_unstable();
            first.truncate(8);
            bail!(
                "{}: cannot tell the layout from its tensor names ({} ...); pass --layout \
                 msn|lightning|torchvision|timm",
                path.display(),
                first.join(", ")
            );
        }
    };
    let (mut tensors, renames) = layout.remapper().remap(tensors);
    // Translated name -> (name in the file, note).
    let mut origin: BTreeMap<String, (String, String)> = renames
        .into_iter()
        .map(|(new, old)| (new, (old, String::new())))
        .collect();
    if layout.single_encoder() {
        let copies: Vec<PackTensor> = tensors
            .iter()
            .filter_map(|t| {
                let rest = t.name.strip_prefix("anchor_vit.")?;
                let mut copy = t.clone();
                copy.name = format!("target_vit.{rest}");
                Some(copy)
            })
            .collect();
        for copy in &copies {
            let from = origin[&format!("anchor_vit.{}", &copy.name["target_vit.".len()..])]
                .0
                .clone();
            origin.insert(
                copy.name.clone(),
                (from, "the file's one encoder, also the EMA target".into()),
            );
        }
        tensors.extend(copies);
    }

    let shapes: BTreeMap<String, Vec<usize>> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect();
    let arch = infer(&shapes).with_context(|| {
        format!(
            "{}: not a ViT checkpoint in the {} layout",
            path.display(),
            layout.name()
        )
    })?;
    let (heads, heads_from) = match (args.heads, super::source::recorded_heads(path)) {
        (Some(h), _) => (h, "--heads"),
        (None, Some(h)) => (h, "recorded in the file by cxr-msn export-torch"),
        (None, None) => match heads_for_width(arch.dim) {
            Some(h) => (
                h,
                "the DeiT/ViT preset of this width; --heads chooses another",
            ),
            None => bail!(
                "{}: cannot tell the number of attention heads of a width-{} ViT; pass --heads",
                path.display(),
                arch.dim
            ),
        },
    };
    let config =
        config_for(&arch, args, layout, heads).with_context(|| format!("{}", path.display()))?;
    let mut meta = ModelMeta::pretraining(config);

    // Position grids and the patch embedding, per branch.
    let grid = meta.config.vit.grid();
    let fold = arch.channels == 3 && meta.config.vit.channels == 1;
    for branch in ["anchor_vit", "target_vit"] {
        let pos_name = format!("{branch}.pos_embed");
        if grid != arch.grid
            && let Some(i) = tensors.iter().position(|t| t.name == pos_name)
        {
            let data = resize_positions(to_data(&tensors[i])?, grid);
            tensors[i] = bridge::from_data(data, pos_name.clone(), None);
            note(
                &mut origin,
                &pos_name,
                &format!("grid {0}x{0} resized to {grid}x{grid}", arch.grid),
            );
        }
        let (w_name, b_name) = (
            format!("{branch}.patch_embed.proj.weight"),
            format!("{branch}.patch_embed.proj.bias"),
        );
        if fold {
            let wi = tensors.iter().position(|t| t.name == w_name);
            let bi = tensors.iter().position(|t| t.name == b_name);
            if let (Some(wi), Some(bi)) = (wi, bi) {
                let (w, b) = fold_to_grey(
                    to_data(&tensors[wi])?,
                    to_data(&tensors[bi])?,
                    &cxr_msn::config::Normalization::imagenet(3),
                    &meta.normalization,
                )?;
                tensors[wi] = bridge::from_data(w, w_name.clone(), None);
                tensors[bi] = bridge::from_data(b, b_name.clone(), None);
                for n in [&w_name, &b_name] {
                    note(&mut origin, n, "RGB folded into one grey channel");
                }
            }
        }
    }

    let device = Device::flex();
    device.seed(0);
    let mut model = meta.config.init(&device)?;
    let adapter = ChainAdapter::new(PyTorchToBurnAdapter, FloatCastAdapter::to(DType::F32));
    let result = model.apply(tensors, None, Some(Box::new(adapter)), false);
    if !result.errors.is_empty() {
        let errors: Vec<String> = result.errors.iter().map(|e| format!("  {e}")).collect();
        bail!(
            "{}: {} tensors do not fit the model read off the file:\n{}",
            path.display(),
            errors.len(),
            errors.join("\n")
        );
    }
    let initialised: Vec<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
    let encoder_missing: Vec<&String> = initialised
        .iter()
        .filter(|p| p.starts_with("anchor_vit.") || p.starts_with("target_vit."))
        .collect();
    if !encoder_missing.is_empty() {
        bail!(
            "{}: the file lacks encoder weights: {}",
            path.display(),
            encoder_missing
                .iter()
                .take(8)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let loaded = result
        .applied
        .iter()
        .map(|to| {
            let (from, note) = origin
                .get(to)
                .cloned()
                .unwrap_or_else(|| (to.clone(), String::new()));
            Loaded {
                from,
                to: to.clone(),
                note,
            }
        })
        .collect();
    // A single encoder's unused tensors were copied into both branches: report each once.
    let mut seen = std::collections::BTreeSet::new();
    let skipped = result
        .unused
        .iter()
        .filter_map(|mapped| {
            let from = origin.get(mapped).map_or(mapped.as_str(), |o| o.0.as_str());
            seen.insert(from.to_string())
                .then(|| (from.to_string(), why_unused(from, mapped).to_string()))
        })
        .collect();
    let file_name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    meta.training.insert("imported_from".into(), file_name);
    meta.training
        .insert("import_layout".into(), layout.name().into());
    Ok(Imported {
        model,
        meta,
        report: ImportReport {
            source: path.clone(),
            layout,
            heads: format!("{heads} ({heads_from})"),
            loaded,
            skipped,
            initialised,
        },
    })
}

fn note(origin: &mut BTreeMap<String, (String, String)>, name: &str, what: &str) {
    if let Some((_, n)) = origin.get_mut(name) {
        if !n.is_empty() {
            n.push_str("; ");
        }
        n.push_str(what);
    }
}

/// Where the report of an import into `out` goes.
pub fn report_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".import.txt");
    out.with_file_name(name)
}

/// `cxr-msn import`: imports, writes the model file and the report, returns a summary.
pub fn run(args: &ImportArgs) -> Result<String> {
    let imported = import(args)?;
    let bytes = write_model(&imported.model, &imported.meta)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomic(&args.out, &bytes)?;
    let report = imported.report.to_string();
    let report_file = report_path(&args.out);
    write_atomic(&report_file, report.as_bytes())?;
    let config = &imported.meta.config;
    let ehr = config.ehr.as_ref().map_or("none", |e| e.feature_set.name());
    let first = report.lines().next().unwrap_or_default();
    Ok(format!(
        "{first}\nmodel: {}; profile {}; EHR {ehr}\nattention heads: {}\nwrote {} (report: {})\n",
        super::describe_vit(&config.vit),
        config.profile.name(),
        imported.report.heads,
        args.out.display(),
        report_file.display()
    ))
}
