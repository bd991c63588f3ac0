//! Model files on disk: the model crate reads bytes; this adds the file and its name to
//! every error.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::Device;
use cxr_msn::checkpoint::{ModelKind, ModelMeta, load_classifier, load_pretraining, read_meta};
use cxr_msn::classifier::Classifier;
use cxr_msn::msn::MultimodalMsn;
use cxr_msn::pretrained::{Pretrained, load_pretrained};
use cxr_msn::vit::VisionTransformer;

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A classifier model file (from `probe`, `finetune` or `export`) on `device`.
pub fn classifier(path: &Path, device: &Device) -> Result<(Classifier, ModelMeta)> {
    load_classifier(&read(path)?, device).with_context(|| format!("{}", path.display()))
}

/// An MSN pretraining checkpoint on `device`.
pub fn msn(path: &Path, device: &Device) -> Result<(MultimodalMsn, ModelMeta)> {
    load_pretraining(&read(path)?, device).with_context(|| format!("{}", path.display()))
}

/// A pretraining checkpoint of any method on `device`.
pub fn pretraining(path: &Path, device: &Device) -> Result<(Pretrained, ModelMeta)> {
    load_pretrained(&read(path)?, device).with_context(|| format!("{}", path.display()))
}

/// The encoder of either kind of model file (the encoder a checkpoint's method leaves), with the
/// file's metadata.
pub fn encoder(path: &Path, device: &Device) -> Result<(VisionTransformer, ModelMeta)> {
    let bytes = read(path)?;
    let meta = read_meta(&bytes).with_context(|| format!("{}", path.display()))?;
    let vit = match meta.kind {
        ModelKind::Pretraining => load_pretrained(&bytes, device).map(|(m, _)| m.encoder()),
        ModelKind::Classifier => load_classifier(&bytes, device).map(|(c, _)| c.encoder),
    }
    .with_context(|| format!("{}", path.display()))?;
    Ok((vit, meta))
}
