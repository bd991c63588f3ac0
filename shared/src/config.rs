//! Model configuration: ViT presets, the two pretraining profiles (`paper`, `msn`) and
//! every knob that separates them.
//!
//! All structs here are plain serialisable data: they travel inside the model file
//! (see [`crate::checkpoint`]) so that a model is always used the way it was trained.
//! Each default is written next to its field, with where the number comes from.

use serde::{Deserialize, Serialize};

use crate::ehr::FeatureSet;
use crate::error::ConfigError;

/// Named ViT sizes. All use patch 16, 12 blocks and MLP ratio 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VitPreset {
    /// D = 192 with **6** heads, as in the authors' code (nyuad-cai/CXR-EHR-MSN).
    Tiny,
    /// D = 192 with 3 heads: the classic DeiT-Tiny.
    TinyThreeHeads,
    /// D = 384, 6 heads.
    Small,
    /// D = 768, 12 heads.
    Base,
}

impl VitPreset {
    /// Every preset, in size order.
    pub const ALL: [VitPreset; 4] = [Self::Tiny, Self::TinyThreeHeads, Self::Small, Self::Base];

    /// The name used on the command line and in model files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::TinyThreeHeads => "tiny-3h",
            Self::Small => "small",
            Self::Base => "base",
        }
    }

    /// Parses a preset name (`tiny`, `tiny-3h`, `small`, `base`).
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ConfigError::UnknownPreset(name.to_string()))
    }

    /// `(width D, number of heads)`.
    pub fn width_and_heads(self) -> (usize, usize) {
        match self {
            Self::Tiny => (192, 6),
            Self::TinyThreeHeads => (192, 3),
            Self::Small => (384, 6),
            Self::Base => (768, 12),
        }
    }
}

/// Vision Transformer architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Side of the square image the learned position grid belongs to. Default 224
    /// (a 14 x 14 grid); other input sizes resize the grid bicubically.
    pub image_size: usize,
    /// Patch side in pixels. Default 16.
    pub patch_size: usize,
    /// Input channels: 3 (grey repeated, as the authors did) or 1. Default 3.
    pub channels: usize,
    /// Token width D.
    pub dim: usize,
    /// Number of transformer blocks. Default 12.
    pub depth: usize,
    /// Attention heads; must divide `dim`.
    pub heads: usize,
    /// Hidden width of each block's MLP as a multiple of `dim`. Default 4.
    pub mlp_ratio: usize,
    /// LayerNorm epsilon. Default 1e-6 (timm / DeiT).
    pub layer_norm_eps: f64,
}

impl VitConfig {
    /// A named preset at 224 px with the given number of input channels.
    pub fn preset(preset: VitPreset, channels: usize) -> Self {
        let (dim, heads) = preset.width_and_heads();
        Self {
            image_size: 224,
            patch_size: 16,
            channels,
            dim,
            depth: 12,
            heads,
            mlp_ratio: 4,
            layer_norm_eps: 1e-6,
        }
    }

    /// Side of the learned position grid (14 for 224 px and patch 16).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of patch tokens for a square input of side `image_size` (no [CLS]).
    pub fn patches_for(&self, image_size: usize) -> usize {
        let g = image_size / self.patch_size;
        g * g
    }

    /// Checks the invariants the modules rely on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Invalid(format!("vit: {what}")));
        if self.channels != 1 && self.channels != 3 {
            return bad(&format!("channels must be 1 or 3, got {}", self.channels));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return bad(&format!(
                "image_size {} must be a positive multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return bad(&format!(
                "heads ({}) must divide dim ({})",
                self.heads, self.dim
            ));
        }
        if self.depth == 0 || self.mlp_ratio == 0 {
            return bad("depth and mlp_ratio must be positive");
        }
        Ok(())
    }
}

/// Which pretraining recipe a configuration follows (METHOD.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// The authors' code (nyuad-cai/CXR-EHR-MSN), reproduced as it runs.
    Paper,
    /// The original Masked Siamese Networks recipe (facebookresearch/msn).
    Msn,
}

impl Profile {
    /// The name used on the command line and in model files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Paper => "paper",
            Self::Msn => "msn",
        }
    }

    /// Parses `paper` or `msn`.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        match name {
            "paper" => Ok(Self::Paper),
            "msn" => Ok(Self::Msn),
            other => Err(ConfigError::UnknownProfile(other.to_string())),
        }
    }
}

/// Projection head h: Linear -> BN -> GELU -> Linear -> BN -> GELU -> Linear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Input width (the ViT width D).
    pub d_in: usize,
    /// Hidden width. `paper`: 4D; `msn`: 2048.
    pub hidden: usize,
    /// Output width. `paper`: D; `msn`: 256.
    pub d_out: usize,
    /// Bias on the two linears that feed a BatchNorm. `paper`: false; `msn`: true.
    pub bias_before_bn: bool,
    /// BatchNorm epsilon. Default 1e-5 (PyTorch).
    pub bn_eps: f64,
    /// BatchNorm running-statistics momentum. Default 0.1 (PyTorch).
    pub bn_momentum: f64,
}

/// Which anchor views have patch tokens dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskScope {
    /// Every anchor view, 224 and 96 px (`paper`).
    AllAnchors,
    /// Only the full-size (224 px) anchor (`msn`).
    LargeAnchorOnly,
}

/// How the projection head's BatchNorm groups the anchor views for its batch statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadBnGrouping {
    /// One set of statistics over all M x B anchors (`paper`).
    AllAnchors,
    /// One set per view size: the 224 anchors, then the 96 px focal views (`msn`).
    PerViewSize,
}

/// When the EMA target is updated inside a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmaTiming {
    /// Before the forward pass (`paper`, as the authors' Lightning step does).
    BeforeForward,
    /// After the optimiser step (`msn`).
    AfterStep,
}

/// The exponential-moving-average target branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    /// Momentum at step 0. Default 0.996.
    pub base_momentum: f64,
    /// Momentum the linear ramp heads for. `paper`: 0.996 (constant); `msn`: 1.0.
    pub final_momentum: f64,
    /// The ramp reaches `final_momentum` after `ramp_factor` x the planned steps, so it
    /// never quite gets there. `msn`: 1.25; unused when the momentum is constant.
    pub ramp_factor: f64,
    /// When in the step the update happens.
    pub timing: EmaTiming,
    /// The ramp follows a half cosine instead of a straight line (DINO's teacher momentum:
    /// `final - (final - base) * (1 + cos(pi t)) / 2`). Default false.
    #[serde(default)]
    pub cosine: bool,
}

impl EmaConfig {
    /// Momentum for `step` (0-based) of a run planned for `total_steps` steps.
    pub fn momentum(&self, step: usize, total_steps: usize) -> f64 {
        let span = (total_steps as f64 * self.ramp_factor).max(1.0);
        let t = (step as f64 / span).min(1.0);
        let progress = if self.cosine {
            (1.0 - (std::f64::consts::PI * t).cos()) / 2.0
        } else {
            t
        };
        self.base_momentum + (self.final_momentum - self.base_momentum) * progress
    }
}

/// The MSN loss knobs (METHOD.md section 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// Softmax temperature tau on cosine similarities. Default 0.1.
    pub temperature: f64,
    /// Target sharpening temperature T (targets use tau x T). Default 0.25.
    pub sharpen_temperature: f64,
    /// Sinkhorn-Knopp iterations on the target assignments; 0 turns balancing off. Default 3.
    pub sinkhorn_iterations: usize,
    /// Weight of the mean-entropy maximisation term. Default 1.0.
    pub me_max_weight: f64,
    /// Weight of the per-anchor entropy term. Default 0.0.
    pub entropy_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            sharpen_temperature: 0.25,
            sinkhorn_iterations: 3,
            me_max_weight: 1.0,
            entropy_weight: 0.0,
        }
    }
}

/// Arithmetic precision of the training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f16 mixed precision (`paper`; the loss stays in f32).
    F16Mixed,
    /// f32 throughout (`msn`).
    F32,
}

/// Optimiser and schedules. The trainer reads these; the model crate only records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Epochs of linear learning-rate warm-up. `paper`: 0; `msn`: 15.
    pub warmup_epochs: usize,
    /// Learning rate at the start of warm-up. `paper`: 1e-4 (no warm-up); `msn`: 2e-4.
    pub start_lr: f64,
    /// Learning rate after warm-up, where the cosine decay starts. `paper`: 1e-4; `msn`: 1e-3.
    pub peak_lr: f64,
    /// Learning rate at the end of the cosine. `paper`: 0.0; `msn`: 1e-6.
    pub final_lr: f64,
    /// The cosine advances once per epoch (`paper`) instead of every step (`msn`).
    pub lr_per_epoch: bool,
    /// AdamW weight decay at the start. `paper`: 1e-3; `msn`: 0.04.
    pub weight_decay_start: f64,
    /// AdamW weight decay at the end (cosine). `paper`: 1e-3; `msn`: 0.4.
    pub weight_decay_end: f64,
    /// Decay biases, norm parameters and prototypes too. `paper`: true; `msn`: false.
    pub decay_all_parameters: bool,
    /// Clip the global gradient norm to this value. `paper`: none; `msn`: 3.0.
    pub clip_grad_norm: Option<f64>,
    /// Images per batch. `paper`: 64; `msn`: 1024.
    pub batch_size: usize,
    /// Planned epochs. `paper`: 100; `msn`: 800.
    pub epochs: usize,
    /// `paper`: f16 mixed; `msn`: f32.
    pub precision: Precision,
}

/// The views drawn from each image (METHOD.md section 4). Identical in both profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewConfig {
    /// Side of the target and the random anchor view. Default 224.
    pub large_size: usize,
    /// RandomResizedCrop area scale range of the large views. Default (0.3, 1.0).
    pub large_scale: (f64, f64),
    /// Side of the focal anchor views. Default 96.
    pub focal_size: usize,
    /// RandomResizedCrop area scale range of the focal views. Default (0.05, 0.3).
    pub focal_scale: (f64, f64),
    /// Aspect-ratio range of every crop. Default (3/4, 4/3).
    pub ratio: (f64, f64),
    /// Number of focal views per image. Default 10, so M = 11 anchors.
    pub focal_views: usize,
    /// Horizontal flip probability. Default 0.5.
    pub flip_probability: f64,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self {
            large_size: 224,
            large_scale: (0.3, 1.0),
            focal_size: 96,
            focal_scale: (0.05, 0.3),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            focal_views: 10,
            flip_probability: 0.5,
        }
    }
}

impl ViewConfig {
    /// Anchor views per image, M = 1 + focal views.
    pub fn anchors_per_image(&self) -> usize {
        1 + self.focal_views
    }
}

/// The EHR branch of the anchor: f_ehr (Linear ehr_in -> ehr_dim) and g (Linear D + ehr_dim -> D).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EhrConfig {
    /// Which EHR variables are encoded, and how (one of the 23 named sets or a custom list).
    pub feature_set: FeatureSet,
    /// Width of the EHR embedding f_ehr(e). Default 128.
    pub ehr_dim: usize,
}

impl EhrConfig {
    /// The default EHR branch for a feature set: ehr_dim 128.
    pub fn new(feature_set: FeatureSet) -> Self {
        Self {
            feature_set,
            ehr_dim: 128,
        }
    }
}

/// The self-supervised method a run pretrains with. The baselines share the encoder, the
/// views, the EMA, the optimiser and the schedules with MSN; only their heads and losses
/// differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// (Multimodal) Masked Siamese Networks, the project's method.
    #[default]
    Msn,
    /// DINO (Caron et al. 2021, arXiv 2104.14294): student/teacher self-distillation.
    Dino,
    /// Masked autoencoder (He et al. 2021, arXiv 2111.06377): pixel reconstruction.
    Mae,
    /// No pretraining: the encoder at its random initialisation.
    Random,
}

impl Method {
    /// Every method, in the order of the comparison table.
    pub const ALL: [Method; 4] = [Self::Random, Self::Mae, Self::Dino, Self::Msn];

    /// The name used on the command line and in model files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Msn => "msn",
            Self::Dino => "dino",
            Self::Mae => "mae",
            Self::Random => "random",
        }
    }

    /// Parses `msn`, `dino`, `mae` or `random`.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "unknown method '{name}'; expected msn, dino, mae or random"
                ))
            })
    }
}

/// The DINO baseline's head and loss (defaults: the authors' baseline head and DINO's
/// ViT recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DinoConfig {
    /// Hidden width of the head's MLP. Default 512 (the authors' baseline).
    pub hidden: usize,
    /// Bottleneck width before the L2-normalised last layer. Default 256.
    pub bottleneck: usize,
    /// Output dimension K of the last layer. Default 1024.
    pub out_dim: usize,
    /// Student softmax temperature. Default 0.1.
    pub student_temperature: f64,
    /// Teacher temperature at the start of its warm-up. Default 0.04.
    pub warmup_teacher_temperature: f64,
    /// Teacher temperature after the warm-up. Default 0.07 (DINO's ViT recipe).
    pub teacher_temperature: f64,
    /// Epochs of linear teacher-temperature warm-up. Default 30.
    pub teacher_warmup_epochs: usize,
    /// Momentum of the centre of the teacher outputs. Default 0.9.
    pub center_momentum: f64,
    /// Epochs during which the head's last layer is not updated. Default 1.
    pub freeze_last_layer_epochs: usize,
}

impl Default for DinoConfig {
    fn default() -> Self {
        Self {
            hidden: 512,
            bottleneck: 256,
            out_dim: 1024,
            student_temperature: 0.1,
            warmup_teacher_temperature: 0.04,
            teacher_temperature: 0.07,
            teacher_warmup_epochs: 30,
            center_momentum: 0.9,
            freeze_last_layer_epochs: 1,
        }
    }
}

impl DinoConfig {
    /// Teacher temperature in `epoch` (0-based): a straight line from the warm-up value
    /// (epoch 0) to the final value (the last warm-up epoch), then constant.
    pub fn teacher_temperature_at(&self, epoch: usize) -> f64 {
        let w = self.teacher_warmup_epochs;
        if epoch >= w {
            return self.teacher_temperature;
        }
        if w == 1 {
            return self.warmup_teacher_temperature;
        }
        let t = epoch as f64 / (w - 1) as f64;
        self.warmup_teacher_temperature
            + (self.teacher_temperature - self.warmup_teacher_temperature) * t
    }
}

/// The MAE baseline's decoder and loss (defaults: the authors' baseline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaeConfig {
    /// Fraction of patch tokens removed before the encoder. Default 0.6.
    pub mask_ratio: f64,
    /// Decoder width. Default 512.
    pub decoder_dim: usize,
    /// Decoder blocks. Default 8.
    pub decoder_depth: usize,
    /// Decoder attention heads. Default 16.
    pub decoder_heads: usize,
    /// Decoder MLP ratio. Default 4.
    pub decoder_mlp_ratio: usize,
    /// Reconstruct per-patch normalised pixels (MAE's `norm_pix_loss`). Default true.
    pub norm_pix_loss: bool,
}

impl Default for MaeConfig {
    fn default() -> Self {
        Self {
            mask_ratio: 0.6,
            decoder_dim: 512,
            decoder_depth: 8,
            decoder_heads: 16,
            decoder_mlp_ratio: 4,
            norm_pix_loss: true,
        }
    }
}

/// Everything that defines a (multimodal) MSN model and how it is pretrained; with
/// `method` set to a baseline, the same settings drive DINO, MAE or no pretraining (the
/// MSN-only fields are then unused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsnConfig {
    /// The pretraining method. Default MSN.
    #[serde(default)]
    pub method: Method,
    /// DINO's head and loss, when `method` is DINO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dino: Option<DinoConfig>,
    /// MAE's decoder and loss, when `method` is MAE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<MaeConfig>,
    /// The recipe this configuration started from.
    pub profile: Profile,
    /// The image encoder.
    pub vit: VitConfig,
    /// The projection head h.
    pub head: HeadConfig,
    /// Number of prototypes K. Default 1024.
    pub num_prototypes: usize,
    /// Prototypes stay at their random initialisation. `paper`: true; `msn`: false.
    pub freeze_prototypes: bool,
    /// Fraction of patch tokens dropped from masked anchor views. Default 0.15.
    pub mask_ratio: f64,
    /// Which anchors are masked.
    pub mask_scope: MaskScope,
    /// Projection-head BatchNorm grouping of the anchors.
    pub head_bn: HeadBnGrouping,
    /// EHR branch; `None` is vanilla MSN.
    pub ehr: Option<EhrConfig>,
    /// Loss knobs.
    pub loss: LossConfig,
    /// EMA target.
    pub ema: EmaConfig,
    /// Optimiser and schedules.
    pub optim: OptimConfig,
    /// Views per image.
    pub views: ViewConfig,
}

impl MsnConfig {
    /// The named profile for a ViT preset, 3 input channels, no EHR.
    pub fn for_profile(profile: Profile, preset: VitPreset) -> Self {
        match profile {
            Profile::Paper => Self::paper(preset),
            Profile::Msn => Self::msn(preset),
        }
    }

    /// The authors' code: head D -> 4D -> 4D -> D without bias before BN, 1024 frozen
    /// prototypes, every anchor masked, one BN group, constant EMA 0.996 before the
    /// forward, AdamW 1e-4 / wd 1e-3, batch 64, 100 epochs, f16 mixed.
    pub fn paper(preset: VitPreset) -> Self {
        let vit = VitConfig::preset(preset, 3);
        let d = vit.dim;
        Self {
            method: Method::Msn,
            dino: None,
            mae: None,
            profile: Profile::Paper,
            head: HeadConfig {
                d_in: d,
                hidden: 4 * d,
                d_out: d,
                bias_before_bn: false,
                bn_eps: 1e-5,
                bn_momentum: 0.1,
            },
            vit,
            num_prototypes: 1024,
            freeze_prototypes: true,
            mask_ratio: 0.15,
            mask_scope: MaskScope::AllAnchors,
            head_bn: HeadBnGrouping::AllAnchors,
            ehr: None,
            loss: LossConfig::default(),
            ema: EmaConfig {
                base_momentum: 0.996,
                final_momentum: 0.996,
                ramp_factor: 1.0,
                timing: EmaTiming::BeforeForward,
                cosine: false,
            },
            optim: OptimConfig {
                warmup_epochs: 0,
                start_lr: 1e-4,
                peak_lr: 1e-4,
                final_lr: 0.0,
                lr_per_epoch: true,
                weight_decay_start: 1e-3,
                weight_decay_end: 1e-3,
                decay_all_parameters: true,
                clip_grad_norm: None,
                batch_size: 64,
                epochs: 100,
                precision: Precision::F16Mixed,
            },
            views: ViewConfig::default(),
        }
    }

    /// The original MSN: head D -> 2048 -> 2048 -> 256 with biases, 1024 learned
    /// prototypes, only the 224 anchor masked, BN per view size, EMA 0.996 rising toward 1
    /// after the step, AdamW with warm-up and cosine schedules, clipping 3.0, f32.
    pub fn msn(preset: VitPreset) -> Self {
        let vit = VitConfig::preset(preset, 3);
        Self {
            method: Method::Msn,
            dino: None,
            mae: None,
            profile: Profile::Msn,
            head: HeadConfig {
                d_in: vit.dim,
                hidden: 2048,
                d_out: 256,
                bias_before_bn: true,
                bn_eps: 1e-5,
                bn_momentum: 0.1,
            },
            vit,
            num_prototypes: 1024,
            freeze_prototypes: false,
            mask_ratio: 0.15,
            mask_scope: MaskScope::LargeAnchorOnly,
            head_bn: HeadBnGrouping::PerViewSize,
            ehr: None,
            loss: LossConfig::default(),
            ema: EmaConfig {
                base_momentum: 0.996,
                final_momentum: 1.0,
                ramp_factor: 1.25,
                timing: EmaTiming::AfterStep,
                cosine: false,
            },
            optim: OptimConfig {
                warmup_epochs: 15,
                start_lr: 2e-4,
                peak_lr: 1e-3,
                final_lr: 1e-6,
                lr_per_epoch: false,
                weight_decay_start: 0.04,
                weight_decay_end: 0.4,
                decay_all_parameters: false,
                clip_grad_norm: Some(3.0),
                batch_size: 1024,
                epochs: 800,
                precision: Precision::F32,
            },
            views: ViewConfig::default(),
        }
    }

    /// Switches to a pretraining method, keeping the profile's encoder, optimiser, schedules
    /// and batch:
    /// - DINO: its head and loss, 2 global views (the target and the random anchor) with
    ///   crop scale 0.4-1 and the focal views as local views with scale 0.05-0.4, teacher
    ///   momentum rising from the profile's base to 1 on a half cosine, after the step;
    /// - MAE: its decoder and loss, one view per image with crop scale 0.2-1 (no focal
    ///   views);
    /// - random: nothing is trained.
    ///
    /// The baselines are image-only: the EHR branch is removed.
    pub fn with_method(mut self, method: Method) -> Self {
        self.method = method;
        self.dino = None;
        self.mae = None;
        match method {
            Method::Msn => {}
            Method::Dino => {
                self.ehr = None;
                self.dino = Some(DinoConfig::default());
                self.views.large_scale = (0.4, 1.0);
                self.views.focal_scale = (0.05, 0.4);
                self.ema = EmaConfig {
                    base_momentum: self.ema.base_momentum,
                    final_momentum: 1.0,
                    ramp_factor: 1.0,
                    timing: EmaTiming::AfterStep,
                    cosine: true,
                };
            }
            Method::Mae => {
                self.ehr = None;
                self.mae = Some(MaeConfig::default());
                self.views.large_scale = (0.2, 1.0);
                self.views.focal_views = 0;
            }
            Method::Random => self.ehr = None,
        }
        self
    }

    /// Adds the EHR branch for a feature set (multimodal MSN).
    pub fn with_ehr(mut self, feature_set: FeatureSet) -> Self {
        self.ehr = Some(EhrConfig::new(feature_set));
        self
    }

    /// Switches the number of input channels (1 or 3).
    pub fn with_channels(mut self, channels: usize) -> Self {
        self.vit.channels = channels;
        self
    }

    /// Checks every invariant the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.vit.validate()?;
        let bad = |what: String| Err(ConfigError::Invalid(what));
        if self.method != Method::Msn && self.ehr.is_some() {
            return bad(format!(
                "the {} baseline is image-only: it takes no EHR branch",
                self.method.name()
            ));
        }
        match (self.method, &self.dino, &self.mae) {
            (Method::Dino, Some(d), None) => {
                if d.hidden == 0 || d.bottleneck == 0 || d.out_dim == 0 {
                    return bad("dino: head widths must be positive".into());
                }
                if !(d.student_temperature > 0.0
                    && d.teacher_temperature > 0.0
                    && d.warmup_teacher_temperature > 0.0)
                {
                    return bad("dino: temperatures must be positive".into());
                }
                if !(0.0..=1.0).contains(&d.center_momentum) {
                    return bad("dino: center_momentum must be in [0, 1]".into());
                }
            }
            (Method::Mae, None, Some(m)) => {
                if !(0.0..1.0).contains(&m.mask_ratio) {
                    return bad(format!(
                        "mae: mask_ratio must be in [0, 1), got {}",
                        m.mask_ratio
                    ));
                }
                if m.decoder_heads == 0
                    || m.decoder_depth == 0
                    || m.decoder_mlp_ratio == 0
                    || !m.decoder_dim.is_multiple_of(m.decoder_heads)
                    || !m.decoder_dim.is_multiple_of(4)
                {
                    return bad(format!(
                        "mae: decoder_heads ({}) must divide decoder_dim ({}), a multiple of 4; \
                         depth and mlp ratio positive",
                        m.decoder_heads, m.decoder_dim
                    ));
                }
            }
            (Method::Msn | Method::Random, None, None) => {}
            (method, _, _) => {
                return bad(format!(
                    "method {} takes {}",
                    method.name(),
                    match method {
                        Method::Dino => "a [dino] section and no [mae]",
                        Method::Mae => "a [mae] section and no [dino]",
                        _ => "neither a [dino] nor a [mae] section",
                    }
                ));
            }
        }
        if self.head.d_in != self.vit.dim {
            return bad(format!(
                "head.d_in ({}) must equal vit.dim ({})",
                self.head.d_in, self.vit.dim
            ));
        }
        if self.head.hidden == 0 || self.head.d_out == 0 || self.num_prototypes == 0 {
            return bad("head widths and num_prototypes must be positive".into());
        }
        if !(0.0..1.0).contains(&self.mask_ratio) {
            return bad(format!(
                "mask_ratio must be in [0, 1), got {}",
                self.mask_ratio
            ));
        }
        if !(self.loss.temperature > 0.0 && self.loss.sharpen_temperature > 0.0) {
            return bad("loss temperatures must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.ema.base_momentum)
            || !(0.0..=1.0).contains(&self.ema.final_momentum)
        {
            return bad("EMA momenta must be in [0, 1]".into());
        }
        if let Some(ehr) = &self.ehr
            && ehr.ehr_dim == 0
        {
            return bad("ehr.ehr_dim must be positive".into());
        }
        for size in [self.views.large_size, self.views.focal_size] {
            if size % self.vit.patch_size != 0 {
                return bad(format!(
                    "view size {size} is not a multiple of the patch size {}",
                    self.vit.patch_size
                ));
            }
        }
        Ok(())
    }
}

/// Pixel normalisation applied after scaling intensities to [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Per-channel mean (one value per input channel).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Normalization {
    /// ImageNet statistics, which the authors used in pretraining.
    pub fn imagenet(channels: usize) -> Self {
        Self::select(channels, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    }

    /// Chest X-ray statistics, which the authors used in evaluation.
    pub fn cxr(channels: usize) -> Self {
        Self::select(channels, [0.4884, 0.4550, 0.4171], [0.2596, 0.2530, 0.2556])
    }

    /// For one channel the mean of the three channel statistics is used.
    fn select(channels: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        if channels == 3 {
            Self {
                mean: mean.to_vec(),
                std: std.to_vec(),
            }
        } else {
            Self {
                mean: vec![mean.iter().sum::<f32>() / 3.0],
                std: vec![std.iter().sum::<f32>() / 3.0],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_documented_sizes() {
        assert_eq!(VitPreset::Tiny.width_and_heads(), (192, 6));
        assert_eq!(VitPreset::TinyThreeHeads.width_and_heads(), (192, 3));
        assert_eq!(VitPreset::Small.width_and_heads(), (384, 6));
        assert_eq!(VitPreset::Base.width_and_heads(), (768, 12));
        for p in VitPreset::ALL {
            assert_eq!(VitPreset::from_name(p.name()).unwrap(), p);
            VitConfig::preset(p, 1).validate().unwrap();
        }
        assert!(VitPreset::from_name("huge").is_err());
    }

    #[test]
    fn profiles_differ_where_method_md_says() {
        let paper = MsnConfig::paper(VitPreset::Small);
        let msn = MsnConfig::msn(VitPreset::Small);
        paper.validate().unwrap();
        msn.validate().unwrap();
        assert_eq!(
            (paper.head.hidden, paper.head.d_out),
            (4 * 384, 384),
            "paper head D -> 4D -> 4D -> D"
        );
        assert_eq!((msn.head.hidden, msn.head.d_out), (2048, 256));
        assert!(!paper.head.bias_before_bn && msn.head.bias_before_bn);
        assert!(paper.freeze_prototypes && !msn.freeze_prototypes);
        assert_eq!(paper.mask_scope, MaskScope::AllAnchors);
        assert_eq!(msn.mask_scope, MaskScope::LargeAnchorOnly);
        assert_eq!(paper.head_bn, HeadBnGrouping::AllAnchors);
        assert_eq!(msn.head_bn, HeadBnGrouping::PerViewSize);
        assert_eq!(paper.ema.timing, EmaTiming::BeforeForward);
        assert_eq!(msn.ema.timing, EmaTiming::AfterStep);
        assert_eq!(paper.optim.clip_grad_norm, None);
        assert_eq!(msn.optim.clip_grad_norm, Some(3.0));
        assert_eq!((paper.optim.batch_size, paper.optim.epochs), (64, 100));
        assert_eq!((msn.optim.batch_size, msn.optim.epochs), (1024, 800));
        assert_eq!(paper.views.anchors_per_image(), 11);
        for p in [Profile::Paper, Profile::Msn] {
            assert_eq!(Profile::from_name(p.name()).unwrap(), p);
        }
    }

    #[test]
    fn ema_momentum_schedules() {
        let paper = MsnConfig::paper(VitPreset::Tiny).ema;
        assert_eq!(paper.momentum(0, 100), 0.996);
        assert_eq!(paper.momentum(99, 100), 0.996);
        let msn = MsnConfig::msn(VitPreset::Tiny).ema;
        assert_eq!(msn.momentum(0, 100), 0.996);
        // Linear toward 1 over 1.25 x 100 = 125 steps: at step 100, 0.996 + 0.004 * 0.8.
        assert!((msn.momentum(100, 100) - (0.996 + 0.004 * 0.8)).abs() < 1e-12);
        assert!(msn.momentum(1000, 100) <= 1.0);
        // DINO's teacher: 1 - (1 - 0.996) (cos(pi i / n) + 1) / 2.
        let dino = MsnConfig::paper(VitPreset::Tiny)
            .with_method(Method::Dino)
            .ema;
        for (step, want) in [(0, 0.996), (50, 0.998), (100, 1.0)] {
            assert!((dino.momentum(step, 100) - want).abs() < 1e-12, "{step}");
        }
        let quarter = 1.0 - 0.004 * ((std::f64::consts::PI / 4.0).cos() + 1.0) / 2.0;
        assert!((dino.momentum(25, 100) - quarter).abs() < 1e-12);
    }

    #[test]
    fn baselines_keep_the_recipe_and_refuse_an_ehr_branch() {
        let paper = MsnConfig::paper(VitPreset::Tiny);
        for method in Method::ALL {
            let c = paper.clone().with_method(method);
            c.validate().unwrap();
            assert_eq!(c.optim, paper.optim, "{method:?} trains like MSN");
            assert_eq!(Method::from_name(method.name()).unwrap(), method);
        }
        let mae = paper.clone().with_method(Method::Mae);
        assert_eq!(
            (mae.views.focal_views, mae.views.large_scale),
            (0, (0.2, 1.0))
        );
        assert_eq!(mae.mae.as_ref().unwrap().mask_ratio, 0.6);
        let dino = paper.clone().with_method(Method::Dino);
        assert_eq!(dino.views.focal_views, 10, "2 global + 10 local views");
        let d = dino.dino.as_ref().unwrap();
        assert_eq!((d.hidden, d.bottleneck, d.out_dim), (512, 256, 1024));
        let mut bad = dino.clone();
        bad.ehr = paper
            .clone()
            .with_ehr(FeatureSet::from_name("sex").unwrap())
            .ehr;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("image-only")
        );
        let mut bad = dino;
        bad.mae = Some(MaeConfig::default());
        assert!(bad.validate().is_err());
        assert!(Method::from_name("byol").is_err());
    }

    #[test]
    fn invalid_configs_are_rejected_with_a_reason() {
        let mut c = MsnConfig::paper(VitPreset::Tiny);
        c.vit.heads = 5;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("heads"), "{err}");
        let mut c = MsnConfig::paper(VitPreset::Tiny);
        c.mask_ratio = 1.0;
        assert!(c.validate().unwrap_err().to_string().contains("mask_ratio"));
        let c = MsnConfig::paper(VitPreset::Tiny).with_channels(2);
        assert!(c.validate().unwrap_err().to_string().contains("channels"));
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = MsnConfig::msn(VitPreset::Base)
            .with_ehr(FeatureSet::from_name("all-age5").unwrap())
            .with_channels(1);
        let json = serde_json::to_string(&c).unwrap();
        let back: MsnConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}
