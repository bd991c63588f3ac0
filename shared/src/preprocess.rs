//! From grey views to the normalised tensors the model takes.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::Normalization;
use crate::error::ShapeError;
use crate::image::GreyImage;

/// A batch of images as plain data, `[B, C, S, S]` row-major, ready for [`Tensor::from_data`]:
/// built on loader threads, turned into a tensor on the device's thread.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchData {
    /// The values.
    pub values: Vec<f32>,
    /// `[B, C, S, S]`.
    pub shape: [usize; 4],
}

impl BatchData {
    /// Packs square images of one size: each grey image is repeated over the
    /// normalisation's channels and normalised, `(x - mean[c]) / std[c]`.
    pub fn pack(images: &[&GreyImage], norm: &Normalization) -> Result<Self, ShapeError> {
        let channels = norm.mean.len();
        if norm.std.len() != channels {
            return Err(ShapeError::Mismatch {
                what: "the normalisation's standard deviations".into(),
                expected: format!("{channels}, one per mean"),
                got: norm.std.len().to_string(),
            });
        }
        let size = images.first().map_or(0, |i| i.width);
        for (i, img) in images.iter().enumerate() {
            if img.width != size || img.height != size {
                return Err(ShapeError::Mismatch {
                    what: format!("image {i} of the batch"),
                    expected: format!("{size}x{size}"),
                    got: format!("{}x{}", img.width, img.height),
                });
            }
        }
        let values = crate::simd::widest(Normalize { images, norm });
        Ok(Self {
            values,
            shape: [images.len(), channels, size, size],
        })
    }

    /// The batch as a tensor on `device`.
    pub fn to_tensor(self, device: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(self.values, self.shape), device)
    }
}

/// [`BatchData::pack`]'s values, as a call that [`crate::simd::widest`] inlines into each
/// of its copies: every image once per channel, `(x - mean[c]) / std[c]`.
#[derive(Clone, Copy)]
struct Normalize<'a> {
    images: &'a [&'a GreyImage],
    norm: &'a Normalization,
}

/// Values [`Normalize`] works out in a stack buffer at a time before copying them to the
/// batch, so that the batch is never zero-filled first (16 KiB, well inside L1).
const NORMALIZE_CHUNK: usize = 4096;

impl pulp::NullaryFnOnce for Normalize<'_> {
    type Output = Vec<f32>;

    #[inline(always)]
    fn call(self) -> Vec<f32> {
        let Self { images, norm } = self;
        let len = images.iter().map(|i| i.pixels.len()).sum::<usize>() * norm.mean.len();
        let mut values = Vec::with_capacity(len);
        let mut buffer = [0.0f32; NORMALIZE_CHUNK];
        for img in images {
            for (&mean, &std) in norm.mean.iter().zip(&norm.std) {
                for chunk in img.pixels.chunks(NORMALIZE_CHUNK) {
                    let done = &mut buffer[..chunk.len()];
                    for (d, p) in done.iter_mut().zip(chunk) {
                        *d = (p - mean) / std;
                    }
                    values.extend_from_slice(done);
                }
            }
        }
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_repeats_grey_over_channels_and_normalises() {
        let a = GreyImage::new(2, 2, vec![0.0, 0.5, 1.0, 0.25]).unwrap();
        let b = GreyImage::new(2, 2, vec![1.0; 4]).unwrap();
        let norm = Normalization {
            mean: vec![0.5, 0.25, 0.0],
            std: vec![0.5, 0.25, 1.0],
        };
        let batch = BatchData::pack(&[&a, &b], &norm).unwrap();
        assert_eq!(batch.shape, [2, 3, 2, 2]);
        assert_eq!(&batch.values[..4], &[-1.0, 0.0, 1.0, -0.5]);
        assert_eq!(&batch.values[4..8], &[-1.0, 1.0, 3.0, 0.0]);
        assert_eq!(&batch.values[8..12], &[0.0, 0.5, 1.0, 0.25]);
        assert_eq!(&batch.values[12..16], &[1.0; 4]);
        let odd = GreyImage::new(3, 2, vec![0.0; 6]).unwrap();
        assert!(BatchData::pack(&[&a, &odd], &norm).is_err());
        let lopsided = Normalization {
            mean: vec![0.5, 0.25, 0.0],
            std: vec![0.5],
        };
        assert!(BatchData::pack(&[&a], &lopsided).is_err());
    }

    /// Images larger than the stack buffer, at every vector width: the same values as the
    /// formula, element by element.
    #[test]
    fn packing_large_images_matches_the_formula_at_every_width() {
        let side = 91; // 8281 pixels: two whole buffers and a part
        let pixels: Vec<f32> = (0..side * side).map(|i| (i % 251) as f32 / 250.0).collect();
        let a = GreyImage::new(side, side, pixels).unwrap();
        let b = GreyImage::new(side, side, a.pixels.iter().map(|p| 1.0 - p).collect()).unwrap();
        let norm = Normalization::imagenet(3);
        let images = [&a, &b];
        let mut expected = Vec::new();
        for img in images {
            for c in 0..3 {
                expected.extend(img.pixels.iter().map(|p| (p - norm.mean[c]) / norm.std[c]));
            }
        }
        let outs = crate::simd::at_every_width(Normalize {
            images: &images,
            norm: &norm,
        });
        assert!(!outs.is_empty());
        for out in outs {
            assert_eq!(out, expected);
        }
        assert_eq!(BatchData::pack(&images, &norm).unwrap().values, expected);
    }
}
