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
        let mut values = Vec::with_capacity(images.len() * channels * size * size);
        for img in images {
            for c in 0..channels {
                let (mean, std) = (norm.mean[c], norm.std[c]);
                values.extend(img.pixels.iter().map(|p| (p - mean) / std));
            }
        }
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
    }
}
