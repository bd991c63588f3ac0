//! The masked-autoencoder baseline (He et al. 2021, arXiv 2111.06377) on the project's
//! encoder: most patch tokens are removed, the encoder sees the rest, a light decoder
//! reconstructs the pixels of the removed patches.
//!
//! ```text
//! images x [B, C, S, S] -> keep K of N patches (TokenMask) -> encoder -> tokens [B, 1+K, D]
//! decoder_embed -> [B, 1+K, Dd]; removed positions get the learned mask token -> [B, 1+N, Dd]
//! + fixed 2-D sin-cos position embedding -> decoder blocks -> norm -> decoder_pred
//! prediction [B, N, p*p*C]; loss on the removed patches of (per-patch normalised) pixels
//! ```
//! Token removal is the same as MSN's anchor masking ([`crate::masking::TokenMask`]),
//! only with a higher ratio (0.6 in the authors' baseline).

use burn::module::{Initializer, Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

use crate::config::{MaeConfig, MsnConfig};
use crate::error::ConfigError;
use crate::init::deit_linear;
use crate::masking::TokenMask;
use crate::pixels::Pixels;
use crate::vit::{Block, VisionTransformer};

/// The MAE decoder. Parameter names follow the MAE reference (`decoder_embed`,
/// `mask_token`, `decoder_blocks.N`, `decoder_norm`, `decoder_pred`).
#[derive(Module, Debug)]
pub struct MaeDecoder {
    /// Linear(D -> Dd).
    pub decoder_embed: Linear,
    /// The learned token put at every removed position, `[1, 1, Dd]`.
    pub mask_token: Param<Tensor<3>>,
    /// Pre-norm transformer blocks of width Dd.
    pub decoder_blocks: Vec<Block>,
    /// Final LayerNorm.
    pub decoder_norm: LayerNorm,
    /// Linear(Dd -> p*p*C): the pixels of one patch.
    pub decoder_pred: Linear,
}

/// The MAE model: the encoder being pretrained and its decoder.
#[derive(Module, Debug)]
pub struct Mae {
    /// The encoder kept for downstream use.
    pub encoder: VisionTransformer,
    /// Discarded after pretraining.
    pub decoder: MaeDecoder,
}

/// What one MAE forward pass gives.
#[derive(Debug, Clone)]
pub struct MaeOutput {
    /// Mean squared error over the removed patches, `[1]`.
    pub loss: Tensor<1>,
    /// Predicted pixels of every patch, `[B, N, p*p*C]`.
    pub prediction: Tensor<3>,
}

/// The fixed 2-D sin-cos position embedding of MAE for a `grid x grid` layout, row-major
/// `[1 + grid*grid, dim]` values with an all-zero [CLS] row first. For the token at row r,
/// column c: the first half of the width encodes c, the second half r, each as
/// `[sin(x w_i), cos(x w_i)]` with `w_i = 10000^(-i / (dim/4))`, i < dim/4.
pub fn sincos_position_embedding(dim: usize, grid: usize) -> Vec<f32> {
    assert!(
        dim.is_multiple_of(4),
        "sin-cos embedding width must be a multiple of 4"
    );
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64))
        .collect();
    let mut out = vec![0.0f32; (1 + grid * grid) * dim];
    for r in 0..grid {
        for c in 0..grid {
            let row = &mut out[(1 + r * grid + c) * dim..][..dim];
            for (half, pos) in [(0, c), (1, r)] {
                for (i, w) in omega.iter().enumerate() {
                    let x = pos as f64 * w;
                    row[half * 2 * quarter + i] = x.sin() as f32;
                    row[half * 2 * quarter + quarter + i] = x.cos() as f32;
                }
            }
        }
    }
    out
}

/// Images `[B, C, H, W]` to patches `[B, (H/p)*(W/p), p*p*C]`: patches row-major, and
/// inside a patch the pixels row-major with the channel fastest (MAE's layout).
pub fn patchify(images: Tensor<4>, patch: usize) -> Tensor<3> {
    let [b, c, h, w] = images.dims();
    let (gh, gw) = (h / patch, w / patch);
    images
        .reshape([b, c, gh, patch, gw, patch])
        .permute([0, 2, 4, 3, 5, 1])
        .reshape([b, gh * gw, patch * patch * c])
}

/// MAE's reconstruction loss: mean squared error per patch, averaged over the removed
/// patches. `prediction` and `target` `[B, N, P]`; `removed` `[B, N]`, 1 where the patch
/// was removed. With `norm_pix`, each target patch is first normalised by its own mean and
/// (unbiased) variance: `(x - mean) / sqrt(var + 1e-6)`.
pub fn mae_loss(
    prediction: Tensor<3>,
    target: Tensor<3>,
    removed: Tensor<2>,
    norm_pix: bool,
) -> Tensor<1> {
    let [b, n, p] = target.dims();
    let prediction = prediction.cast(FloatDType::F32);
    let mut target = target.cast(FloatDType::F32).detach();
    if norm_pix {
        let mean = target.clone().mean_dim(2);
        let centred = target - mean;
        let var = centred
            .clone()
            .square()
            .sum_dim(2)
            .div_scalar((p.max(2) - 1) as f64);
        target = centred / var.add_scalar(1e-6).sqrt();
    }
    let per_patch = (prediction - target).square().mean_dim(2).reshape([b, n]);
    let removed = removed.cast(FloatDType::F32);
    (per_patch * removed.clone()).sum() / removed.sum()
}

impl MaeConfig {
    /// A decoder for an encoder of width `dim`, patch `patch` and `channels` channels:
    /// N(0, 0.02) weights and mask token, zero biases, unit LayerNorms.
    pub fn init_decoder(
        &self,
        dim: usize,
        patch: usize,
        channels: usize,
        device: &Device,
    ) -> MaeDecoder {
        let dd = self.decoder_dim;
        MaeDecoder {
            decoder_embed: deit_linear(dim, dd, true, device),
            mask_token: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, 1, dd], device),
            decoder_blocks: (0..self.decoder_depth)
                .map(|_| Block::new(dd, self.decoder_heads, self.decoder_mlp_ratio, 1e-6, device))
                .collect(),
            decoder_norm: LayerNormConfig::new(dd).with_epsilon(1e-6).init(device),
            decoder_pred: deit_linear(dd, patch * patch * channels, true, device),
        }
    }
}

impl MsnConfig {
    /// Builds the MAE model of a configuration whose method is MAE.
    pub fn init_mae(&self, device: &Device) -> Result<Mae, ConfigError> {
        self.validate()?;
        let cfg = self.mae.as_ref().ok_or_else(|| {
            ConfigError::Invalid("the MAE model needs a [mae] configuration".into())
        })?;
        Ok(Mae {
            encoder: self.vit.init(device),
            decoder: cfg.init_decoder(self.vit.dim, self.vit.patch_size, self.vit.channels, device),
        })
    }
}

/// For each row of a mask, where each of the N positions is found in the sequence "kept
/// tokens in order, then one mask token per removed position": `[B, N]` gather indices.
fn restore_indices(mask: &TokenMask) -> Vec<i32> {
    let n = mask.n_patches;
    let k = mask.kept();
    let mut out = Vec::with_capacity(mask.keep.len() * n);
    for row in &mask.keep {
        let mut next_kept = 0;
        let mut next_removed = k;
        for j in 0..n {
            if row.get(next_kept) == Some(&(j as u32)) {
                out.push(next_kept as i32);
                next_kept += 1;
            } else {
                out.push(next_removed as i32);
                next_removed += 1;
            }
        }
    }
    out
}

/// `[B, N]` with 1 at the removed positions of each row.
pub fn removed_patches(mask: &TokenMask, device: &Device) -> Tensor<2> {
    let n = mask.n_patches;
    let mut v = vec![1.0f32; mask.keep.len() * n];
    for (i, row) in mask.keep.iter().enumerate() {
        for &j in row {
            v[i * n + j as usize] = 0.0;
        }
    }
    Tensor::from_data(TensorData::new(v, [mask.keep.len(), n]), device)
}

impl MaeDecoder {
    /// Encoder tokens `[B, 1+K, D]` ([CLS] first, the kept patches of `mask` in order) to
    /// predicted patches `[B, N, p*p*C]` for a `grid x grid` layout (N = grid^2).
    pub fn forward(&self, tokens: Tensor<3>, mask: &TokenMask, grid: usize) -> Tensor<3> {
        let [b, t, _] = tokens.dims();
        let n = mask.n_patches;
        assert_eq!(grid * grid, n, "mask and grid disagree");
        assert_eq!(t, 1 + mask.kept(), "tokens and mask disagree");
        let device = tokens.device();
        let x = self.decoder_embed.forward(tokens);
        let dd = x.dims()[2];
        let cls = x.clone().narrow(1, 0, 1);
        let kept = x.narrow(1, 1, t - 1);
        let sequence = if t - 1 < n {
            let filler = self
                .mask_token
                .val()
                .repeat_dim(0, b)
                .repeat_dim(1, n - (t - 1));
            Tensor::cat(vec![kept, filler], 1)
        } else {
            kept
        };
        let restore =
            Tensor::<2, Int>::from_data(TensorData::new(restore_indices(mask), [b, n]), &device);
        let sequence = sequence.gather(1, restore.unsqueeze_dim::<3>(2).repeat_dim(2, dd));
        let pos = Tensor::<3>::from_data(
            TensorData::new(sincos_position_embedding(dd, grid), [1, 1 + n, dd]),
            &device,
        );
        let mut x = Tensor::cat(vec![cls, sequence], 1) + pos;
        for block in &self.decoder_blocks {
            x = block.forward(x, false).0;
        }
        let x = self.decoder_pred.forward(self.decoder_norm.forward(x));
        x.narrow(1, 1, n)
    }
}

impl Mae {
    /// The loss of one batch of images `[B, C, S, S]` with the patches of `mask` kept. The
    /// targets are the normalised pixels of every channel, grey images' too
    /// ([`Pixels::normalized`]).
    pub fn forward_loss(
        &self,
        images: impl Into<Pixels>,
        mask: &TokenMask,
        norm_pix: bool,
    ) -> MaeOutput {
        let images = images.into();
        let [_, _, s, _] = images.dims();
        let device = images.device();
        let patch = self.encoder.patch_size;
        let keep = mask.to_tensor(&device);
        let tokens = self
            .encoder
            .forward_detailed(images.clone(), Some(keep), false)
            .tokens;
        let prediction = self.decoder.forward(tokens, mask, s / patch);
        let loss = mae_loss(
            prediction.clone(),
            patchify(images.normalized(), patch),
            removed_patches(mask, &device),
            norm_pix,
        );
        MaeOutput { loss, prediction }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn restore_indices_put_kept_tokens_back_in_place() {
        let mask = TokenMask {
            n_patches: 5,
            keep: vec![vec![1, 3], vec![0, 4]],
        };
        // Row 0: sequence [t1, t3, m, m, m] -> positions 0..5 read m0(2), t1(0), m1(3), t3(1), m2(4).
        assert_eq!(restore_indices(&mask), vec![2, 0, 3, 1, 4, 0, 2, 3, 4, 1]);
        let removed = removed_patches(&mask, &Device::flex());
        assert_eq!(
            removed.into_data().try_to_vec::<f32>().unwrap(),
            vec![1., 0., 1., 0., 1., 0., 1., 1., 1., 0.]
        );
    }

    #[test]
    fn patchify_puts_the_channel_fastest_inside_row_major_patches() {
        let device = Device::flex();
        // [1, 2, 4, 4], value = 100 c + 10 y + x; patch 2 -> 4 patches of 2*2*2.
        let v: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..4).flat_map(move |y| (0..4).map(move |x| (100 * c + 10 * y + x) as f32))
            })
            .collect();
        let p = patchify(
            Tensor::from_data(TensorData::new(v, [1, 2, 4, 4]), &device),
            2,
        );
        assert_eq!(p.dims(), [1, 4, 8]);
        let p = p.into_data().try_to_vec::<f32>().unwrap();
        // Patch 1 is rows 0-1, columns 2-3.
        assert_eq!(&p[8..16], &[2., 102., 3., 103., 12., 112., 13., 113.]);
    }

    #[test]
    fn a_perfect_reconstruction_has_zero_loss_and_sincos_rows_are_unit_scale() {
        let device = Device::flex();
        let target = Tensor::<3>::random(
            [2, 4, 12],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let mask = TokenMask::sample(2, 4, 0.5, &mut StdRng::seed_from_u64(3));
        let removed = removed_patches(&mask, &device);
        let loss = mae_loss(target.clone(), target.clone(), removed.clone(), false);
        assert!(loss.into_data().try_to_vec::<f32>().unwrap()[0].abs() < 1e-12);
        let loss = mae_loss(target.clone() + 1.0, target, removed, false);
        assert!((loss.into_data().try_to_vec::<f32>().unwrap()[0] - 1.0).abs() < 1e-6);
        // Each half of a row is sin^2 + cos^2 pairs: dim/2 in all; the [CLS] row is zero.
        let e = sincos_position_embedding(8, 3);
        assert!(e[..8].iter().all(|&v| v == 0.0));
        for row in e[8..].chunks(8) {
            let s: f32 = row.iter().map(|v| v * v).sum();
            assert!((s - 4.0).abs() < 1e-5, "{row:?}");
        }
    }
}
