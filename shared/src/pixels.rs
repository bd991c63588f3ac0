//! Images as the encoder takes them: either channels already normalised (what a PyTorch
//! model takes, and what tests against PyTorch feed), or one grey channel with the
//! normalisation still to apply.
//!
//! A chest X-ray is grey. The authors' pipeline repeats it over three channels and
//! normalises each with its own mean and standard deviation, so a batch is three planes of
//! floats that all follow from one. Here the grey plane alone travels ([`Pixels::Grey`])
//! and the normalisation is folded into the patch embedding's kernel ([`fold_patch_kernel`]):
//! for a kernel `W [D, C, P, P]` and bias `b [D]`,
//!
//! ```text
//! sum_c sum_k W[d, c, k] (x_k - mean_c) / std_c + b_d
//!   = sum_k (sum_c W[d, c, k] / std_c) x_k  +  b_d - sum_c (mean_c / std_c) sum_k W[d, c, k]
//! ```
//!
//! which is the same function of the grey image, up to float rounding, with a third of the
//! input to write, move and read, and a product over `P P` values per patch instead of
//! `C P P`. Gradients reach `W` and `b` through the fold.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::Normalization;

/// A batch of square images for the encoder.
#[derive(Debug, Clone)]
pub enum Pixels {
    /// `[B, C, S, S]`, each channel already normalised.
    Normalized(Tensor<4>),
    /// `[B, 1, S, S]` grey intensities in [0, 1], which the encoder sees as repeated over
    /// the normalisation's channels, each normalised `(x - mean[c]) / std[c]`.
    Grey {
        /// The grey plane of each image.
        grey: Tensor<4>,
        /// One mean and one standard deviation per channel the encoder takes.
        normalization: Normalization,
    },
}

impl From<Tensor<4>> for Pixels {
    fn from(images: Tensor<4>) -> Self {
        Pixels::Normalized(images)
    }
}

impl Pixels {
    /// The tensor as held: `[B, C, S, S]`, or `[B, 1, S, S]` for grey images.
    pub fn tensor(&self) -> &Tensor<4> {
        match self {
            Pixels::Normalized(t) | Pixels::Grey { grey: t, .. } => t,
        }
    }

    /// The shape of the images as the encoder sees them: `[B, C, S, S]`, where grey images
    /// have as many channels as their normalisation has means.
    pub fn dims(&self) -> [usize; 4] {
        let [b, c, h, w] = self.tensor().dims();
        match self {
            Pixels::Normalized(_) => [b, c, h, w],
            Pixels::Grey { normalization, .. } => [b, normalization.mean.len(), h, w],
        }
    }

    /// The device the values are on.
    pub fn device(&self) -> Device {
        self.tensor().device()
    }

    /// Images `start .. start + len` of the batch.
    pub fn narrow(self, start: usize, len: usize) -> Self {
        self.map(|t| t.narrow(0, start, len))
    }

    /// The batches one after another. Grey batches must share their normalisation.
    ///
    /// # Panics
    /// On no batches, or on normalised and grey batches (or grey batches of different
    /// normalisations) together.
    pub fn cat(parts: Vec<Pixels>) -> Self {
        let first = parts.first().expect("at least one batch to concatenate");
        let like = match first {
            Pixels::Normalized(_) => None,
            Pixels::Grey { normalization, .. } => Some(normalization.clone()),
        };
        let tensors = parts
            .into_iter()
            .map(|p| match (p, &like) {
                (Pixels::Normalized(t), None) => t,
                (
                    Pixels::Grey {
                        grey,
                        normalization,
                    },
                    Some(n),
                ) if &normalization == n => grey,
                _ => panic!("batches of normalised and grey images, or of two normalisations"),
            })
            .collect();
        let joined = Tensor::cat(tensors, 0);
        match like {
            None => Pixels::Normalized(joined),
            Some(normalization) => Pixels::Grey {
                grey: joined,
                normalization,
            },
        }
    }

    /// The images as normalised channels `[B, C, S, S]` (grey images repeated over the
    /// channels and normalised), for what needs the pixels themselves (MAE's targets).
    pub fn normalized(self) -> Tensor<4> {
        match self {
            Pixels::Normalized(t) => t,
            Pixels::Grey {
                grey,
                normalization,
            } => {
                let c = normalization.mean.len();
                let device = grey.device();
                let per_channel =
                    |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, c, 1, 1]), &device);
                (grey.repeat_dim(1, c) - per_channel(normalization.mean))
                    / per_channel(normalization.std)
            }
        }
    }

    fn map(self, f: impl FnOnce(Tensor<4>) -> Tensor<4>) -> Self {
        match self {
            Pixels::Normalized(t) => Pixels::Normalized(f(t)),
            Pixels::Grey {
                grey,
                normalization,
            } => Pixels::Grey {
                grey: f(grey),
                normalization,
            },
        }
    }
}

/// A patch embedding's kernel `weight [D, C, P, P]` and `bias [D]` folded with the
/// normalisation of grey images repeated over the `C` channels (module docs): a kernel
/// `[D, 1, P, P]` and a bias `[D]` that take the grey plane itself.
///
/// # Panics
/// When the normalisation does not have `C` means and `C` standard deviations.
pub fn fold_patch_kernel(
    weight: Tensor<4>,
    bias: Tensor<1>,
    normalization: &Normalization,
) -> (Tensor<4>, Tensor<1>) {
    let [d, c, p, q] = weight.dims();
    assert!(
        normalization.mean.len() == c && normalization.std.len() == c,
        "a normalisation of {} means and {} standard deviations for a kernel of {c} channels",
        normalization.mean.len(),
        normalization.std.len()
    );
    let device = weight.device();
    let per_channel =
        |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, c, 1, 1]), &device);
    let scaled = weight / per_channel(&normalization.std); // W[d, c, k] / std_c
    let shift = (scaled.clone() * per_channel(&normalization.mean))
        .reshape([d, c * p * q])
        .sum_dim(1)
        .reshape([d]);
    (scaled.sum_dim(1), bias - shift)
}

/// The grey plane `[B, 1, S, S]` repeated and normalised one channel at a time, for tests
/// to compare the fold with.
#[cfg(test)]
pub(crate) fn channels_by_hand(grey: Tensor<4>, norm: &Normalization) -> Tensor<4> {
    let channels: Vec<Tensor<4>> = norm
        .mean
        .iter()
        .zip(&norm.std)
        .map(|(&m, &s)| (grey.clone() - m) / s)
        .collect();
    Tensor::cat(channels, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    fn grey_and_normalized(b: usize, side: usize, norm: &Normalization) -> (Pixels, Tensor<4>) {
        let device = Device::default();
        let grey =
            Tensor::<4>::random([b, 1, side, side], Distribution::Uniform(0.0, 1.0), &device);
        let by_hand = channels_by_hand(grey.clone(), norm);
        let pixels = Pixels::Grey {
            grey,
            normalization: norm.clone(),
        };
        (pixels, by_hand)
    }

    /// The normalised channels made from grey images are the formula's, and the batch
    /// operations keep the grey plane and its normalisation together.
    #[test]
    fn grey_images_are_seen_as_their_normalised_channels() {
        let norm = Normalization::cxr(3);
        let (pixels, by_hand) = grey_and_normalized(4, 6, &norm);
        assert_eq!(pixels.dims(), [4, 3, 6, 6]);
        pixels
            .clone()
            .normalized()
            .into_data()
            .assert_approx_eq::<f32>(&by_hand.clone().into_data(), Default::default());
        let parts = vec![pixels.clone().narrow(0, 1), pixels.clone().narrow(1, 3)];
        let joined = Pixels::cat(parts);
        assert_eq!(joined.dims(), [4, 3, 6, 6]);
        joined
            .normalized()
            .into_data()
            .assert_approx_eq::<f32>(&by_hand.into_data(), Default::default());
    }

    /// A padded convolution pads the normalised channels with zeros, which no fold of the
    /// kernel can give: grey images are expanded for it, and match the channels made by hand.
    #[test]
    fn a_padded_patch_embedding_sees_the_normalised_channels() {
        let norm = Normalization::imagenet(3);
        let (pixels, by_hand) = grey_and_normalized(2, 8, &norm);
        let conv = Conv2dConfig::new([3, 5], [4, 4])
            .with_stride([4, 4])
            .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
            .init(&Device::default());
        let tokens = crate::cpu_kernels::patch_embed(&conv, pixels);
        let expected = conv.forward(by_hand).flatten::<3>(2, 3).swap_dims(1, 2);
        assert_eq!(tokens.dims(), expected.dims());
        tokens
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
    }
}
