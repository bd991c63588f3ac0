//! The MSN pretraining step's forward and backward passes over parts of the batch, on the
//! CPU's cores at once: the same loss and the same gradients as one pass over the whole
//! batch, up to floating-point summation order.
//!
//! Burn's CPU backend runs element-wise kernels, forward and backward, on the calling
//! thread, and its autodiff keeps each connected graph behind one lock; so parts only run
//! in parallel if each has a graph of its own. The split follows the model's structure:
//!
//! 1. **Per image, in parallel.** Each part of the batch ([`MsnBatch::part`]) goes through
//!    the anchor ViT and the EHR fusion of a *replica* whose parameters are fresh autodiff
//!    leaves with the same parameter ids, so its graph shares nothing with the others.
//!    The target ViT (no gradient) encodes the parts' targets alike.
//! 2. **Batch-level, once.** The parts' embeddings, detached into new leaves and put back in
//!    view-major order, go through the projection head (its BatchNorm couples the batch),
//!    the prototypes and the MSN loss (Sinkhorn and me-max couple it too) on the whole
//!    batch, exactly as in the unsplit pass. Its backward gives the head's and the
//!    prototypes' gradients and the loss's gradient with respect to every embedding.
//! 3. **Per image, in parallel.** Each part's backward starts from `sum(e * dL/de)` over
//!    its embeddings `e`: by the chain rule it yields that part's share of the ViT and
//!    fusion gradients, which are summed in the parts' order (deterministic).
//!
//! This is how data-parallel training must treat MSN's batch-level terms across devices
//! as well: everything up to the embeddings per device, the head, Sinkhorn and me-max
//! over the gathered batch.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use cxr_msn::config::MsnConfig;
use cxr_msn::loss::MsnLossOutput;
use cxr_msn::masking::TokenMask;
use cxr_msn::msn::{MsnBatch, MultimodalMsn};
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
struct Part {
    /// The model whose anchor ViT and fusion are this part's fresh leaves.
    replica: MultimodalMsn,
    /// The part's embeddings per anchor group, `[m * len, D]`, view-major, in its graph.
    embeddings: Vec<Tensor<2>>,
    /// The same values as new leaves of the batch-level graph.
    leaves: Vec<Tensor<2>>,
}

/// The loss of a split forward pass, with what its backward needs.
pub struct SplitForward {
    /// The MSN loss over the whole batch.
    pub loss: MsnLossOutput,
    parts: Vec<Part>,
}

/// The pretraining forward pass and MSN loss over the batch split into `ranges` (consecutive
/// `(start, len)` image ranges covering it; from [`crate::cpu_parallel::ranges`]).
///
/// # Panics
/// On a batch that fails [`MultimodalMsn::check_batch`] or masks that fail
/// [`MultimodalMsn::check_masks`], and on ranges that do not cover the batch in order.
pub fn forward(
    model: &MultimodalMsn,
    batch: MsnBatch,
    masks: &[Option<TokenMask>],
    config: &MsnConfig,
    ranges: &[(usize, usize)],
) -> SplitForward {
    if let Err(e) = model
        .check_batch(&batch)
        .and_then(|_| model.check_masks(&batch, masks))
    {
        panic!("invalid MSN batch: {e}");
    }
    let b = batch.target.dims()[0];
    let mut next = 0;
    for &(start, len) in ranges {
        assert!(
            start == next && len > 0,
            "ranges {ranges:?} do not split {b} images"
        );
        next += len;
    }
    assert_eq!(next, b, "ranges {ranges:?} do not split {b} images");

    let per_part = |&(start, len): &(usize, usize)| {
        let part = batch.part(start, len);
        let masks: Vec<Option<TokenMask>> = masks
            .iter()
            .map(|m| m.as_ref().map(|m| m.part(b, start, len)))
            .collect();
        let replica = MultimodalMsn {
            anchor_vit: model.anchor_vit.clone().map(&mut FreshLeaves),
            ehr: model.ehr.clone().map(|e| e.map(&mut FreshLeaves)),
            ..model.clone()
        };
        let embeddings = replica.anchor_embeddings(part.anchors, part.ehr, &masks);
        let target_cls = model.target_vit.forward(part.target, None);
        (replica, embeddings, target_cls)
    };
    let outs: Vec<_> = ranges.par_iter().map(per_part).collect();

    let mut parts = Vec::with_capacity(outs.len());
    let mut target_cls = Vec::with_capacity(outs.len());
    for (replica, embeddings, target) in outs {
        let leaves = embeddings
            .iter()
            .map(|e| e.clone().detach().require_grad())
            .collect();
        parts.push(Part {
            replica,
            embeddings,
            leaves,
        });
        target_cls.push(target);
    }
    // Back to the whole batch's view-major rows: view j of every part, in the parts'
    // order, then view j + 1.
    let groups = masks.len();
    let whole: Vec<Tensor<2>> = (0..groups)
        .map(|g| {
            let views = parts[0].leaves[g].dims()[0] / ranges[0].1;
            let rows = (0..views)
                .flat_map(|j| {
                    parts
                        .iter()
                        .zip(ranges)
                        .map(move |(p, &(_, len))| p.leaves[g].clone().narrow(0, j * len, len))
                })
                .collect();
            Tensor::cat(rows, 0)
        })
        .collect();
    let targets = model.project_targets(Tensor::cat(target_cls, 0));
    let anchors = model.project_anchors(whole, config);
    let forward = cxr_msn::msn::MsnForward { anchors, targets };
    SplitForward {
        loss: model.loss(&forward, config),
        parts,
    }
}

impl SplitForward {
    /// The gradients of the loss with respect to `model`'s parameters: the batch-level
    /// graph's backward, then each part's, in parallel, summed in the parts' order.
    pub fn backward(self, model: &MultimodalMsn) -> GradientsParams {
        let mut grads = self.loss.total.backward();
        let parts: Vec<(MultimodalMsn, Tensor<1>)> = self
            .parts
            .into_iter()
            .map(|p| {
                let surrogate = p
                    .embeddings
                    .into_iter()
                    .zip(&p.leaves)
                    .map(|(e, leaf)| {
                        let g = leaf
                            .grad_remove(&mut grads)
                            .expect("every embedding takes part in the loss");
                        (e * g).sum()
                    })
                    .reduce(|a, b| a + b)
                    .expect("at least one anchor group");
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::ParamId;
    use burn::tensor::{Device, Distribution};
    use cxr_msn::config::{Profile, VitPreset};
    use cxr_msn::ehr::FeatureSet;
    use cxr_msn::msn::AnchorGroup;
    use cxr_msn::rand::SeedableRng;
    use cxr_msn::rand::rngs::StdRng;

    /// A small multimodal MSN: 2 blocks of width 32 at 32 px, a 32 px anchor and three
    /// 16 px focal views per image, demographic EHR, learned prototypes.
    fn small() -> MsnConfig {
        let mut c = MsnConfig::for_profile(Profile::Paper, VitPreset::Tiny)
            .with_ehr(FeatureSet::from_name("demographic").unwrap());
        c.vit.image_size = 32;
        c.vit.patch_size = 8;
        c.vit.dim = 32;
        c.vit.heads = 2;
        c.vit.depth = 2;
        c.head.d_in = 32;
        c.head.hidden = 48;
        c.head.d_out = 16;
        c.num_prototypes = 10;
        c.freeze_prototypes = false;
        c.views.large_size = 32;
        c.views.focal_size = 16;
        c.views.focal_views = 3;
        c.mask_ratio = 0.25;
        c.validate().unwrap();
        c
    }

    /// Every float parameter's gradient, flattened, by id.
    struct Collect<'a>(&'a GradientsParams, Vec<(ParamId, Vec<f32>)>);

    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                let v = g.into_data().try_to_vec::<f32>().unwrap();
                self.1.push((param.id, v));
            }
        }
    }

    #[test]
    fn split_loss_and_gradients_equal_the_whole_batch_ones() {
        let config = small();
        let device = Device::flex().autodiff();
        device.seed(11);
        let model = config.init(&device).unwrap();
        let (b, v) = (5, &config.views);
        let rand = |shape: [usize; 4]| {
            Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &device)
        };
        let batch = MsnBatch {
            target: rand([b, 3, v.large_size, v.large_size]),
            anchors: vec![
                AnchorGroup {
                    images: rand([b, 3, v.large_size, v.large_size]),
                },
                AnchorGroup {
                    images: rand([v.focal_views * b, 3, v.focal_size, v.focal_size]),
                },
            ],
            ehr: Some(Tensor::random(
                [b, config.ehr.as_ref().unwrap().feature_set.width()],
                Distribution::Uniform(0.0, 1.0),
                &device,
            )),
        };
        let masks = model.sample_masks(&batch, &config, &mut StdRng::seed_from_u64(4));
        assert!(
            masks.iter().any(Option::is_some),
            "the test must mask tokens"
        );

        let whole = model.loss(
            &model.forward_pretrain(batch.clone(), &masks, &config),
            &config,
        );
        let whole_total = whole.total.clone().into_scalar::<f32>();
        let whole_grads = GradientsParams::from_grads(whole.total.backward(), &model);

        // Uneven parts, one of a single image.
        let split = forward(&model, batch, &masks, &config, &[(0, 2), (2, 1), (3, 2)]);
        let split_total = split.loss.total.clone().into_scalar::<f32>();
        let split_grads = split.backward(&model);

        assert!(
            (whole_total - split_total).abs() <= 1e-5 * whole_total.abs().max(1.0),
            "loss {whole_total} whole, {split_total} split"
        );
        let mut a = Collect(&whole_grads, Vec::new());
        model.visit(&mut a);
        let mut s = Collect(&split_grads, Vec::new());
        model.visit(&mut s);
        let ids = |c: &Collect| c.1.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&s), "the same parameters get gradients");
        // Anchor ViT, fusion, head and prototypes all train here.
        assert!(a.1.len() > 20, "{} gradients", a.1.len());
        for ((id, w), (_, p)) in a.1.iter().zip(&s.1) {
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = w.iter().zip(p).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            // Relative to the largest entry, or absolute for gradients far below 1 (a bias
            // before BatchNorm has an analytically zero gradient, so only rounding is left).
            assert!(
                worst <= 1e-5 * scale.max(1.0),
                "parameter {id}: gradients differ by {worst} (largest {scale})"
            );
            assert!(w.iter().any(|x| *x != 0.0), "parameter {id}: zero gradient");
        }
    }
}
