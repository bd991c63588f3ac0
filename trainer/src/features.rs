//! Frozen [CLS] features of an encoder over a list of images: what the linear probe trains
//! on and what the embedding map projects.

use anyhow::Result;
use burn::tensor::Device;
use cxr_msn::config::Normalization;
use cxr_msn::vit::VisionTransformer;

use crate::cpu_parallel::encode;
use crate::loader::{Item, Loader};

/// The encoder's [CLS] embedding of each item under the evaluation transform, `[N, D]`
/// row-major, in the items' order; the encoder lives on `device`.
pub fn cls_features(
    encoder: &VisionTransformer,
    items: Vec<Item>,
    normalization: &Normalization,
    threads: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let loader = Loader::for_scoring(items, normalization.clone(), threads)?;
    let mut cls = Vec::new();
    for batch in loader.epoch(0) {
        let images = batch?.images.to_tensor(device);
        let out = encode(encoder, images).into_data();
        cls.extend(
            out.try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("cannot read the features back: {e:?}"))?,
        );
    }
    Ok(cls)
}
