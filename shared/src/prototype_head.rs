//! What the browser's learn mode needs beyond a classifier: the MSN projection head and
//! prototypes, carried by a classifier model file when `cxr-msn export --prototypes-from`
//! adds them, and the prototype arithmetic of the MSN loss applied to single images.
//!
//! The head is the pretraining's EMA *target* head, the one that produced the targets. The
//! page uses it for every view, targets and anchors alike (the anchor head, whose running
//! average it is, is not shipped): what a student sees is the assignment the trained
//! network gives each view, not the anchor branch of one particular training step.
//!
//! ```text
//! [CLS] v [N, D] -> h (eval mode) -> z [N, d_out] -> cos(z, Q) [N, K] -> softmax(/ tau)
//! ```

use burn::module::{Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{LossConfig, MsnConfig};
use crate::heads::ProjectionHead;
use crate::image::GreyImage;
use crate::loss::{l2_normalize, sharpened_targets, sinkhorn};
use crate::msn::MultimodalMsn;
use crate::preprocess::BatchData;
use crate::vit::VisionTransformer;

/// The MSN target projection head h and the prototypes Q `[K, d_out]`.
#[derive(Module, Debug)]
pub struct PrototypeHead {
    /// h, from the pretraining's target branch (BatchNorm uses its running statistics).
    pub head: ProjectionHead,
    /// The prototypes `[K, d_out]` (not normalised; every use normalises them).
    pub prototypes: Param<Tensor<2>>,
}

/// Prototype assignments of a few projected embeddings, as the loss sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignments {
    /// `softmax(cos(z_i, Q) / tau)` per row, `[N][K]`.
    pub probs: Vec<Vec<f32>>,
    /// Row 0 sharpened: `softmax(cos(z_0, Q) / (tau * T))`, `[K]`.
    pub target: Vec<f32>,
    /// Cross-entropy `-sum_k target_k log probs_ik` per row (row 0 included).
    pub cross_entropy: Vec<f32>,
    /// Entropy `-sum_k p_ik log p_ik` per row, in nats.
    pub entropy: Vec<f32>,
}

/// The Sinkhorn-Knopp step on a small batch: assignments before and after balancing.
#[derive(Debug, Clone, PartialEq)]
pub struct Balanced {
    /// Sharpened assignments `[B][K]` (rows sum to 1).
    pub before: Vec<Vec<f32>>,
    /// After Sinkhorn-Knopp `[B][K]`: rows sum to 1; columns approach B / K as the
    /// iterations grow (the loss stops after a few, so they are only near it).
    pub after: Vec<Vec<f32>>,
}

impl PrototypeHead {
    /// The head and prototypes of a pretraining model (its EMA target head).
    pub fn from_pretraining(model: &MultimodalMsn) -> Self {
        Self {
            head: model.target_head.clone().no_grad(),
            prototypes: Param::from_tensor(model.prototypes.val().detach()).set_require_grad(false),
        }
    }

    /// A skeleton of `config`'s shapes, to load weights into.
    pub fn init(config: &MsnConfig, device: &Device) -> Self {
        Self {
            head: config.head.init(device),
            prototypes: Param::from_tensor(Tensor::zeros(
                [config.num_prototypes, config.head.d_out],
                device,
            )),
        }
    }

    /// Number of prototypes K.
    pub fn prototypes(&self) -> usize {
        self.prototypes.lazy_shape().dims::<2>()[0]
    }

    /// Width of the projection d_out.
    pub fn projection_dim(&self) -> usize {
        self.prototypes.lazy_shape().dims::<2>()[1]
    }

    /// Projects embeddings `[N, D]` -> `[N, d_out]` (eval-mode BatchNorm).
    pub fn project(&self, embeddings: Tensor<2>) -> Tensor<2> {
        self.head.forward(embeddings)
    }

    /// Assignments of projected rows `z` (`[N][d_out]`, row 0 the target) at temperature
    /// `loss.temperature`, the target sharpened by `loss.sharpen_temperature`.
    ///
    /// Reads its results back synchronously: in a browser, call it on a CPU device (WebGPU
    /// reads must be asynchronous). The same holds for [`Self::balance`].
    pub fn assign(&self, z: &[Vec<f32>], loss: &LossConfig) -> Result<Assignments, String> {
        let device = self.prototypes.val().device();
        let z = self.rows(z, &device)?;
        let protos = l2_normalize(self.prototypes.val());
        let zn = l2_normalize(z);
        let logits = zn.clone().matmul(protos.clone().transpose());
        let log_p = log_softmax(logits.div_scalar(loss.temperature), 1);
        let p = log_p.clone().exp();
        let target = sharpened_targets(zn.narrow(0, 0, 1), protos, loss);
        let ce = (target.clone().neg() * log_p.clone()).sum_dim(1);
        let entropy = (p.clone().neg() * log_p).sum_dim(1);
        Ok(Assignments {
            probs: to_rows(p)?,
            target: to_rows(target)?.remove(0),
            cross_entropy: to_vec(ce)?,
            entropy: to_vec(entropy)?,
        })
    }

    /// The sharpened assignments of a batch of projected rows `z` (`[B][d_out]`, one per
    /// image) before and after `loss.sinkhorn_iterations` of Sinkhorn-Knopp balancing.
    pub fn balance(&self, z: &[Vec<f32>], loss: &LossConfig) -> Result<Balanced, String> {
        let device = self.prototypes.val().device();
        let z = l2_normalize(self.rows(z, &device)?);
        let before = sharpened_targets(z, l2_normalize(self.prototypes.val()), loss);
        let after = sinkhorn(before.clone(), loss.sinkhorn_iterations);
        Ok(Balanced {
            before: to_rows(before)?,
            after: to_rows(after)?,
        })
    }

    /// Rows `[N][d_out]` as a tensor, checked.
    fn rows(&self, z: &[Vec<f32>], device: &Device) -> Result<Tensor<2>, String> {
        let d = self.projection_dim();
        if z.is_empty() {
            return Err("no projected embeddings were given".into());
        }
        if let Some((i, row)) = z.iter().enumerate().find(|(_, r)| r.len() != d) {
            return Err(format!(
                "projected embedding {i} has {} values; this model projects to {d}",
                row.len()
            ));
        }
        if z.iter().flatten().any(|v| !v.is_finite()) {
            return Err("a projected embedding holds a value that is not a finite number".into());
        }
        let values: Vec<f32> = z.iter().flatten().copied().collect();
        Ok(Tensor::from_data(
            TensorData::new(values, [z.len(), d]),
            device,
        ))
    }
}

/// A fixed grey test card of side `size` (smooth gradients plus a disc): the input whose
/// [CLS] embedding identifies an encoder, so that an embedding map made by `cxr-msn embed`
/// can be checked against the model a page has loaded.
pub fn reference_image(size: usize) -> GreyImage {
    let s = size.max(1) as f32;
    let pixels = (0..size * size)
        .map(|i| {
            let (x, y) = ((i % size) as f32 / s, (i / size) as f32 / s);
            let disc = ((x - 0.4).powi(2) + (y - 0.55).powi(2) < 0.06) as u8 as f32;
            (0.25 + 0.4 * x * y + 0.2 * (6.0 * y).sin().abs() + 0.15 * disc).clamp(0.0, 1.0)
        })
        .collect();
    GreyImage {
        width: size,
        height: size,
        pixels,
    }
}

/// The [CLS] embedding `[D]` of [`reference_image`] under `encoder` (its input size),
/// with `normalization`: an encoder's signature.
pub fn encoder_signature(
    encoder: &VisionTransformer,
    image_size: usize,
    normalization: &crate::config::Normalization,
    device: &Device,
) -> Result<Tensor<2>, String> {
    let card = reference_image(image_size);
    let batch = BatchData::pack(&[&card], normalization).map_err(|e| e.to_string())?;
    Ok(encoder.forward(batch.to_tensor(device), None))
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na * nb)) as f32
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, String> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))
}

fn to_rows(t: Tensor<2>) -> Result<Vec<Vec<f32>>, String> {
    let [_, k] = t.dims();
    Ok(to_vec(t)?.chunks(k).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VitPreset;

    /// Two prototypes at right angles in 2-D and a hand-derived case.
    fn two_prototypes() -> (PrototypeHead, LossConfig) {
        let device = Device::flex();
        let mut config = MsnConfig::paper(VitPreset::Tiny);
        config.num_prototypes = 2;
        config.head.d_out = 2;
        config.head.d_in = 4;
        config.head.hidden = 4;
        let mut head = PrototypeHead::init(&config, &device);
        head.prototypes = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![3.0f32, 0.0, 0.0, 0.5], [2, 2]),
            &device,
        ));
        (head, config.loss)
    }

    #[test]
    fn assignments_match_a_hand_computation() {
        let (head, mut loss) = two_prototypes();
        loss.temperature = 0.5;
        loss.sharpen_temperature = 0.5;
        // z0 along prototype 0: cosines (1, 0); z1 at 45 degrees: (1/sqrt2, 1/sqrt2).
        let a = head
            .assign(&[vec![2.0, 0.0], vec![1.0, 1.0]], &loss)
            .unwrap();
        let e2 = (2.0f64).exp();
        let p0 = [e2 / (e2 + 1.0), 1.0 / (e2 + 1.0)];
        assert!((a.probs[0][0] as f64 - p0[0]).abs() < 1e-6);
        assert!(
            (a.probs[1][0] - 0.5).abs() < 1e-6,
            "equal cosines split evenly"
        );
        // Sharpened at tau * T = 0.25: logits (4, 0).
        let e4 = (4.0f64).exp();
        let t = [e4 / (e4 + 1.0), 1.0 / (e4 + 1.0)];
        assert!((a.target[0] as f64 - t[0]).abs() < 1e-6);
        let ce1 = -(t[0] * 0.5f64.ln() + t[1] * 0.5f64.ln());
        assert!((a.cross_entropy[1] as f64 - ce1).abs() < 1e-5, "{a:?}");
        let ce0 = -(t[0] * p0[0].ln() + t[1] * p0[1].ln());
        assert!((a.cross_entropy[0] as f64 - ce0).abs() < 1e-5);
        assert!((a.entropy[1] as f64 - 2f64.ln()).abs() < 1e-5);
    }

    #[test]
    fn sinkhorn_balances_a_batch_that_prefers_one_prototype() {
        let (head, mut loss) = two_prototypes();
        loss.sinkhorn_iterations = 50;
        let z = vec![vec![1.0, 0.1], vec![1.0, 0.3], vec![1.0, 0.9]];
        let b = head.balance(&z, &loss).unwrap();
        let mass = |rows: &[Vec<f32>], k: usize| rows.iter().map(|r| r[k]).sum::<f32>();
        assert!(mass(&b.before, 0) > 2.0, "all three lean to prototype 0");
        for k in 0..2 {
            assert!((mass(&b.after, k) - 1.5).abs() < 1e-3, "B/K = 3/2 each");
        }
        for row in &b.after {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        }
        assert!(
            b.after[2][1] > b.after[0][1],
            "the order within a column is kept"
        );
    }

    #[test]
    fn malformed_rows_are_refused_with_the_reason() {
        let (head, loss) = two_prototypes();
        assert!(
            head.assign(&[], &loss)
                .unwrap_err()
                .contains("no projected")
        );
        let err = head.assign(&[vec![1.0, 2.0, 3.0]], &loss).unwrap_err();
        assert!(
            err.contains("3 values") && err.contains("projects to 2"),
            "{err}"
        );
        let err = head.balance(&[vec![f32::NAN, 0.0]], &loss).unwrap_err();
        assert!(err.contains("finite"), "{err}");
    }

    #[test]
    fn cosine_of_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.70710677).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }
}
