//! Training steps over parts of a batch on the CPU's cores at once, with the gradients of
//! one pass over the whole batch (up to floating-point summation order).
//!
//! Burn's CPU backend runs element-wise kernels, forward and backward, on the calling
//! thread, and its autodiff keeps each connected graph behind one lock, so parts only run
//! in parallel if each has a graph of its own. A step is cut where the per-image layers
//! (an encoder) end and the batch-level ones (heads with BatchNorm, a loss over the batch)
//! begin:
//!
//! 1. **Per image, in parallel** ([`forward_parts`]): each part goes through a *replica* of
//!    the per-image layers whose parameters are fresh autodiff leaves with the same
//!    parameter ids, so its graph shares nothing with the other parts'.
//! 2. **Batch-level, once**: the parts' outputs, detached into new leaves
//!    ([`Part::leaves`]) and put back in the batch's order, go through the rest of the
//!    step; its backward gives the batch-level parameters' gradients and the loss's
//!    gradient with respect to every part output.
//! 3. **Per image, in parallel** ([`finish_backward`]): each part's backward starts from
//!    `sum(out * dL/dout)` over its outputs; by the chain rule that yields the part's share
//!    of the per-image layers' gradients, which are summed in the parts' order.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Tensor};
use rayon::prelude::*;

/// Replaces every trainable parameter's tensor with a fresh autodiff leaf of the same
/// value (same parameter id), so that what is computed from it forms a graph of its own.
struct FreshLeaves;

impl ModuleMapper for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            if t.is_require_grad() {
                t.detach().require_grad()
            } else {
                t
            }
        })
    }
}

/// `module` with its trainable parameters as fresh autodiff leaves (same ids and values).
pub fn fresh_leaves<M: Module>(module: M) -> M {
    module.map(&mut FreshLeaves)
}

/// Adds the gradients of a part into the running total, parameter by parameter.
struct AddInto<'a> {
    total: &'a mut GradientsParams,
    part: GradientsParams,
}

impl ModuleVisitor for AddInto<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.part.remove::<D>(param.id) {
            let sum = match self.total.remove::<D>(param.id) {
                Some(t) => t + g,
                None => g,
            };
            self.total.register(param.id, sum);
        }
    }
}

/// One part's pass through the per-image layers, kept for its backward.
pub struct Part<R> {
    /// The replica of the per-image layers this part ran through.
    replica: R,
    /// The part's outputs, in its own graph.
    outputs: Vec<Tensor<2>>,
    /// The same values as new leaves, for the batch-level graph.
    leaves: Vec<Tensor<2>>,
}

impl<R> Part<R> {
    /// The part's outputs as leaves of the batch-level graph, in the order `run` returned them.
    pub fn leaves(&self) -> &[Tensor<2>] {
        &self.leaves
    }
}

/// Checks that `ranges` (`(start, len)` pairs) split `b` images into consecutive, non-empty
/// parts, in order.
///
/// # Panics
/// When they do not.
pub fn check_ranges(ranges: &[(usize, usize)], b: usize) {
    let mut next = 0;
    for &(start, len) in ranges {
        assert!(
            start == next && len > 0,
            "ranges {ranges:?} do not split {b} images"
        );
        next += len;
    }
    assert_eq!(next, b, "ranges {ranges:?} do not split {b} images");
}

/// Runs `run(replica, start, len)` for each of `ranges` at once on the CPU's pool, each
/// with its own [`fresh_leaves`] replica of `layers`. `run` returns the part's outputs
/// that the batch-level layers take (with gradient) and anything else (without).
pub fn forward_parts<R, X, F>(layers: &R, ranges: &[(usize, usize)], run: F) -> Vec<(Part<R>, X)>
where
    R: Module + Clone + Send + Sync,
    X: Send,
    F: Fn(&R, usize, usize) -> (Vec<Tensor<2>>, X) + Sync,
{
    let outs: Vec<(R, Vec<Tensor<2>>, X)> = ranges
        .par_iter()
        .map(|&(start, len)| {
            let replica = fresh_leaves(layers.clone());
            let (outputs, extra) = run(&replica, start, len);
            (replica, outputs, extra)
        })
        .collect();
    outs.into_iter()
        .map(|(replica, outputs, extra)| {
            let leaves = outputs
                .iter()
                .map(|o| o.clone().detach().require_grad())
                .collect();
            (
                Part {
                    replica,
                    outputs,
                    leaves,
                },
                extra,
            )
        })
        .collect()
}

/// The gradients of a loss with respect to `model`'s parameters, from `grads` (the
/// backward of the batch-level graph, whose leaves include every part's [`Part::leaves`])
/// and the parts' own backward passes, run at once and summed in the parts' order.
/// `model` holds every parameter: the batch-level ones and those the replicas copy.
///
/// # Panics
/// When a part's leaf took no part in the loss.
pub fn finish_backward<M, R>(
    mut grads: Gradients,
    model: &M,
    parts: Vec<Part<R>>,
) -> GradientsParams
where
    M: Module,
    R: Module + Send,
{
    let parts: Vec<(R, Tensor<1>)> = parts
        .into_iter()
        .map(|p| {
            let surrogate = p
                .outputs
                .into_iter()
                .zip(&p.leaves)
                .map(|(out, leaf)| {
                    let g = leaf
                        .grad_remove(&mut grads)
                        .expect("every part output takes part in the loss");
                    (out * g).sum()
                })
                .reduce(|a, b| a + b)
                .expect("at least one output per part");
            (p.replica, surrogate)
        })
        .collect();
    let mut total = GradientsParams::from_grads(grads, model);
    let part_grads: Vec<GradientsParams> = parts
        .into_par_iter()
        .map(|(replica, surrogate)| GradientsParams::from_grads(surrogate.backward(), &replica))
        .collect();
    for part in part_grads {
        model.visit(&mut AddInto {
            total: &mut total,
            part,
        });
    }
    total
}

/// Test helper: asserts that two sets of gradients of `model`'s parameters cover the same
/// parameters and agree within 1e-5 of each gradient's largest entry (absolute below 1: a
/// bias before BatchNorm has an analytically zero gradient, so only rounding is left), and
/// that none is all zeros. Returns how many parameters were compared.
#[cfg(test)]
pub(crate) fn assert_same_gradients<M: Module>(
    model: &M,
    whole: &GradientsParams,
    split: &GradientsParams,
) -> usize {
    use burn::module::ParamId;

    struct Collect<'a>(&'a GradientsParams, Vec<(ParamId, Vec<f32>)>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                self.1
                    .push((param.id, g.into_data().try_to_vec::<f32>().unwrap()));
            }
        }
    }
    let mut a = Collect(whole, Vec::new());
    model.visit(&mut a);
    let mut s = Collect(split, Vec::new());
    model.visit(&mut s);
    let ids = |c: &Collect| c.1.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&s), "the same parameters get gradients");
    for ((id, w), (_, p)) in a.1.iter().zip(&s.1) {
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = w.iter().zip(p).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= 1e-5 * scale.max(1.0),
            "parameter {id}: gradients differ by {worst} (largest {scale})"
        );
        assert!(w.iter().any(|x| *x != 0.0), "parameter {id}: zero gradient");
    }
    a.1.len()
}

/// Small models and random batches for the tests of the split passes.
#[cfg(test)]
pub(crate) mod fixtures {
    use burn::tensor::{Device, Distribution, Tensor};
    use cxr_msn::config::MsnConfig;
    use cxr_msn::msn::{AnchorGroup, MsnBatch};

    /// Shrinks `c`'s ViT to 2 blocks of width 32 (2 heads) at 32 px in patches of 8, with
    /// 32 px large views and three 16 px focal views.
    pub fn shrink(c: &mut MsnConfig) {
        (
            c.vit.image_size,
            c.vit.patch_size,
            c.vit.dim,
            c.vit.heads,
            c.vit.depth,
        ) = (32, 8, 32, 2, 2);
        c.head.d_in = 32;
        c.views.large_size = 32;
        c.views.focal_size = 16;
        c.views.focal_views = 3;
    }

    /// A batch of `b` images in [-1, 1] with `config`'s views: the target, one large
    /// anchor and the focal views, and EHR in [0, 1] when the configuration has some.
    pub fn random_batch(config: &MsnConfig, b: usize, device: &Device) -> MsnBatch {
        let v = &config.views;
        let images = |n: usize, size: usize| {
            Tensor::<4>::random([n, 3, size, size], Distribution::Uniform(-1.0, 1.0), device)
        };
        MsnBatch {
            target: images(b, v.large_size).into(),
            anchors: vec![
                AnchorGroup {
                    images: images(b, v.large_size).into(),
                },
                AnchorGroup {
                    images: images(v.focal_views * b, v.focal_size).into(),
                },
            ],
            ehr: config.ehr.as_ref().map(|e| {
                Tensor::random(
                    [b, e.feature_set.width()],
                    Distribution::Uniform(0.0, 1.0),
                    device,
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, activation::softmax};
    use cxr_msn::classifier::Classifier;
    use cxr_msn::config::{VitConfig, VitPreset};

    /// A classifier's fine-tuning loss, split at the encoder as `finetune` does, against
    /// the whole batch: a batch-level loss (a softmax over the batch's rows) so that the
    /// parts' gradients depend on each other through the batch-level graph.
    #[test]
    fn split_encoder_gradients_equal_the_whole_batch_ones() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let mut vit = VitConfig::preset(VitPreset::Tiny, 1);
        (
            vit.image_size,
            vit.patch_size,
            vit.dim,
            vit.heads,
            vit.depth,
        ) = (32, 8, 32, 2, 2);
        let model = Classifier::init(&vit, 3, None, &device);
        let images = Tensor::<4>::random([5, 1, 32, 32], Distribution::Uniform(-1.0, 1.0), &device);
        let weights = Tensor::<2>::random([5, 3], Distribution::Uniform(0.0, 1.0), &device);
        let loss = |cls: Tensor<2>| {
            let logits = model.image_head.forward(cls);
            (softmax(logits, 0) * weights.clone()).sum()
        };

        let whole = loss(model.encoder.forward(images.clone(), None));
        let whole_value = whole.clone().into_scalar::<f32>();
        let whole_grads = GradientsParams::from_grads(whole.backward(), &model);

        let parts: Vec<_> = forward_parts(&model.encoder, &[(0, 2), (2, 1), (3, 2)], |e, s, n| {
            (vec![e.forward(images.clone().narrow(0, s, n), None)], ())
        })
        .into_iter()
        .map(|(p, ())| p)
        .collect();
        let cls = Tensor::cat(parts.iter().map(|p| p.leaves()[0].clone()).collect(), 0);
        let split = loss(cls);
        let split_value = split.clone().into_scalar::<f32>();
        let split_grads = finish_backward(split.backward(), &model, parts);

        assert!(
            (whole_value - split_value).abs() <= 1e-5,
            "{whole_value} vs {split_value}"
        );
        let compared = assert_same_gradients(&model, &whole_grads, &split_grads);
        assert!(compared > 20, "{compared} parameters compared");
    }
}
