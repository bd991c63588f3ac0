//! The DINO and MAE pretraining steps over parts of the batch, on the CPU's cores at once
//! (the mechanism is [`crate::split_backward`]'s, as for MSN in [`crate::msn_parts`]).
//!
//! Both losses are means of per-image terms, so each part runs the whole model on its
//! images and the batch's loss is the parts' losses weighted by their share of the images:
//!
//! - **DINO**: each image's cross-entropies between the teacher's global views and the
//!   student's other views; the centre the teacher's outputs are shifted by is the one
//!   from before the step (a parameter, the same for every part), and the batch centre the
//!   step then moves it toward is the same weighted mean of the parts' centres.
//! - **MAE**: the squared error over each image's removed patches, averaged over all
//!   removed patches of the batch; every image loses the same number of patches
//!   ([`TokenMask::sample`]), so the batch mean is the weighted mean of the parts' means.
//!
//! The same loss and gradients as one pass over the whole batch, up to floating-point
//! summation order (checked by the tests below).

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use cxr_msn::config::DinoConfig;
use cxr_msn::dino::Dino;
use cxr_msn::mae::Mae;
use cxr_msn::masking::TokenMask;
use cxr_msn::msn::MsnBatch;
use cxr_msn::pixels::Pixels;

use crate::split_backward::{Part, check_ranges, finish_backward, forward_parts};

/// A batch's loss computed over parts, with what its backward needs.
pub struct SplitLoss<R> {
    /// The loss over the whole batch, `[1]`.
    pub total: Tensor<1>,
    parts: Vec<Part<R>>,
}

impl<R: Module + Send> SplitLoss<R> {
    /// The gradients of the loss with respect to `model`'s parameters (`model` is the
    /// module the parts are replicas of).
    pub fn backward(self, model: &R) -> GradientsParams {
        finish_backward(self.total.backward(), model, self.parts)
    }
}

/// Runs `run(replica, start, len)`, which returns the mean loss (`[1]`) of images
/// `start..start + len` of a batch of `b` and anything else, over `ranges` at once; the
/// batch's loss is the parts' losses weighted by `len / b`.
///
/// # Panics
/// On ranges that do not cover the `b` images in order.
fn weighted_mean<R, X, F>(
    model: &R,
    b: usize,
    ranges: &[(usize, usize)],
    run: F,
) -> (SplitLoss<R>, Vec<X>)
where
    R: Module + Clone + Send + Sync,
    X: Send,
    F: Fn(&R, usize, usize) -> (Tensor<1>, X) + Sync,
{
    check_ranges(ranges, b);
    let outs = forward_parts(model, ranges, |replica, start, len| {
        let (loss, extra) = run(replica, start, len);
        (vec![loss.reshape([1, 1])], extra)
    });
    let (parts, extras): (Vec<_>, Vec<_>) = outs.into_iter().unzip();
    let total = parts
        .iter()
        .zip(ranges)
        .map(|(p, &(_, len))| p.leaves()[0].clone().mul_scalar(len as f64 / b as f64))
        .reduce(|x, y| x + y)
        .expect("at least one part")
        .reshape([1]);
    (SplitLoss { total, parts }, extras)
}

/// DINO's loss over the batch split into `ranges` (see [`Dino::forward_loss`]), and the
/// batch centre of the teacher's outputs, `[1, K]`.
///
/// # Panics
/// As [`Dino::forward_loss`] on a batch that does not fit, and on ranges that do not
/// cover it in order.
pub fn dino(
    model: &Dino,
    batch: MsnBatch,
    teacher_temperature: f64,
    cfg: &DinoConfig,
    ranges: &[(usize, usize)],
) -> (SplitLoss<Dino>, Tensor<2>) {
    let b = batch.target.dims()[0];
    let (loss, centres) = weighted_mean(model, b, ranges, |replica, start, len| {
        let out = replica.forward_loss(batch.part(start, len), teacher_temperature, cfg);
        (out.total, out.batch_center.detach())
    });
    let centre = centres
        .into_iter()
        .zip(ranges)
        .map(|(c, &(_, len))| c.mul_scalar(len as f64 / b as f64))
        .reduce(|x, y| x + y)
        .expect("at least one part");
    (loss, centre)
}

/// MAE's loss on `images` (`[B, C, S, S]`) with the patches of `mask` kept, over the batch
/// split into `ranges` (see [`Mae::forward_loss`]).
///
/// # Panics
/// On a mask whose rows do not all keep the same number of patches, and on ranges that do
/// not cover the batch in order.
pub fn mae(
    model: &Mae,
    images: Pixels,
    mask: &TokenMask,
    norm_pix: bool,
    ranges: &[(usize, usize)],
) -> SplitLoss<Mae> {
    let b = images.dims()[0];
    let kept = mask.keep.first().map_or(0, Vec::len);
    assert!(
        mask.keep.iter().all(|k| k.len() == kept),
        "MAE's split loss needs the same number of removed patches in every image"
    );
    let (loss, _) = weighted_mean(model, b, ranges, |replica, start, len| {
        let part = images.clone().narrow(start, len);
        let out = replica.forward_loss(part, &mask.part(b, start, len), norm_pix);
        (out.loss, ())
    });
    loss
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};
    use cxr_msn::config::{Method, MsnConfig, Profile, VitPreset};
    use cxr_msn::rand::SeedableRng;
    use cxr_msn::rand::rngs::StdRng;

    use crate::split_backward::assert_same_gradients;
    use crate::split_backward::fixtures::{random_batch, shrink};

    /// A small model of `method` (see [`shrink`]).
    fn small(method: Method) -> MsnConfig {
        let mut c = MsnConfig::for_profile(Profile::Paper, VitPreset::Tiny).with_method(method);
        shrink(&mut c);
        if let Some(d) = c.dino.as_mut() {
            d.hidden = 24;
            d.bottleneck = 8;
            d.out_dim = 12;
        }
        if let Some(m) = c.mae.as_mut() {
            m.decoder_dim = 16;
            m.decoder_depth = 1;
            m.decoder_heads = 2;
        }
        c.validate().unwrap();
        c
    }

    fn assert_close(whole: f32, split: f32, what: &str) {
        assert!(
            (whole - split).abs() <= 1e-5 * whole.abs().max(1.0),
            "{what}: {whole} whole, {split} split"
        );
    }

    /// Uneven parts, one of a single image.
    const RANGES: [(usize, usize); 3] = [(0, 2), (2, 1), (3, 2)];

    #[test]
    fn dino_split_loss_centre_and_gradients_equal_the_whole_batch_ones() {
        let config = small(Method::Dino);
        let device = Device::flex().autodiff();
        device.seed(5);
        let mut model = config.init_dino(&device).unwrap();
        let cfg = config.dino.clone().unwrap();
        // A non-zero centre, as after a few steps.
        let centre = Tensor::random([1, cfg.out_dim], Distribution::Uniform(0.0, 1.0), &device);
        model.update_center(centre, 0.5);
        let batch = random_batch(&config, 5, &device);
        let whole = model.forward_loss(batch.clone(), 0.05, &cfg);
        let whole_total = whole.total.clone().into_scalar::<f32>();
        let whole_centre = whole.batch_center.into_data().try_to_vec::<f32>().unwrap();
        let whole_grads = GradientsParams::from_grads(whole.total.backward(), &model);

        let (split, centre) = dino(&model, batch, 0.05, &cfg, &RANGES);
        assert_close(whole_total, split.total.clone().into_scalar(), "loss");
        for (w, s) in whole_centre
            .iter()
            .zip(centre.into_data().try_to_vec::<f32>().unwrap())
        {
            assert_close(*w, s, "batch centre");
        }
        let split_grads = split.backward(&model);
        let compared = assert_same_gradients(&model, &whole_grads, &split_grads);
        assert!(compared > 20, "{compared} parameters compared");
    }

    #[test]
    fn mae_split_loss_and_gradients_equal_the_whole_batch_ones() {
        let config = small(Method::Mae);
        let device = Device::flex().autodiff();
        device.seed(6);
        let model = config.init_mae(&device).unwrap();
        let cfg = config.mae.clone().unwrap();
        let b = 5;
        let images = Tensor::random([b, 3, 32, 32], Distribution::Uniform(-1.0, 1.0), &device);
        let mask = TokenMask::sample(b, 16, cfg.mask_ratio, &mut StdRng::seed_from_u64(2));
        for norm_pix in [true, false] {
            let whole = model.forward_loss(images.clone(), &mask, norm_pix).loss;
            let whole_total = whole.clone().into_scalar::<f32>();
            let whole_grads = GradientsParams::from_grads(whole.backward(), &model);

            let split = mae(&model, images.clone().into(), &mask, norm_pix, &RANGES);
            assert_close(whole_total, split.total.clone().into_scalar(), "loss");
            let split_grads = split.backward(&model);
            let compared = assert_same_gradients(&model, &whole_grads, &split_grads);
            assert!(compared > 20, "{compared} parameters compared");
        }
    }
}
