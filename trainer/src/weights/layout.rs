//! The key layouts of the checkpoints researchers bring, and their translation into the
//! parameter paths of [`cxr_msn::msn::MultimodalMsn`] (with PyTorch's own leaf names,
//! `weight`/`bias`, which burn-store's PyTorch adapter turns into Burn's).
//!
//! | layout        | where it comes from | encoder(s) | head | other |
//! |---------------|---------------------|------------|------|-------|
//! | `msn`         | facebookresearch/msn `*.pth.tar` | `encoder.module.*` (anchor), `target_encoder.module.*` (target), DeiT/timm names | `module.fc.{fc1,bn1,fc2,bn2,fc3}` | `prototypes` |
//! | `lightning`   | nyuad-cai/CXR-EHR-MSN `.ckpt` | `state_dict.anchor_backbone.*`, `state_dict.backbone.*` (target), torchvision names | `[anchor_]projection_head.layers.{0,1,3,4,6}` | `prototypes`, `f_ehr`, `ehr_cxr_project_g` |
//! | `torchvision` | `torchvision.models.VisionTransformer.state_dict()` | one, copied into both branches | - | `heads.head` skipped |
//! | `timm`        | timm / DeiT state dicts (`.pth` or `model.safetensors`) | one, copied into both branches | - | `head` skipped |
//!
//! Translation is a list of regular expressions applied in order by burn-store's
//! [`KeyRemapper`]; names it does not touch are reported as unused by the import.

use burn::store::KeyRemapper;
use serde::Serialize;

/// A checkpoint key layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// The official Masked Siamese Networks release (facebookresearch/msn).
    Msn,
    /// The authors' PyTorch Lightning checkpoint (nyuad-cai/CXR-EHR-MSN).
    Lightning,
    /// A torchvision VisionTransformer state dict.
    Torchvision,
    /// A timm (or DeiT) VisionTransformer state dict.
    Timm,
}

/// torchvision's encoder names under an `anchor_vit.`/`target_vit.` prefix (optionally
/// inside lightly's `vit.` wrapper) -> ours. Block renames run after the block prefix
/// itself has been rewritten.
const TORCHVISION_TO_OURS: &[(&str, &str)] = &[
    (r"^(anchor_vit|target_vit)\.vit\.", "$1."),
    (r"^(anchor_vit|target_vit)\.class_token$", "$1.cls_token"),
    (
        r"^(anchor_vit|target_vit)\.conv_proj\.",
        "$1.patch_embed.proj.",
    ),
    (
        r"^(anchor_vit|target_vit)\.encoder\.pos_embedding$",
        "$1.pos_embed",
    ),
    (
        r"^(anchor_vit|target_vit)\.encoder\.layers\.encoder_layer_(\d+)\.",
        "$1.blocks.$2.",
    ),
    (r"^(anchor_vit|target_vit)\.encoder\.ln\.", "$1.norm."),
    (r"^(\w+_vit\.blocks\.\d+)\.ln_1\.", "$1.norm1."),
    (r"^(\w+_vit\.blocks\.\d+)\.ln_2\.", "$1.norm2."),
    (
        r"^(\w+_vit\.blocks\.\d+)\.self_attention\.in_proj_weight$",
        "$1.attn.qkv.weight",
    ),
    (
        r"^(\w+_vit\.blocks\.\d+)\.self_attention\.in_proj_bias$",
        "$1.attn.qkv.bias",
    ),
    (
        r"^(\w+_vit\.blocks\.\d+)\.self_attention\.out_proj\.",
        "$1.attn.proj.",
    ),
    (
        r"^(\w+_vit\.blocks\.\d+)\.mlp\.(?:0|linear_1)\.",
        "$1.mlp.fc1.",
    ),
    (
        r"^(\w+_vit\.blocks\.\d+)\.mlp\.(?:3|linear_2)\.",
        "$1.mlp.fc2.",
    ),
];

/// Ours -> torchvision's encoder names, for [`crate::weights::export`].
pub const OURS_TO_TORCHVISION: &[(&str, &str)] = &[
    (r"^cls_token$", "class_token"),
    (r"^pos_embed$", "encoder.pos_embedding"),
    (r"^patch_embed\.proj\.", "conv_proj."),
    (r"^norm\.", "encoder.ln."),
    (r"^blocks\.(\d+)\.", "encoder.layers.encoder_layer_$1."),
    (
        r"^(encoder\.layers\.encoder_layer_\d+)\.norm1\.",
        "$1.ln_1.",
    ),
    (
        r"^(encoder\.layers\.encoder_layer_\d+)\.norm2\.",
        "$1.ln_2.",
    ),
    (
        r"^(encoder\.layers\.encoder_layer_\d+)\.attn\.qkv\.weight$",
        "$1.self_attention.in_proj_weight",
    ),
    (
        r"^(encoder\.layers\.encoder_layer_\d+)\.attn\.qkv\.bias$",
        "$1.self_attention.in_proj_bias",
    ),
    (
        r"^(encoder\.layers\.encoder_layer_\d+)\.attn\.proj\.",
        "$1.self_attention.out_proj.",
    ),
    (
        r"^(encoder\.layers\.encoder_layer_\d+)\.mlp\.fc1\.",
        "$1.mlp.0.",
    ),
    (
        r"^(encoder\.layers\.encoder_layer_\d+)\.mlp\.fc2\.",
        "$1.mlp.3.",
    ),
];

/// lightly's `ProjectionHead.layers` indices -> our head's fields.
const LIGHTLY_HEAD_TO_OURS: &[(&str, &str)] = &[
    (r"^(anchor|target)_head\.layers\.0\.", "${1}_head.fc1."),
    (r"^(anchor|target)_head\.layers\.1\.", "${1}_head.bn1."),
    (r"^(anchor|target)_head\.layers\.3\.", "${1}_head.fc2."),
    (r"^(anchor|target)_head\.layers\.4\.", "${1}_head.bn2."),
    (r"^(anchor|target)_head\.layers\.6\.", "${1}_head.fc3."),
];

impl Layout {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Msn => "msn",
            Self::Lightning => "lightning",
            Self::Torchvision => "torchvision",
            Self::Timm => "timm",
        }
    }

    /// Tells the layout from the tensor names of a file; `None` when nothing fits.
    pub fn detect<S: AsRef<str>>(names: &[S]) -> Option<Self> {
        let any = |f: &dyn Fn(&str) -> bool| names.iter().any(|n| f(n.as_ref()));
        if any(&|n| {
            (n.starts_with("encoder.") || n.starts_with("target_encoder."))
                && n.ends_with("cls_token")
        }) {
            return Some(Self::Msn);
        }
        if any(&|n| n.contains("anchor_backbone.") && n.ends_with("class_token")) {
            return Some(Self::Lightning);
        }
        if any(&|n| matches!(strip_wrappers(n), "class_token" | "conv_proj.weight")) {
            return Some(Self::Torchvision);
        }
        if any(&|n| matches!(strip_wrappers(n), "patch_embed.proj.weight" | "cls_token")) {
            return Some(Self::Timm);
        }
        None
    }

    /// Whether the file holds one encoder (copied into the anchor and the target branch).
    pub fn single_encoder(self) -> bool {
        matches!(self, Self::Torchvision | Self::Timm)
    }

    /// The profile whose head and recipe match the file's origin: `msn` for the official
    /// release, `paper` otherwise.
    pub fn default_profile(self) -> cxr_msn::config::Profile {
        match self {
            Self::Msn => cxr_msn::config::Profile::Msn,
            _ => cxr_msn::config::Profile::Paper,
        }
    }

    /// The renaming rules, in order. Single-encoder layouts land in `anchor_vit.`.
    pub fn rules(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Self::Msn => vec![
                (r"^encoder\.(?:module\.)?", "anchor_vit."),
                (r"^target_encoder\.(?:module\.)?", "target_vit."),
                (r"^(anchor|target)_vit\.fc\.", "${1}_head."),
            ],
            Self::Lightning => {
                let mut r = vec![
                    (r"^state_dict\.", ""),
                    (r"^(?:model\.)?anchor_backbone\.", "anchor_vit."),
                    (r"^(?:model\.)?backbone\.", "target_vit."),
                    (r"^(?:model\.)?anchor_projection_head\.", "anchor_head."),
                    (r"^(?:model\.)?projection_head\.", "target_head."),
                    (r"^(?:model\.)?f_ehr\.", "ehr.f_ehr."),
                    (r"^(?:model\.)?ehr_cxr_project_g\.", "ehr.g."),
                    (r"^model\.prototypes$", "prototypes"),
                ];
                r.extend_from_slice(LIGHTLY_HEAD_TO_OURS);
                r.extend_from_slice(TORCHVISION_TO_OURS);
                r
            }
            Self::Torchvision => {
                let mut r = vec![(
                    r"^(?:(?:model|state_dict|module)\.)*(class_token$|conv_proj\.|encoder\.|heads\.)",
                    "anchor_vit.$1",
                )];
                r.extend_from_slice(TORCHVISION_TO_OURS);
                r
            }
            Self::Timm => vec![(
                r"^(?:(?:model|state_dict|module)\.)*(cls_token$|pos_embed$|patch_embed\.|blocks\.|norm\.|head\.|fc_norm\.)",
                "anchor_vit.$1",
            )],
        }
    }

    /// [`Self::rules`] as burn-store's remapper.
    pub fn remapper(self) -> KeyRemapper {
        KeyRemapper::from_patterns(self.rules()).expect("the layout patterns are valid")
    }
}

/// A name without the wrappers plain state dicts are often saved in: `{'model': ...}`
/// (DeiT releases), `{'state_dict': ...}`, DistributedDataParallel's `module.`.
fn strip_wrappers(mut name: &str) -> &str {
    while let Some(rest) = ["model.", "state_dict.", "module."]
        .iter()
        .find_map(|p| name.strip_prefix(p))
    {
        name = rest;
    }
    name
}

/// Why a tensor of the file has no place in the model, for the report.
pub fn why_unused(original: &str, mapped: &str) -> &'static str {
    let leaf = original.rsplit('.').next().unwrap_or(original);
    if original.starts_with("opt.") || original.starts_with("optimizer_states.") {
        "optimiser state"
    } else if leaf == "num_batches_tracked" {
        "BatchNorm's batch counter"
    } else if mapped.contains("_vit.heads.") || mapped.contains("_vit.head.") {
        "the source task's classifier"
    } else if leaf == "mask_token" {
        "mask token (MSN drops masked tokens instead)"
    } else if mapped.starts_with("ehr.") {
        "EHR layers: pass --ehr with a feature set of the same width to keep them"
    } else if original.starts_with("lr_schedulers.") || original.starts_with("loops.") {
        "training-loop state"
    } else {
        "no counterpart in cxr-msn"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::store::bridge;
    use burn::store::burn_pack::Tensor as PackTensor;
    use burn::tensor::TensorData;

    fn remap(layout: Layout, names: &[&str]) -> Vec<String> {
        let tensors: Vec<PackTensor> = names
            .iter()
            .map(|n| bridge::from_data(TensorData::new(vec![0f32], [1]), n.to_string(), None))
            .collect();
        let (out, _) = layout.remapper().remap(tensors);
        out.into_iter().map(|t| t.name).collect()
    }

    #[test]
    fn layouts_are_told_apart_by_their_names() {
        assert_eq!(
            Layout::detect(&["target_encoder.module.cls_token", "opt.state.0.exp_avg"]),
            Some(Layout::Msn)
        );
        assert_eq!(
            Layout::detect(&["state_dict.anchor_backbone.class_token"]),
            Some(Layout::Lightning)
        );
        assert_eq!(
            Layout::detect(&["conv_proj.weight", "class_token"]),
            Some(Layout::Torchvision)
        );
        assert_eq!(
            Layout::detect(&["module.patch_embed.proj.weight"]),
            Some(Layout::Timm)
        );
        assert_eq!(
            Layout::detect(&["fc.weight", "layer1.0.conv1.weight"]),
            None
        );
    }

    #[test]
    fn msn_names_map_onto_both_branches_and_heads() {
        let got = remap(
            Layout::Msn,
            &[
                "encoder.module.blocks.3.attn.qkv.weight",
                "target_encoder.module.fc.bn2.running_var",
                "encoder.module.fc.fc3.bias",
                "prototypes",
                "opt.state.0.exp_avg",
            ],
        );
        assert_eq!(
            got,
            [
                "anchor_vit.blocks.3.attn.qkv.weight",
                "target_head.bn2.running_var",
                "anchor_head.fc3.bias",
                "prototypes",
                "opt.state.0.exp_avg",
            ]
        );
    }

    #[test]
    fn lightning_names_map_torchvision_blocks_and_lightly_heads() {
        let got = remap(
            Layout::Lightning,
            &[
                "state_dict.backbone.encoder.layers.encoder_layer_11.self_attention.in_proj_weight",
                "state_dict.anchor_backbone.vit.encoder.layers.encoder_layer_0.mlp.3.bias",
                "state_dict.anchor_backbone.encoder.layers.encoder_layer_2.ln_2.weight",
                "state_dict.backbone.encoder.pos_embedding",
                "state_dict.anchor_projection_head.layers.4.running_mean",
                "state_dict.projection_head.layers.6.weight",
                "state_dict.ehr_cxr_project_g.bias",
                "state_dict.f_ehr.weight",
                "state_dict.backbone.heads.head.weight",
            ],
        );
        assert_eq!(
            got,
            [
                "target_vit.blocks.11.attn.qkv.weight",
                "anchor_vit.blocks.0.mlp.fc2.bias",
                "anchor_vit.blocks.2.norm2.weight",
                "target_vit.pos_embed",
                "anchor_head.bn2.running_mean",
                "target_head.fc3.weight",
                "ehr.g.bias",
                "ehr.f_ehr.weight",
                "target_vit.heads.head.weight",
            ]
        );
    }

    #[test]
    fn torchvision_names_round_trip_through_ours() {
        let names = [
            "class_token",
            "conv_proj.bias",
            "encoder.pos_embedding",
            "encoder.layers.encoder_layer_10.ln_1.bias",
            "encoder.layers.encoder_layer_10.self_attention.in_proj_bias",
            "encoder.layers.encoder_layer_1.self_attention.out_proj.weight",
            "encoder.layers.encoder_layer_1.mlp.0.weight",
            "encoder.ln.weight",
        ];
        let ours = remap(Layout::Torchvision, &names);
        assert_eq!(ours[3], "anchor_vit.blocks.10.norm1.bias");
        assert_eq!(ours[6], "anchor_vit.blocks.1.mlp.fc1.weight");
        let back = KeyRemapper::from_patterns(OURS_TO_TORCHVISION.to_vec()).unwrap();
        let tensors = ours
            .iter()
            .map(|n| {
                let n = n.strip_prefix("anchor_vit.").unwrap().to_string();
                bridge::from_data(TensorData::new(vec![0f32], [1]), n, None)
            })
            .collect();
        let (back, _) = back.remap(tensors);
        let back: Vec<String> = back.into_iter().map(|t| t.name).collect();
        assert_eq!(back, names);
    }
}
