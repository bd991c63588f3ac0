//! The MSN pretraining step's forward and backward passes over parts of the batch, on the
//! CPU's cores at once (the mechanism is [`crate::split_backward`]'s): the same loss and
//! the same gradients as one pass over the whole batch, up to floating-point summation
//! order.
//!
//! - **Per image, in parallel**: each part of the batch ([`MsnBatch::part`]) goes through
//!   the anchor ViT and the EHR fusion of its own replica; the target ViT (no gradient)
//!   encodes the part's targets alike.
//! - **Batch-level, once**: the parts' embeddings, put back in view-major order, go through
//!   the projection head (its BatchNorm couples the batch), the prototypes and the MSN loss
//!   (Sinkhorn and me-max couple it too) on the whole batch, exactly as in the unsplit pass.
//!
//! This is how data-parallel training must treat MSN's batch-level terms across devices
//! as well: everything up to the embeddings per device, the head, Sinkhorn and me-max
//! over the gathered batch.

use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use cxr_msn::config::MsnConfig;
use cxr_msn::loss::MsnLossOutput;
use cxr_msn::masking::TokenMask;
use cxr_msn::msn::{MsnBatch, MsnForward, MultimodalMsn};

use crate::split_backward::{Part, check_ranges, finish_backward, forward_parts};

/// The loss of a split forward pass, with what its backward needs.
pub struct SplitForward {
    /// The MSN loss over the whole batch.
    pub loss: MsnLossOutput,
    parts: Vec<Part<MultimodalMsn>>,
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
    model.assert_valid(&batch, masks);
    let b = batch.target.dims()[0];
    check_ranges(ranges, b);

    let outs = forward_parts(model, ranges, |replica, start, len| {
        let part = batch.part(start, len);
        let masks: Vec<Option<TokenMask>> = masks
            .iter()
            .map(|m| m.as_ref().map(|m| m.part(b, start, len)))
            .collect();
        let embeddings = replica.anchor_embeddings(part.anchors, part.ehr, &masks);
        let target_cls = replica.target_vit.forward(part.target, None);
        (embeddings, target_cls)
    });
    let (parts, target_cls): (Vec<_>, Vec<_>) = outs.into_iter().unzip();
    // Back to the whole batch's view-major rows: view j of every part, in the parts'
    // order, then view j + 1.
    let whole: Vec<Tensor<2>> = (0..masks.len())
        .map(|g| {
            let views = parts[0].leaves()[g].dims()[0] / ranges[0].1;
            let rows = (0..views)
                .flat_map(|j| {
                    parts
                        .iter()
                        .zip(ranges)
                        .map(move |(p, &(_, len))| p.leaves()[g].clone().narrow(0, j * len, len))
                })
                .collect();
            Tensor::cat(rows, 0)
        })
        .collect();
    let targets = model.project_targets(Tensor::cat(target_cls, 0));
    let anchors = model.project_anchors(whole, config);
    SplitForward {
        loss: model.loss(&MsnForward { anchors, targets }, config),
        parts,
    }
}

impl SplitForward {
    /// The gradients of the loss with respect to `model`'s parameters.
    pub fn backward(self, model: &MultimodalMsn) -> GradientsParams {
        finish_backward(self.loss.total.backward(), model, self.parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use cxr_msn::config::{Profile, VitPreset};
    use cxr_msn::ehr::FeatureSet;

    use crate::split_backward::fixtures::{random_batch, shrink};
    use cxr_msn::rand::SeedableRng;
    use cxr_msn::rand::rngs::StdRng;

    /// A small multimodal MSN (see [`shrink`]): demographic EHR, learned prototypes.
    fn small() -> MsnConfig {
        let mut c = MsnConfig::for_profile(Profile::Paper, VitPreset::Tiny)
            .with_ehr(FeatureSet::from_name("demographic").unwrap());
        shrink(&mut c);
        c.head.hidden = 48;
        c.head.d_out = 16;
        c.num_prototypes = 10;
        c.freeze_prototypes = false;
        c.mask_ratio = 0.25;
        c.validate().unwrap();
        c
    }

    #[test]
    fn split_loss_and_gradients_equal_the_whole_batch_ones() {
        let config = small();
        let device = Device::flex().autodiff();
        device.seed(11);
        let model = config.init(&device).unwrap();
        let batch = random_batch(&config, 5, &device);
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
        // Anchor ViT, fusion, head and prototypes all train here.
        let compared =
            crate::split_backward::assert_same_gradients(&model, &whole_grads, &split_grads);
        assert!(compared > 20, "{compared} parameters compared");
    }
}
