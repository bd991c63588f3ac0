//! A pretraining model of any method ([`Method`]), and the encoder it leaves for
//! downstream use. The trainer drives every method through this one type; each variant
//! keeps its own model-file layout (the MSN file is unchanged by the baselines).

use burn::module::Module;
use burn::tensor::Device;

use crate::checkpoint::{ModelKind, ModelMeta, load_weights, read_meta, write_model};
use crate::classifier::Classifier;
use crate::config::{Method, MsnConfig};
use crate::dino::Dino;
use crate::error::{CheckpointError, ConfigError};
use crate::heads::EhrFusion;
use crate::mae::Mae;
use crate::msn::MultimodalMsn;
use crate::vit::VisionTransformer;

/// The model a pretraining run trains.
// The variants are handles to tensors (a few KB at most, moved once per step); boxing them
// would need a `Module` implementation for `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Pretrained {
    /// (Multimodal) MSN.
    Msn(MultimodalMsn),
    /// DINO student and teacher.
    Dino(Dino),
    /// MAE encoder and decoder.
    Mae(Mae),
    /// A randomly initialised encoder (nothing is trained).
    Random(VisionTransformer),
}

impl Pretrained {
    /// A fresh model for `config`'s method. Random values come from the device's generator
    /// (seed it first).
    pub fn init(config: &MsnConfig, device: &Device) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(match config.method {
            Method::Msn => Self::Msn(config.init(device)?),
            Method::Dino => Self::Dino(config.init_dino(device)?),
            Method::Mae => Self::Mae(config.init_mae(device)?),
            Method::Random => Self::Random(config.vit.init(device)),
        })
    }

    /// The method of this model.
    pub fn method(&self) -> Method {
        match self {
            Self::Msn(_) => Method::Msn,
            Self::Dino(_) => Method::Dino,
            Self::Mae(_) => Method::Mae,
            Self::Random(_) => Method::Random,
        }
    }

    /// Moves the EMA copy (MSN's target, DINO's teacher) toward the trained branch; MAE and
    /// the random encoder have none.
    pub fn ema_update(&mut self, momentum: f64) {
        match self {
            Self::Msn(m) => m.ema_update(momentum),
            Self::Dino(d) => d.ema_update(momentum),
            Self::Mae(_) | Self::Random(_) => {}
        }
    }

    /// The encoder kept for downstream use: MSN's EMA target, DINO's teacher, MAE's
    /// encoder, or the random one.
    pub fn encoder(&self) -> VisionTransformer {
        match self {
            Self::Msn(m) => m.encoder(),
            Self::Dino(d) => d.encoder(),
            Self::Mae(m) => m.encoder.clone(),
            Self::Random(v) => v.clone(),
        }
    }

    /// The pretrained EHR fusion (f_ehr and g) of a multimodal MSN.
    pub fn ehr_fusion(&self) -> Option<&EhrFusion> {
        match self {
            Self::Msn(m) => m.ehr.as_ref(),
            _ => None,
        }
    }

    /// A downstream classifier for `labels` outputs on this model's encoder: a fresh
    /// image-only head and, for a multimodal MSN, an image + EHR head seeded with the
    /// pretrained f_ehr and g.
    pub fn classifier(&self, config: &MsnConfig, labels: usize, device: &Device) -> Classifier {
        match self {
            Self::Msn(m) => m.classifier(config, labels, device),
            other => Classifier::new(other.encoder().set_require_grad(true), labels, None, device),
        }
    }

    /// Restates which parameters train after values were loaded into a skeleton (loading
    /// keeps the skeleton's settings; EMA copies and buffers must stay without gradient).
    pub fn restate_gradients(self, config: &MsnConfig) -> Self {
        match self {
            Self::Msn(m) => Self::Msn(m.restate_gradients(config.freeze_prototypes)),
            Self::Dino(d) => Self::Dino(d.restate_gradients()),
            other => other,
        }
    }

    /// Model-file bytes in the variant's own layout (no enum prefix in the names).
    pub fn to_model_file(&self, meta: &ModelMeta) -> Result<Vec<u8>, CheckpointError> {
        match self {
            Self::Msn(m) => write_model(m, meta),
            Self::Dino(d) => write_model(d, meta),
            Self::Mae(m) => write_model(m, meta),
            Self::Random(v) => write_model(v, meta),
        }
    }
}

/// Loads a pretraining model file of any method onto `device`.
pub fn load_pretrained(
    bytes: &[u8],
    device: &Device,
) -> Result<(Pretrained, ModelMeta), CheckpointError> {
    let meta = read_meta(bytes)?;
    if meta.kind != ModelKind::Pretraining {
        return Err(CheckpointError::WrongKind {
            found: "classifier".into(),
            expected: "pretraining".into(),
        });
    }
    let skeleton = Pretrained::init(&meta.config, device)?;
    let model = match skeleton {
        Pretrained::Msn(m) => Pretrained::Msn(load_weights(m, bytes)?),
        Pretrained::Dino(d) => Pretrained::Dino(load_weights(d, bytes)?),
        Pretrained::Mae(m) => Pretrained::Mae(load_weights(m, bytes)?),
        Pretrained::Random(v) => Pretrained::Random(load_weights(v, bytes)?),
    };
    Ok((model.restate_gradients(&meta.config), meta))
}
