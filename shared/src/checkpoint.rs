//! The model file: a safetensors container holding the weights, with everything needed to
//! use them in its metadata (architecture and profile, input channels and size,
//! normalisation, label names and order, EHR feature set, operating points, format
//! version, how it was trained).
//!
//! Layout: standard safetensors (an 8-byte little-endian header length, a JSON header,
//! then raw little-endian tensors), so any safetensors reader can inspect it. Tensor names
//! are the module paths (`encoder.blocks.0.attn.qkv.weight`, ...). The header's
//! `__metadata__` carries:
//! - `cxr_msn.format` = `cxr-msn-model`
//! - `cxr_msn.format_version` = [`FORMAT_VERSION`]
//! - `cxr_msn.meta` = [`ModelMeta`] as JSON.
//!
//! Everything works on bytes (the browser has no file system); the trainer writes the
//! bytes to disk atomically. Reading never panics on a bad file: a truncated, foreign or
//! mismatched file is a [`CheckpointError`] that says what is wrong.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::store::{
    ApplyError, FloatCastAdapter, HalfPrecisionAdapter, ModuleSnapshot, SafetensorsStore,
};
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::classifier::Classifier;
use crate::config::{Method, MsnConfig, Normalization};
use crate::error::CheckpointError;
use crate::msn::MultimodalMsn;
use crate::novelty::EmbeddingReference;
use crate::prototype_head::PrototypeHead;

/// Version of the layout and metadata written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Value of the `cxr_msn.format` metadata key.
pub const FORMAT_NAME: &str = "cxr-msn-model";
/// The metadata key that marks a cxr-msn model file (its value is [`FORMAT_NAME`]).
pub const KEY_FORMAT: &str = "cxr_msn.format";
const KEY_VERSION: &str = "cxr_msn.format_version";
const KEY_META: &str = "cxr_msn.meta";

/// What a model file contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// The whole pretraining model ([`MultimodalMsn`]): resumable, and the source of encoders.
    Pretraining,
    /// Encoder plus classifier heads ([`Classifier`]): what `predict` and the browser load.
    Classifier,
}

impl ModelKind {
    fn name(self) -> &'static str {
        match self {
            Self::Pretraining => "pretraining",
            Self::Classifier => "classifier",
        }
    }
}

/// Everything about a model except its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// What the weights are.
    pub kind: ModelKind,
    /// Architecture, profile, EHR feature set and training recipe.
    pub config: MsnConfig,
    /// Pixel normalisation the model expects (one value per input channel).
    pub normalization: Normalization,
    /// Label names in output order (empty for a pretraining model).
    pub labels: Vec<String>,
    /// Per-label decision thresholds on the probabilities, in label order (empty when the
    /// model has not been calibrated).
    pub operating_points: Vec<f32>,
    /// How the model was made: seed, steps, dataset, git revision, ... (free-form).
    pub training: BTreeMap<String, String>,
    /// Embedding statistics of validation images for the "unlike the training images"
    /// warning (set by `cxr-msn export`; absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_reference: Option<EmbeddingReference>,
    /// Whether a classifier file also carries MSN's projection head and prototypes
    /// ([`Classifier::prototype_head`], for the browser's learn mode; set by `cxr-msn
    /// export --prototypes-from`; false in older files).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prototype_head: bool,
}

impl ModelMeta {
    /// Metadata for a pretraining model of `config`, ImageNet normalisation as the authors.
    pub fn pretraining(config: MsnConfig) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            kind: ModelKind::Pretraining,
            normalization: Normalization::imagenet(config.vit.channels),
            config,
            labels: Vec::new(),
            operating_points: Vec::new(),
            training: BTreeMap::new(),
            embedding_reference: None,
            prototype_head: false,
        }
    }

    /// Metadata for a classifier, CXR normalisation as the authors used in evaluation.
    pub fn classifier(config: MsnConfig, labels: Vec<String>) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            kind: ModelKind::Classifier,
            normalization: Normalization::cxr(config.vit.channels),
            config,
            labels,
            operating_points: Vec::new(),
            training: BTreeMap::new(),
            embedding_reference: None,
            prototype_head: false,
        }
    }

    /// Checks the metadata's own consistency.
    pub fn validate(&self) -> Result<(), CheckpointError> {
        self.config.validate()?;
        let bad = |m: String| Err(CheckpointError::Metadata(m));
        let c = self.config.vit.channels;
        if self.normalization.mean.len() != c || self.normalization.std.len() != c {
            return bad(format!(
                "normalization needs {c} mean and std values, got {} and {}",
                self.normalization.mean.len(),
                self.normalization.std.len()
            ));
        }
        if self
            .normalization
            .std
            .iter()
            .any(|s| !s.is_finite() || *s <= 0.0)
        {
            return bad("normalization std values must be positive".into());
        }
        if self.kind == ModelKind::Pretraining && self.prototype_head {
            return bad("a pretraining model keeps its prototypes in the model itself".into());
        }
        if self.kind == ModelKind::Classifier && self.labels.is_empty() {
            return bad("a classifier needs at least one label".into());
        }
        if !self.operating_points.is_empty() && self.operating_points.len() != self.labels.len() {
            return bad(format!(
                "{} operating points for {} labels",
                self.operating_points.len(),
                self.labels.len()
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for ModelMeta {
    /// A human-readable summary (what `cxr-msn inspect` prints).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        let v = &c.vit;
        writeln!(f, "kind:            {}", self.kind.name())?;
        writeln!(f, "format version:  {}", self.format_version)?;
        writeln!(f, "profile:         {}", c.profile.name())?;
        writeln!(f, "method:          {}", c.method.name())?;
        writeln!(
            f,
            "encoder:         ViT D={} depth={} heads={} patch={} input {}x{} px, {} channel(s)",
            v.dim, v.depth, v.heads, v.patch_size, v.image_size, v.image_size, v.channels
        )?;
        writeln!(
            f,
            "normalisation:   mean {:?} std {:?}",
            self.normalization.mean, self.normalization.std
        )?;
        match &c.ehr {
            Some(e) => writeln!(
                f,
                "EHR:             {} ({} values: {})",
                e.feature_set.name(),
                e.feature_set.width(),
                e.feature_set.columns().join(", ")
            )?,
            None => writeln!(f, "EHR:             none (image only)")?,
        }
        if self.kind == ModelKind::Classifier && self.prototype_head {
            writeln!(
                f,
                "prototypes:      {} with MSN's projection head (for the browser's learn mode)",
                c.num_prototypes
            )?;
        }
        if self.kind == ModelKind::Pretraining {
            writeln!(
                f,
                "prototypes:      {} ({})",
                c.num_prototypes,
                if c.freeze_prototypes {
                    "frozen"
                } else {
                    "learned"
                }
            )?;
        }
        if !self.labels.is_empty() {
            writeln!(f, "labels:          {}", self.labels.len())?;
            for (i, label) in self.labels.iter().enumerate() {
                match self.operating_points.get(i) {
                    Some(t) => writeln!(f, "  {i:2} {label} (threshold {t})")?,
                    None => writeln!(f, "  {i:2} {label}")?,
                }
            }
        }
        for (key, value) in &self.training {
            writeln!(f, "training.{key}: {value}")?;
        }
        Ok(())
    }
}

/// How the weights of a model file are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPrecision {
    /// 32-bit floats: exactly what was trained.
    #[default]
    F32,
    /// 16-bit floats for the linear, convolution and normalisation layers (nearly all the
    /// bytes; the [CLS] token and position embeddings stay f32): half the download, for the
    /// browser. Loading converts back to f32.
    F16,
}

/// Serialises a module and its metadata into model-file bytes (f32 weights).
pub fn write_model<M: Module>(module: &M, meta: &ModelMeta) -> Result<Vec<u8>, CheckpointError> {
    write_model_as(module, meta, WeightPrecision::F32)
}

/// Serialises a module and its metadata into model-file bytes with weights stored at
/// `precision`.
pub fn write_model_as<M: Module>(
    module: &M,
    meta: &ModelMeta,
    precision: WeightPrecision,
) -> Result<Vec<u8>, CheckpointError> {
    meta.validate()?;
    let json = serde_json::to_string(meta).map_err(|e| CheckpointError::Write(e.to_string()))?;
    let mut store = SafetensorsStore::from_bytes(None)
        .metadata(KEY_FORMAT, FORMAT_NAME)
        .metadata(KEY_VERSION, FORMAT_VERSION.to_string())
        .metadata(KEY_META, json);
    if precision == WeightPrecision::F16 {
        store = store.with_to_adapter(HalfPrecisionAdapter::new());
    }
    // `valid()` settles pending BatchNorm running-statistics updates and drops autodiff.
    module
        .valid()
        .save_into(&mut store)
        .map_err(|e| CheckpointError::Write(e.to_string()))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| CheckpointError::Write(e.to_string()))?;
    canonical_header(bytes)
}

/// The container with its JSON header's keys in sorted order (the store keeps its
/// metadata in a hash map, whose order changes from one process to the next), padded with
/// spaces so the data stay 8-byte aligned: the same model and metadata always give the same
/// bytes, so a file's checksum identifies what it holds. The tensors' offsets are relative
/// to the data, which are untouched.
fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>, CheckpointError> {
    let bad = |why: &str| CheckpointError::Write(format!("the written container {why}"));
    let length: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("has no header length"))?;
    let end = usize::try_from(u64::from_le_bytes(length))
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| bad("has a header longer than itself"))?;
    // serde_json's maps are sorted by key (the `preserve_order` feature is off).
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| bad(&format!("header: {e}")))?;
    let mut json = serde_json::to_vec(&header).map_err(|e| bad(&format!("header: {e}")))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - end);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// Reads and checks the metadata of model-file bytes. The whole container is validated
/// (header, tensor offsets, byte lengths), so a truncated file fails here.
pub fn read_meta(bytes: &[u8]) -> Result<ModelMeta, CheckpointError> {
    let container = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| CheckpointError::Container(e.to_string()))?;
    check_finite(&container)?;
    drop(container);
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| CheckpointError::Container(e.to_string()))?;
    let entries = header
        .metadata()
        .as_ref()
        .ok_or(CheckpointError::NotOurFormat(KEY_FORMAT))?;
    match entries.get(KEY_FORMAT) {
        Some(f) if f == FORMAT_NAME => {}
        _ => return Err(CheckpointError::NotOurFormat(KEY_FORMAT)),
    }
    let version = entries
        .get(KEY_VERSION)
        .ok_or(CheckpointError::NotOurFormat(KEY_VERSION))?;
    if version.parse::<u32>().ok() != Some(FORMAT_VERSION) {
        return Err(CheckpointError::UnsupportedVersion {
            found: version.clone(),
            supported: FORMAT_VERSION,
        });
    }
    let json = entries
        .get(KEY_META)
        .ok_or(CheckpointError::NotOurFormat(KEY_META))?;
    let meta: ModelMeta =
        serde_json::from_str(json).map_err(|e| CheckpointError::Metadata(e.to_string()))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(CheckpointError::UnsupportedVersion {
            found: meta.format_version.to_string(),
            supported: FORMAT_VERSION,
        });
    }
    meta.validate()?;
    Ok(meta)
}

/// Refuses a container with a NaN or an infinity in any floating-point tensor (a damaged
/// file, or weights from a run that diverged): such a model scores every image NaN, and
/// metrics over NaN scores would look like chance, not like an error. The first offending
/// tensor (in name order) is named with its count.
fn check_finite(container: &safetensors::SafeTensors<'_>) -> Result<(), CheckpointError> {
    use safetensors::Dtype;
    // The bits of the exponent field, all set for NaN and the infinities.
    fn count<const N: usize>(data: &[u8], exponent: u64) -> usize {
        data.chunks_exact(N)
            .filter(|b| {
                let mut word = [0u8; 8];
                word[..N].copy_from_slice(b);
                u64::from_le_bytes(word) & exponent == exponent
            })
            .count()
    }
    let mut tensors = container.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in tensors {
        let data = view.data();
        let bad = match view.dtype() {
            Dtype::F16 => count::<2>(data, 0x7C00),
            Dtype::BF16 => count::<2>(data, 0x7F80),
            Dtype::F32 => count::<4>(data, 0x7F80_0000),
            Dtype::F64 => count::<8>(data, 0x7FF0_0000_0000_0000),
            _ => 0,
        };
        if bad > 0 {
            return Err(CheckpointError::NonFinite {
                tensor: name,
                count: bad,
            });
        }
    }
    Ok(())
}

/// Loads the weights of model-file bytes into `module`, which must have exactly the
/// architecture of the file: a missing, extra or differently shaped tensor is an error
/// that names the first few offenders.
pub fn load_weights<M: Module>(mut module: M, bytes: &[u8]) -> Result<M, CheckpointError> {
    // Problems are collected in the result rather than failing inside the store, so the
    // message can be written for people.
    let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()))
        .validate(false)
        .allow_partial(true)
        // f16 files (`WeightPrecision::F16`) load into the f32 model; f32 passes unchanged.
        .with_from_adapter(FloatCastAdapter::to(DType::F32));
    let result = module
        .load_from(&mut store)
        .map_err(|e| CheckpointError::Weights(e.to_string()))?;
    let mut problems: Vec<String> = result
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "'{path}' has shape {:?} in the file, the architecture expects {:?}",
                found.as_slice(),
                expected.as_slice()
            ),
            other => other.to_string(),
        })
        .collect();
    problems.extend(
        result
            .missing
            .iter()
            .map(|(path, _)| format!("'{path}' is missing from the file")),
    );
    problems.extend(
        result
            .unused
            .iter()
            .map(|path| format!("'{path}' has no place in the architecture")),
    );
    if problems.is_empty() {
        return Ok(module);
    }
    const SHOWN: usize = 3;
    let more = problems.len().saturating_sub(SHOWN);
    let mut message = problems[..problems.len().min(SHOWN)].join("; ");
    if more > 0 {
        message += &format!("; and {more} more");
    }
    Err(CheckpointError::Weights(message))
}

fn expect_kind(meta: &ModelMeta, kind: ModelKind) -> Result<(), CheckpointError> {
    if meta.kind != kind {
        return Err(CheckpointError::WrongKind {
            found: meta.kind.name().into(),
            expected: kind.name().into(),
        });
    }
    Ok(())
}

/// Loads a classifier model file onto `device`.
pub fn load_classifier(
    bytes: &[u8],
    device: &Device,
) -> Result<(Classifier, ModelMeta), CheckpointError> {
    let meta = read_meta(bytes)?;
    expect_kind(&meta, ModelKind::Classifier)?;
    let mut skeleton = Classifier::init(
        &meta.config.vit,
        meta.labels.len(),
        meta.config.ehr.as_ref(),
        device,
    );
    if meta.prototype_head {
        skeleton.prototype_head = Some(PrototypeHead::init(&meta.config, device));
    }
    Ok((load_weights(skeleton, bytes)?, meta))
}

/// Loads a pretraining model file onto `device`.
pub fn load_pretraining(
    bytes: &[u8],
    device: &Device,
) -> Result<(MultimodalMsn, ModelMeta), CheckpointError> {
    let meta = read_meta(bytes)?;
    expect_kind(&meta, ModelKind::Pretraining)?;
    if meta.config.method != Method::Msn {
        return Err(CheckpointError::Metadata(format!(
            "this is a {} pretraining model, not an MSN one (load it with \
             pretrained::load_pretrained)",
            meta.config.method.name()
        )));
    }
    let skeleton = meta.config.init(device)?;
    let model = load_weights(skeleton, bytes)?.restate_gradients(meta.config.freeze_prototypes);
    Ok((model, meta))
}
