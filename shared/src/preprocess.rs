//! From grey views to the batches the encoder takes: the grey planes side by side, with the
//! normalisation the encoder applies to them ([`Pixels::Grey`]: folded into its patch
//! embedding, so the channels a grey image would be repeated over are never written).

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::Normalization;
use crate::error::ShapeError;
use crate::image::GreyImage;
use crate::pixels::Pixels;

/// A batch of grey images as plain data, `[B, 1, S, S]` row-major intensities in [0, 1],
/// with the normalisation the encoder sees them through: built on loader threads, turned
/// into [`Pixels`] on the device's thread.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchData {
    /// The intensities, image after image.
    pub values: Vec<f32>,
    /// `[B, 1, S, S]`.
    pub shape: [usize; 4],
    /// One mean and one standard deviation per channel the encoder takes; each channel is
    /// the grey image normalised `(x - mean[c]) / std[c]`.
    pub normalization: Normalization,
}

impl BatchData {
    /// Packs square grey images of one size, to be seen through `norm` (one mean and one
    /// standard deviation per channel of the encoder).
    pub fn pack(images: &[&GreyImage], norm: &Normalization) -> Result<Self, ShapeError> {
        let channels = norm.mean.len();
        if norm.std.len() != channels || channels == 0 {
            return Err(ShapeError::Mismatch {
                what: "the normalisation's standard deviations".into(),
                expected: format!("{channels}, one per mean (at least one)"),
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
        let mut values = Vec::with_capacity(images.len() * size * size);
        for img in images {
            values.extend_from_slice(&img.pixels);
        }
        Ok(Self {
            values,
            shape: [images.len(), 1, size, size],
            normalization: norm.clone(),
        })
    }

    /// The batch as the encoder's input on `device`.
    pub fn to_tensor(self, device: &Device) -> Pixels {
        Pixels::Grey {
            grey: Tensor::from_data(TensorData::new(self.values, self.shape), device),
            normalization: self.normalization,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_the_grey_planes_and_the_normalisation() {
        let a = GreyImage::new(2, 2, vec![0.0, 0.5, 1.0, 0.25]).unwrap();
        let b = GreyImage::new(2, 2, vec![1.0; 4]).unwrap();
        let norm = Normalization {
            mean: vec![0.5, 0.25, 0.0],
            std: vec![0.5, 0.25, 1.0],
        };
        let batch = BatchData::pack(&[&a, &b], &norm).unwrap();
        assert_eq!(batch.shape, [2, 1, 2, 2]);
        assert_eq!(batch.values, [0.0, 0.5, 1.0, 0.25, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(batch.normalization, norm);
        let odd = GreyImage::new(3, 2, vec![0.0; 6]).unwrap();
        assert!(BatchData::pack(&[&a, &odd], &norm).is_err());
        let lopsided = Normalization {
            mean: vec![0.5, 0.25, 0.0],
            std: vec![0.5],
        };
        assert!(BatchData::pack(&[&a], &lopsided).is_err());
    }

    /// What the encoder sees of a packed batch: each channel the grey plane normalised
    /// with that channel's mean and standard deviation, by the formula.
    #[test]
    fn a_packed_batch_is_seen_as_grey_repeated_and_normalised() {
        let side = 5;
        let a = GreyImage::new(side, side, (0..25).map(|i| i as f32 / 24.0).collect()).unwrap();
        let b = GreyImage::new(side, side, a.pixels.iter().map(|p| 1.0 - p).collect()).unwrap();
        let norm = Normalization::imagenet(3);
        let device = Device::default();
        let seen = BatchData::pack(&[&a, &b], &norm)
            .unwrap()
            .to_tensor(&device)
            .normalized();
        assert_eq!(seen.dims(), [2, 3, side, side]);
        let seen = seen.into_data().try_to_vec::<f32>().unwrap();
        let mut expected = Vec::new();
        for img in [&a, &b] {
            for c in 0..3 {
                expected.extend(img.pixels.iter().map(|p| (p - norm.mean[c]) / norm.std[c]));
            }
        }
        for (s, e) in seen.iter().zip(&expected) {
            assert!((s - e).abs() <= 1e-6 * e.abs().max(1.0), "{s} vs {e}");
        }
    }
}
