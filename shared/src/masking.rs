//! Token masking (patch drop) for the anchor views.
//!
//! Each sample keeps its own random subset of floor(N x (1 - ratio)) patch tokens; [CLS] is
//! always kept by the encoder. Dropped tokens are removed, not replaced by mask tokens.
//! The subsets are drawn on the host from an explicit seeded RNG, so a run is reproducible
//! on any backend and the kept patches can be shown (learn mode).

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::error::ShapeError;

/// Patch tokens kept out of `n_patches` at `ratio`: floor(n x (1 - ratio)).
///
/// A tolerance of 1e-9 protects exact products (n = 100, ratio 0.15 gives 85, not 84)
/// from binary rounding.
pub fn keep_count(n_patches: usize, ratio: f64) -> usize {
    ((n_patches as f64) * (1.0 - ratio) + 1e-9).floor() as usize
}

/// The patch tokens each sample of a batch keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    /// Patch tokens per image before masking.
    pub n_patches: usize,
    /// For each sample, the kept patch indices in ascending order (all the same length).
    pub keep: Vec<Vec<u32>>,
}

impl TokenMask {
    /// Draws an independent subset for each of `batch` samples.
    pub fn sample(batch: usize, n_patches: usize, ratio: f64, rng: &mut impl Rng) -> Self {
        let k = keep_count(n_patches, ratio);
        let mut order: Vec<u32> = (0..n_patches as u32).collect();
        let keep = (0..batch)
            .map(|_| {
                order.shuffle(rng);
                let mut kept = order[..k].to_vec();
                kept.sort_unstable();
                kept
            })
            .collect();
        Self { n_patches, keep }
    }

    /// Checks that this mask fits `rows` views of `n_patches` patches each: one row per
    /// view, equal lengths, indices in range and distinct.
    pub fn check(&self, rows: usize, n_patches: usize) -> Result<(), ShapeError> {
        let bad = |expected: String, got: String| {
            Err(ShapeError::Mismatch {
                what: "token mask".into(),
                expected,
                got,
            })
        };
        if self.n_patches != n_patches || self.keep.len() != rows {
            return bad(
                format!("{rows} rows over {n_patches} patches"),
                format!("{} rows over {} patches", self.keep.len(), self.n_patches),
            );
        }
        let k = self.kept();
        for (i, row) in self.keep.iter().enumerate() {
            let mut sorted = row.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if row.len() != k
                || sorted.len() != k
                || sorted.last().is_some_and(|&j| j as usize >= n_patches)
            {
                return bad(
                    format!("{k} distinct indices below {n_patches} in every row"),
                    format!("row {i}: {row:?}"),
                );
            }
        }
        if k == 0 {
            return bad("at least one kept patch".into(), "none".into());
        }
        Ok(())
    }

    /// Patches kept per sample.
    pub fn kept(&self) -> usize {
        self.keep.first().map_or(0, Vec::len)
    }

    /// The indices as a `[B, K]` integer tensor for [`crate::vit::VisionTransformer::forward`].
    pub fn to_tensor(&self, device: &Device) -> Tensor<2, Int> {
        let b = self.keep.len();
        let k = self.kept();
        let flat: Vec<i32> = self.keep.iter().flatten().map(|&i| i as i32).collect();
        Tensor::from_data(TensorData::new(flat, [b, k]), device)
    }

    /// The rows of images `start .. start + len` of a view-major mask over `batch` images
    /// (rows `j * batch + i` for each view j), view-major again: the mask of the same part
    /// that [`MsnBatch::part`](crate::msn::MsnBatch::part) takes of the views.
    ///
    /// # Panics
    /// When the rows are not a whole number of views of `batch` images, or the part does
    /// not lie inside the batch.
    pub fn part(&self, batch: usize, start: usize, len: usize) -> Self {
        let rows = self.keep.len();
        assert!(
            batch > 0 && rows.is_multiple_of(batch) && start + len <= batch,
            "images {start}..{} of a mask of {rows} rows over {batch} images",
            start + len
        );
        let keep = (0..rows / batch)
            .flat_map(|j| {
                self.keep[j * batch + start..j * batch + start + len]
                    .iter()
                    .cloned()
            })
            .collect();
        Self {
            n_patches: self.n_patches,
            keep,
        }
    }

    /// This mask repeated for `times` consecutive blocks of views (view-major order).
    pub fn repeated(&self, times: usize) -> Self {
        let keep = (0..times).flat_map(|_| self.keep.iter().cloned()).collect();
        Self {
            n_patches: self.n_patches,
            keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn keep_count_is_floor_of_the_kept_fraction() {
        assert_eq!(keep_count(196, 0.15), 166); // 166.6
        assert_eq!(keep_count(36, 0.15), 30); // 30.6
        assert_eq!(keep_count(100, 0.15), 85); // exact
        assert_eq!(keep_count(196, 0.0), 196);
        assert_eq!(keep_count(196, 0.5), 98);
    }

    #[test]
    fn masks_keep_the_right_count_of_distinct_valid_indices_and_differ_across_samples() {
        let mut rng = StdRng::seed_from_u64(7);
        let mask = TokenMask::sample(16, 196, 0.15, &mut rng);
        assert_eq!(mask.keep.len(), 16);
        for row in &mask.keep {
            assert_eq!(row.len(), 166);
            assert!(row.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
            assert!(row.iter().all(|&i| (i as usize) < 196));
        }
        let distinct: std::collections::HashSet<_> = mask.keep.iter().collect();
        assert_eq!(distinct.len(), 16, "every sample draws its own subset");
    }

    #[test]
    fn malformed_masks_are_rejected() {
        let mask = TokenMask::sample(2, 36, 0.15, &mut StdRng::seed_from_u64(1));
        assert!(mask.check(2, 36).is_ok());
        assert!(mask.check(3, 36).is_err(), "row count");
        assert!(mask.check(2, 196).is_err(), "patch count");
        let mut bad = mask.clone();
        bad.keep[1][0] = 36;
        bad.keep[1].sort_unstable();
        assert!(bad.check(2, 36).is_err(), "index out of range");
        let mut dup = mask.clone();
        dup.keep[0][1] = dup.keep[0][0];
        assert!(dup.check(2, 36).is_err(), "repeated index");
        let mut short = mask;
        short.keep[0].pop();
        assert!(short.check(2, 36).is_err(), "ragged rows");
    }

    #[test]
    fn same_seed_same_mask() {
        let a = TokenMask::sample(4, 36, 0.15, &mut StdRng::seed_from_u64(1));
        let b = TokenMask::sample(4, 36, 0.15, &mut StdRng::seed_from_u64(1));
        let c = TokenMask::sample(4, 36, 0.15, &mut StdRng::seed_from_u64(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_part_takes_its_images_rows_from_every_view() {
        // 2 views of 3 images, view-major: row j * 3 + i is view j of image i.
        let mask = TokenMask {
            n_patches: 9,
            keep: (0..6u32).map(|r| vec![r, r + 1]).collect(),
        };
        let part = mask.part(3, 1, 2);
        assert_eq!(part.n_patches, 9);
        assert_eq!(
            part.keep,
            vec![vec![1, 2], vec![2, 3], vec![4, 5], vec![5, 6]]
        );
        assert_eq!(mask.part(3, 0, 3), mask);
    }
}
