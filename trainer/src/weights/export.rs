//! `cxr-msn export-torch`: the encoder of a model file as a safetensors state dict with
//! torchvision or timm names and PyTorch layouts (Linear weights `[out, in]`, LayerNorm
//! `weight`/`bias`), for use from Python:
//!
//! ```python
//! from safetensors.torch import load_file
//! # torchvision: no classifier in the file; drop the model's own or load non-strictly
//! vit = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=12,
//!                                            num_heads=3, hidden_dim=192, mlp_dim=768)
//! vit.heads = torch.nn.Identity()
//! vit.load_state_dict(load_file("encoder.safetensors"))
//! # timm
//! vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=3)
//! vit.load_state_dict(load_file("encoder.safetensors"))
//! ```
//! A 1-channel model needs a 1-channel patch embedding on the Python side too
//! (`in_chans=1` in timm; replace `conv_proj` in torchvision).

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, SafetensorsStore};
use clap::{Args, ValueEnum};
use cxr_msn::vit::VisionTransformer;
use serde::Serialize;

use super::layout::OURS_TO_TORCHVISION;
use crate::files::write_atomic;
use crate::model_files;

/// Which Python library's names to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Names {
    /// `torchvision.models.VisionTransformer` (`conv_proj`, `encoder.layers.encoder_layer_N`).
    Torchvision,
    /// timm / DeiT `VisionTransformer` (`patch_embed.proj`, `blocks.N`): our own names.
    Timm,
}

impl Names {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Torchvision => "torchvision",
            Self::Timm => "timm",
        }
    }
}

/// `cxr-msn export-torch` settings.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ExportTorchArgs {
    /// A cxr-msn model file (pretraining checkpoint: its EMA target encoder; or classifier).
    pub model: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Names to write.
    #[arg(long, value_enum, default_value = "torchvision")]
    pub names: Names,
}

/// The metadata entry of an exported state dict that holds the number of attention heads.
pub const HEADS_KEY: &str = "cxr_msn.heads";

/// The encoder as safetensors bytes with `names`.
pub fn encoder_state_dict(vit: &VisionTransformer, names: Names) -> Result<Vec<u8>> {
    // The one thing the tensors' shapes do not tell: `cxr-msn import` reads it back.
    let heads = vit.blocks.first().map_or(0, |b| b.attn.num_heads);
    let mut store = SafetensorsStore::from_bytes(None)
        .metadata("format", "pt")
        .metadata(HEADS_KEY, heads.to_string())
        .with_to_adapter(BurnToPyTorchAdapter);
    if names == Names::Torchvision {
        let remapper = KeyRemapper::from_patterns(OURS_TO_TORCHVISION.to_vec())
            .expect("the torchvision patterns are valid");
        store = store.remap(remapper);
    }
    vit.clone()
        .valid()
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.get_bytes().map_err(|e| anyhow::anyhow!("{e}"))
}

/// `cxr-msn export-torch`.
pub fn run(args: &ExportTorchArgs) -> Result<String> {
    let device = burn::tensor::Device::flex();
    let (vit, meta) = model_files::encoder(&args.model, &device)?;
    let bytes = encoder_state_dict(&vit, args.names)
        .with_context(|| format!("cannot export the encoder of {}", args.model.display()))?;
    write_atomic(&args.out, &bytes)?;
    Ok(format!(
        "wrote {} ({} names): {}\n",
        args.out.display(),
        args.names.name(),
        super::describe_vit(&meta.config.vit)
    ))
}
