//! A batch's forward pass split across the CPU's cores.
//!
//! Burn's flex backend runs matrix products and attention on all cores (rayon), but every
//! element-wise kernel (GELU, layer norm's arithmetic, additions, copies) on the thread that
//! calls it: one forward pass of a ViT keeps about 1.2 of 2 cores busy (profiled in
//! BENCHMARKS.md). Forwarding small parts of the batch from the pool's own threads keeps
//! every core busy, the matrix products inside still share the pool, and a part's
//! activations stay in the core's cache. BENCHMARKS.md measures it: ViT-Tiny at batch 32
//! about twice as fast, with less peak memory. A single image, with no batch to split, has
//! each encoder block cut into pieces over the cores instead ([`encode`], [`OnCores`]). On
//! any other device the batch goes in whole: a GPU wants the largest batch.

use burn::backend::DispatchDevice;
use burn::tensor::{Device, Tensor};
use cxr_msn::pixels::Pixels;
use cxr_msn::vit::{Pieces, VisionTransformer};
use rayon::prelude::*;

/// Items per part of a split batch, at most. Two 224 px images of ViT-Tiny hold their MLP
/// activations (2 x 197 x 768 floats) in a 2 MiB L2 cache; measured on ViT-Tiny and
/// ViT-Small, parts of 2 beat parts of 1 and 4 (BENCHMARKS.md).
pub const PART_ITEMS: usize = 2;

/// Whether `device` is the CPU backend (with or without autodiff), where splitting a
/// batch pays.
pub fn is_cpu(device: &Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// The consecutive ranges `(start, len)` a batch of `batch` items is split into on
/// `device`: on the CPU, parts of at most [`PART_ITEMS`] items and at least one part per
/// thread of the pool (never an empty part); elsewhere the whole batch.
pub fn ranges(device: &Device, batch: usize) -> Vec<(usize, usize)> {
    let parts = if is_cpu(device) {
        batch
            .div_ceil(PART_ITEMS)
            .max(rayon::current_num_threads())
            .clamp(1, batch.max(1))
    } else {
        1
    };
    (0..parts)
        .map(|p| {
            let (start, end) = (p * batch / parts, (p + 1) * batch / parts);
            (start, end - start)
        })
        .collect()
}

/// Calls `f(start, len)` for each of [`ranges`]`(device, batch)`, concurrently on the
/// CPU, and returns the results in the ranges' order. With one range, `f` runs on the
/// calling thread.
pub fn map_ranges<T, F>(device: &Device, batch: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize, usize) -> T + Sync,
{
    let ranges = ranges(device, batch);
    if ranges.len() == 1 {
        let (start, len) = ranges[0];
        return vec![f(start, len)];
    }
    ranges
        .into_par_iter()
        .map(|(start, len)| f(start, len))
        .collect()
}

/// The outputs `f(start, len)` of items `start .. start + len` of a batch of `batch`
/// items on `device`, for an `f` that treats the items independently (inference), computed
/// part by part as [`map_ranges`] splits the batch and concatenated back: the same tensor
/// as one call on the whole batch, up to floating-point summation order.
pub fn forward_in_parts<const O: usize, F>(device: &Device, batch: usize, f: F) -> Tensor<O>
where
    F: Fn(usize, usize) -> Tensor<O> + Sync,
{
    let mut outs = map_ranges(device, batch, f);
    if outs.len() == 1 {
        return outs.pop().expect("one part");
    }
    Tensor::cat(outs, 0)
}

/// [`Pieces`] run on the pool's threads at once, `count` pieces per block.
#[derive(Debug, Clone, Copy)]
pub struct OnCores {
    /// How many pieces a block's work is cut into.
    pub count: usize,
}

impl Pieces for OnCores {
    fn count(&self) -> usize {
        self.count
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) -> Tensor<3> + Sync)) -> Vec<Tensor<3>> {
        (0..n).into_par_iter().map(f).collect()
    }
}

/// How one image's forward pass is cut on `device` when `images` images are scored at
/// once: one piece per thread of the pool on the CPU for a single image; whole otherwise
/// (a batch is split by [`forward_in_parts`] instead, and a GPU wants whole kernels).
pub fn pieces_for(device: &Device, images: usize) -> OnCores {
    let threads = rayon::current_num_threads();
    let count = if images == 1 && is_cpu(device) {
        threads
    } else {
        1
    };
    OnCores { count }
}

/// The encoder's [CLS] embeddings `[B, D]` of images `[B, C, S, S]` (every token kept),
/// spread over the cores on the CPU: a batch in parts ([`forward_in_parts`]), a single
/// image with each block cut into pieces ([`pieces_for`]). Elsewhere one call on the whole
/// batch.
pub fn encode(encoder: &VisionTransformer, images: impl Into<Pixels>) -> Tensor<2> {
    let images = images.into();
    let pieces = pieces_for(&images.device(), images.dims()[0]);
    if pieces.count > 1 {
        // On one of the pool's threads, which then takes part in every piece's work: from
        // outside the pool, each of the 36 runs of pieces (three per block) would wake the
        // pool and put the calling thread to sleep until it is done.
        return rayon::scope(|_| encoder.forward_in_pieces(images, &pieces));
    }
    forward_in_parts(&images.device(), images.dims()[0], |start, len| {
        encoder.forward(images.clone().narrow(start, len), None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn ranges_cover_the_batch_in_order_with_small_parts() {
        let cpu = Device::flex();
        for batch in [1, 2, 3, 7, 32, 33] {
            let r = ranges(&cpu, batch);
            assert!(
                r.iter()
                    .all(|&(_, len)| (1..=PART_ITEMS).contains(&len) || r.len() == 1)
            );
            let mut next = 0;
            for &(start, len) in &r {
                assert_eq!(start, next, "batch {batch}: {r:?}");
                assert!(len >= 1, "batch {batch}: {r:?}");
                next += len;
            }
            assert_eq!(next, batch, "batch {batch}: {r:?}");
        }
        assert_eq!(ranges(&cpu, 0), vec![(0, 0)]);
    }

    #[test]
    fn one_image_on_the_cores_encodes_as_the_whole_forward_does() {
        let device = Device::flex();
        device.seed(5);
        let mut vit = cxr_msn::config::VitConfig::preset(cxr_msn::config::VitPreset::Tiny, 1);
        vit.depth = 2;
        let encoder = vit.init(&device);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("a pool");
        for size in [224, 96] {
            let image =
                Tensor::<4>::random([1, 1, size, size], Distribution::Normal(0.0, 1.0), &device);
            let whole: TensorData = encoder.forward(image.clone(), None).into_data();
            let (pieces, cut) = pool.install(|| {
                let pieces = pieces_for(&device, 1);
                (pieces, encode(&encoder, image.clone()).into_data())
            });
            assert_eq!(pieces.count, 3, "one piece per thread");
            cut.assert_approx_eq::<f32>(&whole, burn::tensor::Tolerance::absolute(1e-5));
        }
        assert_eq!(pieces_for(&device, 2).count, 1, "a batch is split, not cut");
    }

    #[test]
    fn a_split_forward_equals_the_whole_one() {
        let device = Device::flex();
        device.seed(3);
        let x = Tensor::<3>::random([7, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([4, 6], Distribution::Normal(0.0, 1.0), &device);
        // Per-item work with a reduction over each item: a softmax of x w.
        let f =
            |t: Tensor<3>| burn::tensor::activation::softmax(t.matmul(w.clone().unsqueeze()), 2);
        let whole: TensorData = f(x.clone()).into_data();
        let parts: TensorData =
            forward_in_parts(&device, 7, |start, len| f(x.clone().narrow(0, start, len)))
                .into_data();
        assert_eq!(parts.shape(), whole.shape());
        parts.assert_approx_eq::<f32>(&whole, burn::tensor::Tolerance::absolute(1e-6));
    }
}
