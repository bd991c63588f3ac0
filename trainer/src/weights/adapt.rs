//! What an import needs beyond new names: the architecture read off the tensor shapes, a
//! position grid resized to the model's input size, and an RGB patch embedding folded
//! into one grey channel.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use cxr_msn::config::Normalization;
use cxr_msn::vit::resize_position_grid;

/// The architecture of the checkpoint, from the shapes of its (translated) tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceArchitecture {
    /// Token width D.
    pub dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels of the patch embedding.
    pub channels: usize,
    /// Side of the learned position grid.
    pub grid: usize,
    /// Hidden width of the blocks' MLP.
    pub mlp_hidden: usize,
    /// The projection head, when the file has one.
    pub head: Option<HeadShape>,
    /// Number of prototypes, when the file has them.
    pub prototypes: Option<usize>,
    /// `(ehr_in, ehr_dim)` of the EHR layers, when the file has them.
    pub ehr: Option<(usize, usize)>,
}

/// The projection head's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    /// Width of the two hidden layers.
    pub hidden: usize,
    /// Output width (the prototypes' width).
    pub d_out: usize,
    /// Whether the linear layers before BatchNorm have a bias (MSN) or not (lightly).
    pub bias_before_bn: bool,
}

/// Reads the architecture off `shapes` (translated names -> shapes). The anchor encoder
/// (`anchor_vit.`) must be there.
pub fn infer(shapes: &BTreeMap<String, Vec<usize>>) -> Result<SourceArchitecture> {
    let get = |name: &str, rank: usize| -> Result<&Vec<usize>> {
        match shapes.get(name) {
            Some(s) if s.len() == rank => Ok(s),
            Some(s) => bail!("{name} has shape {s:?}, expected {rank} dimensions"),
            None => bail!("the file has no {name} (after translating its names)"),
        }
    };
    let cls = get("anchor_vit.cls_token", 3)?;
    let dim = cls[2];
    let conv = get("anchor_vit.patch_embed.proj.weight", 4)?;
    if conv[0] != dim || conv[2] != conv[3] {
        bail!(
            "patch embedding of shape {conv:?} does not fit a width of {dim} with square patches"
        );
    }
    let pos = get("anchor_vit.pos_embed", 3)?;
    let grid = ((pos[1].saturating_sub(1)) as f64).sqrt().round() as usize;
    if pos[2] != dim || grid * grid + 1 != pos[1] {
        bail!("position embedding of shape {pos:?} is not [1, 1 + G*G, {dim}]");
    }
    let depth = shapes
        .keys()
        .filter_map(|k| k.strip_prefix("anchor_vit.blocks."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    if depth == 0 {
        bail!("the file has no transformer blocks");
    }
    let mlp_hidden = get("anchor_vit.blocks.0.mlp.fc1.weight", 2)?[0];
    let head = match shapes.get("anchor_head.fc1.weight") {
        Some(fc1) => {
            let fc3 = get("anchor_head.fc3.weight", 2)?;
            Some(HeadShape {
                hidden: fc1[0],
                d_out: fc3[0],
                bias_before_bn: shapes.contains_key("anchor_head.fc1.bias"),
            })
        }
        None => None,
    };
    let prototypes = match shapes.get("prototypes") {
        Some(p) if p.len() == 2 => {
            if let Some(h) = head
                && h.d_out != p[1]
            {
                bail!(
                    "prototypes of shape {p:?} do not fit the head's output width {}",
                    h.d_out
                );
            }
            Some(p[0])
        }
        Some(p) => bail!("prototypes have shape {p:?}, expected [K, width]"),
        None => None,
    };
    let ehr = match shapes.get("ehr.f_ehr.weight") {
        Some(w) if w.len() == 2 => Some((w[1], w[0])),
        _ => None,
    };
    Ok(SourceArchitecture {
        dim,
        depth,
        patch_size: conv[2],
        channels: conv[1],
        grid,
        mlp_hidden,
        head,
        prototypes,
        ehr,
    })
}

/// Resizes a position embedding `[1, 1 + G*G, D]` to `grid x grid` with the model crate's
/// bicubic resampling (PyTorch's `interpolate(mode="bicubic", align_corners=False)`),
/// keeping the [CLS] position.
pub fn resize_positions(pos: TensorData, grid: usize) -> TensorData {
    let device = Device::flex();
    let t: Tensor<3> = Tensor::from_data(pos.convert::<f32>(), &device);
    resize_position_grid(t, grid).into_data()
}

/// Folds an RGB patch embedding into one grey channel, exactly: a grey image normalised
/// with `grey` gives the same embedding as that image replicated into three channels and
/// normalised per channel with `rgb`, as the source model saw it.
///
/// With `x_c = (g - m_c) / s_c` and `x = (g - m) / s`:
/// `w' = s * sum_c w_c / s_c` and `b' = b + sum_{c,k} w_{c,k} (m - m_c) / s_c`.
/// `weight`: `[D, 3, p, p]`, `bias`: `[D]` -> (`[D, 1, p, p]`, `[D]`).
pub fn fold_to_grey(
    weight: TensorData,
    bias: TensorData,
    rgb: &Normalization,
    grey: &Normalization,
) -> Result<(TensorData, TensorData)> {
    let dims = weight.shape().to_vec();
    if dims.len() != 4 || dims[1] != 3 || rgb.mean.len() != 3 || grey.mean.len() != 1 {
        bail!("cannot fold a patch embedding of shape {dims:?} into one channel");
    }
    let (d, k) = (dims[0], dims[2] * dims[3]);
    let w = weight
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut b = bias
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if b.len() != d {
        bail!("patch embedding bias has {} values, expected {d}", b.len());
    }
    let (m, s) = (grey.mean[0] as f64, grey.std[0] as f64);
    let mut folded = vec![0f32; d * k];
    for o in 0..d {
        let mut shift = 0f64;
        for c in 0..3 {
            let (mc, sc) = (rgb.mean[c] as f64, rgb.std[c] as f64);
            for i in 0..k {
                let wc = w[(o * 3 + c) * k + i] as f64;
                folded[o * k + i] += (s * wc / sc) as f32;
                shift += wc * (m - mc) / sc;
            }
        }
        b[o] = (b[o] as f64 + shift) as f32;
    }
    Ok((
        TensorData::new(folded, [d, 1, dims[2], dims[3]]),
        TensorData::new(b, [d]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_the_embedding_of_a_replicated_grey_image() {
        // One output, 1x1 patches: a hand-checkable case.
        let w = TensorData::new(vec![0.5f32, -1.0, 2.0], [1, 3, 1, 1]);
        let b = TensorData::new(vec![0.25f32], [1]);
        let rgb = Normalization::imagenet(3);
        let grey = Normalization::imagenet(1);
        let (fw, fb) = fold_to_grey(w, b, &rgb, &grey).unwrap();
        let (fw, fb) = (
            fw.try_to_vec::<f32>().unwrap(),
            fb.try_to_vec::<f32>().unwrap(),
        );
        for g in [0.0f32, 0.3, 1.0] {
            let rgb_out: f32 = 0.25
                + [0.5f32, -1.0, 2.0]
                    .iter()
                    .enumerate()
                    .map(|(c, w)| w * (g - rgb.mean[c]) / rgb.std[c])
                    .sum::<f32>();
            let grey_out = fb[0] + fw[0] * (g - grey.mean[0]) / grey.std[0];
            assert!(
                (rgb_out - grey_out).abs() < 1e-5,
                "{g}: {rgb_out} vs {grey_out}"
            );
        }
    }

    #[test]
    fn the_architecture_is_read_off_the_shapes() {
        let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut put = |k: &str, s: &[usize]| {
            shapes.insert(k.into(), s.to_vec());
        };
        put("anchor_vit.cls_token", &[1, 1, 192]);
        put("anchor_vit.patch_embed.proj.weight", &[192, 3, 16, 16]);
        put("anchor_vit.pos_embed", &[1, 197, 192]);
        put("anchor_vit.blocks.0.mlp.fc1.weight", &[768, 192]);
        put("anchor_vit.blocks.11.norm1.weight", &[192]);
        put("anchor_head.fc1.weight", &[2048, 192]);
        put("anchor_head.fc3.weight", &[256, 2048]);
        put("prototypes", &[1024, 256]);
        let arch = infer(&shapes).unwrap();
        assert_eq!(
            (
                arch.dim,
                arch.depth,
                arch.patch_size,
                arch.channels,
                arch.grid
            ),
            (192, 12, 16, 3, 14)
        );
        assert_eq!(arch.mlp_hidden, 768);
        assert_eq!(
            arch.head,
            Some(HeadShape {
                hidden: 2048,
                d_out: 256,
                bias_before_bn: false
            })
        );
        assert_eq!(arch.prototypes, Some(1024));
        shapes.insert("prototypes".into(), vec![1024, 128]);
        let err = infer(&shapes).unwrap_err().to_string();
        assert!(err.contains("prototypes") && err.contains("256"), "{err}");
    }
}
