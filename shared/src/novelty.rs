//! "This image looks unlike the model's training images": a reference of the encoder's
//! [CLS] embeddings on labelled validation images, stored in the model file by
//! `cxr-msn export`, and the distance of a new embedding from it.
//!
//! The distance is the mean squared z-score over the embedding's dimensions (a diagonal
//! Mahalanobis distance, divided by D): about 1 for an image like the reference ones, large
//! for an image the encoder places elsewhere. The threshold is a high percentile of the
//! reference images' own distances, so the warning is calibrated on the model itself.

use serde::{Deserialize, Serialize};

/// The embedding statistics of the reference images and the warning threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingReference {
    /// Mean embedding, `[D]`.
    pub mean: Vec<f32>,
    /// Standard deviation per dimension, `[D]` (floored to stay positive).
    pub std: Vec<f32>,
    /// Distances above this are flagged.
    pub threshold: f32,
    /// The percentile of the reference distances the threshold is (e.g. 99).
    pub percentile: f32,
    /// How many reference images.
    pub images: usize,
}

impl EmbeddingReference {
    /// Statistics of `embeddings` (`n` rows of `d` values) with the threshold at
    /// `percentile` of their own distances. `None` with fewer than 2 rows.
    pub fn fit(embeddings: &[f32], d: usize, percentile: f32) -> Option<Self> {
        let n = embeddings.len() / d.max(1);
        if n < 2 || d == 0 {
            return None;
        }
        let mut mean = vec![0.0f64; d];
        for row in embeddings.chunks(d) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += f64::from(*v) / n as f64;
            }
        }
        let mut var = vec![0.0f64; d];
        for row in embeddings.chunks(d) {
            for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (f64::from(*v) - m).powi(2) / (n - 1) as f64;
            }
        }
        let mut reference = Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: var.iter().map(|&v| (v.sqrt() as f32).max(1e-6)).collect(),
            threshold: 0.0,
            percentile,
            images: n,
        };
        let mut own: Vec<f32> = embeddings
            .chunks(d)
            .map(|row| reference.distance(row))
            .collect();
        own.sort_by(f32::total_cmp);
        let at = ((percentile / 100.0) * (n - 1) as f32).round() as usize;
        reference.threshold = own[at.min(n - 1)];
        Some(reference)
    }

    /// Mean squared z-score of `embedding` (`[D]`); infinite for a wrong width.
    pub fn distance(&self, embedding: &[f32]) -> f32 {
        if embedding.len() != self.mean.len() {
            return f32::INFINITY;
        }
        let sum: f32 = embedding
            .iter()
            .zip(&self.mean)
            .zip(&self.std)
            .map(|((e, m), s)| ((e - m) / s).powi(2))
            .sum();
        sum / self.mean.len() as f32
    }

    /// Whether `embedding` is farther than the threshold.
    pub fn is_unusual(&self, embedding: &[f32]) -> bool {
        self.distance(embedding) > self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_far_from_the_cloud_is_flagged_and_the_cloud_mostly_is_not() {
        // Two dimensions: x in 0..10 spread evenly, y constant 5 with a little wobble.
        let mut rows = Vec::new();
        for i in 0..101 {
            rows.push(i as f32 / 10.0);
            rows.push(5.0 + if i % 2 == 0 { 0.1 } else { -0.1 });
        }
        let r = EmbeddingReference::fit(&rows, 2, 99.0).unwrap();
        assert!((r.mean[0] - 5.0).abs() < 1e-5 && (r.mean[1] - 5.0).abs() < 1e-3);
        let flagged = rows.chunks(2).filter(|e| r.is_unusual(e)).count();
        assert!(
            flagged <= 2,
            "about 1% of the reference is above its 99th percentile"
        );
        assert!(
            r.is_unusual(&[5.0, 6.0]),
            "ten standard deviations off in y"
        );
        assert!(!r.is_unusual(&[5.0, 5.0]));
        assert_eq!(r.distance(&[1.0]), f32::INFINITY);
        assert!(EmbeddingReference::fit(&rows[..2], 2, 99.0).is_none());
    }
}
