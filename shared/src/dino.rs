//! The DINO baseline (Caron et al. 2021, arXiv 2104.14294) on the project's encoder:
//! self-distillation between a student and an EMA teacher, with no labels and no EHR.
//!
//! ```text
//! globals x_g [2B, C, 224, 224] (target + random anchor views)
//! locals  x_l [L*B, C, 96, 96]   (the focal views)
//! teacher: x_g -> teacher_vit -> teacher_head                      -> t [2B, K]
//! student: x_g, x_l -> student_vit -> student_head                 -> s [(2+L)B, K]
//! loss    dino_loss(s, t, centre, teacher temperature)
//! centre  <- m * centre + (1 - m) * mean(t)
//! ```
//! The teacher is an EMA of the student ([`crate::ema::blend`]), updated after the
//! optimiser step on a cosine momentum schedule; it never receives a gradient. Downstream,
//! the teacher's encoder is kept, as DINO evaluates it.

use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{gelu, log_softmax, softmax};
use burn::tensor::{Device, FloatDType, Tensor};

use crate::config::{DinoConfig, MsnConfig};
use crate::ema;
use crate::error::ConfigError;
use crate::loss::l2_normalize;
use crate::msn::MsnBatch;
use crate::pixels::Pixels;
use crate::vit::VisionTransformer;

/// The DINO projection head: a 3-layer MLP with exact GELU (no BatchNorm), an L2-normalised
/// bottleneck, and a weight-normalised last layer without bias whose gain is fixed to 1
/// (each output unit's weight vector has unit norm).
#[derive(Module, Debug)]
pub struct DinoHead {
    /// Linear(D -> hidden).
    pub fc1: Linear,
    /// Linear(hidden -> hidden).
    pub fc2: Linear,
    /// Linear(hidden -> bottleneck).
    pub fc3: Linear,
    /// Linear(bottleneck -> K), no bias; its weight is used normalised.
    pub last_layer: Linear,
}

impl DinoHead {
    /// A head for an encoder of width `dim`: N(0, 0.02) weights and zero biases in the MLP,
    /// PyTorch's default initialisation for the last layer.
    pub fn new(dim: usize, cfg: &DinoConfig, device: &Device) -> Self {
        let linear = |d_in: usize, d_out: usize| {
            let mut layer = LinearConfig::new(d_in, d_out)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device);
            layer.bias = Some(Initializer::Zeros.init([d_out], device));
            layer
        };
        Self {
            fc1: linear(dim, cfg.hidden),
            fc2: linear(cfg.hidden, cfg.hidden),
            fc3: linear(cfg.hidden, cfg.bottleneck),
            last_layer: LinearConfig::new(cfg.bottleneck, cfg.out_dim)
                .with_bias(false)
                .init(device),
        }
    }

    /// `[N, D]` -> logits `[N, K]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = gelu(self.fc1.forward(x));
        let x = gelu(self.fc2.forward(x));
        let x = l2_normalize(self.fc3.forward(x));
        // Burn stores the weight as [bottleneck, K]: one column per output unit.
        let w = self.last_layer.weight.val();
        let norms = w.clone().square().sum_dim(0).sqrt().clamp_min(1e-12);
        x.matmul(w / norms)
    }
}

/// The DINO model: student and teacher encoders and heads, and the centre of the teacher's
/// outputs (a buffer, saved with the model so that a resumed run continues exactly).
#[derive(Module, Debug)]
pub struct Dino {
    /// Student encoder; trained.
    pub student_vit: VisionTransformer,
    /// Student head; trained.
    pub student_head: DinoHead,
    /// EMA copy of the student encoder; no gradient.
    pub teacher_vit: VisionTransformer,
    /// EMA copy of the student head; no gradient.
    pub teacher_head: DinoHead,
    /// Centre subtracted from the teacher's logits, `[1, K]`; no gradient.
    pub center: Param<Tensor<2>>,
}

/// Every part of the DINO loss.
#[derive(Debug, Clone)]
pub struct DinoLossOutput {
    /// Cross-entropy between teacher and student over every pair of different views, `[1]`.
    pub total: Tensor<1>,
    /// The teacher's centred, sharpened probabilities `[2B, K]` (no gradient).
    pub teacher_probs: Tensor<2>,
    /// Mean of the teacher's logits over the batch, `[1, K]`: the centre's update target.
    pub batch_center: Tensor<2>,
}

/// The DINO loss.
///
/// - `student`: `[V*B, K]` student logits of every view, view-major, the two global views
///   first;
/// - `teacher`: `[2B, K]` teacher logits of the two global views (detached here);
/// - `center`: `[1, K]`.
///
/// Teacher probabilities `q = softmax((t - centre) / teacher_temperature)`; student
/// log-probabilities `log softmax(s / student_temperature)`. The loss averages
/// `-sum_k q log p` over the images and over every (teacher view, student view) pair of
/// *different* views: 2V - 2 pairs.
pub fn dino_loss(
    student: Tensor<2>,
    teacher: Tensor<2>,
    center: Tensor<2>,
    teacher_temperature: f64,
    cfg: &DinoConfig,
) -> DinoLossOutput {
    let [rows, k] = student.dims();
    let [trows, _] = teacher.dims();
    assert!(
        trows >= 2 && trows % 2 == 0 && rows % (trows / 2) == 0 && rows >= trows,
        "{rows} student rows and {trows} teacher rows are not V and 2 views of one batch"
    );
    let b = trows / 2;
    let views = rows / b;
    let (student, teacher, center) = (
        student.cast(FloatDType::F32),
        teacher.cast(FloatDType::F32).detach(),
        center.cast(FloatDType::F32).detach(),
    );
    let q = softmax(
        (teacher.clone() - center).div_scalar(teacher_temperature),
        1,
    )
    .detach();
    let log_p = log_softmax(student.div_scalar(cfg.student_temperature), 1);
    // Pairs over all views minus the pairs of a global view with itself.
    let q3 = q.clone().reshape([2, b, k]);
    let log_p3 = log_p.reshape([views, b, k]);
    let all_views = (q3.clone() * log_p3.clone().sum_dim(0)).sum();
    let same_view = (q3 * log_p3.narrow(0, 0, 2)).sum();
    let pairs = (2 * views - 2) as f64;
    let total = (all_views - same_view).neg().div_scalar(b as f64 * pairs);
    DinoLossOutput {
        total,
        teacher_probs: q,
        batch_center: teacher.mean_dim(0),
    }
}

impl MsnConfig {
    /// Builds the DINO model of a configuration whose method is DINO: random student,
    /// teacher equal to it (own parameter ids, no gradient), zero centre.
    pub fn init_dino(&self, device: &Device) -> Result<Dino, ConfigError> {
        self.validate()?;
        let cfg = self.dino.as_ref().ok_or_else(|| {
            ConfigError::Invalid("the DINO model needs a [dino] configuration".into())
        })?;
        let mut model = Dino {
            student_vit: self.vit.init(device),
            student_head: DinoHead::new(self.vit.dim, cfg, device),
            teacher_vit: self.vit.init(device).no_grad(),
            teacher_head: DinoHead::new(self.vit.dim, cfg, device).no_grad(),
            center: Param::from_tensor(Tensor::zeros([1, cfg.out_dim], device))
                .set_require_grad(false),
        };
        model.ema_update(0.0);
        Ok(model)
    }
}

impl Dino {
    /// Restates which parameters train after loading values into a skeleton (loading keeps
    /// the skeleton's settings).
    pub fn restate_gradients(self) -> Self {
        Self {
            teacher_vit: self.teacher_vit.no_grad(),
            teacher_head: self.teacher_head.no_grad(),
            center: self.center.set_require_grad(false),
            ..self
        }
    }

    /// The loss of one batch: the two global views are the batch's target and its first
    /// anchor group (224 px), the local views its second anchor group (96 px), if any.
    ///
    /// # Panics
    /// On a batch whose shapes do not fit (check it with
    /// [`crate::msn::MultimodalMsn::check_batch`]'s rules first: the trainer builds it).
    pub fn forward_loss(
        &self,
        batch: MsnBatch,
        teacher_temperature: f64,
        cfg: &DinoConfig,
    ) -> DinoLossOutput {
        let mut groups = batch.anchors.into_iter();
        let second = groups
            .next()
            .expect("DINO needs a second global view (the random anchor)");
        let globals = Pixels::cat(vec![batch.target, second.images]);
        let teacher = self
            .teacher_head
            .forward(self.teacher_vit.forward(globals.clone(), None))
            .detach();
        let mut student = vec![
            self.student_head
                .forward(self.student_vit.forward(globals, None)),
        ];
        for local in groups {
            student.push(
                self.student_head
                    .forward(self.student_vit.forward(local.images, None)),
            );
        }
        dino_loss(
            Tensor::cat(student, 0),
            teacher,
            self.center.val(),
            teacher_temperature,
            cfg,
        )
    }

    /// `centre <- momentum * centre + (1 - momentum) * batch_center`.
    pub fn update_center(&mut self, batch_center: Tensor<2>, momentum: f64) {
        let center = self.center.clone();
        self.center = center
            .map(|c| {
                c.detach()
                    .mul_scalar(momentum)
                    .add(batch_center.detach().mul_scalar(1.0 - momentum))
            })
            .set_require_grad(false);
    }

    /// Moves the teacher toward the student (see [`crate::ema::blend`]).
    pub fn ema_update(&mut self, momentum: f64) {
        ema::blend(&mut self.teacher_vit, &self.student_vit, momentum);
        ema::blend(&mut self.teacher_head, &self.student_head, momentum);
    }

    /// The encoder kept for downstream use: the teacher's.
    pub fn encoder(&self) -> VisionTransformer {
        self.teacher_vit.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DinoConfig {
        DinoConfig {
            hidden: 16,
            bottleneck: 8,
            out_dim: 32,
            ..DinoConfig::default()
        }
    }

    #[test]
    fn teacher_temperature_warms_up_linearly_then_stays() {
        let c = DinoConfig {
            warmup_teacher_temperature: 0.04,
            teacher_temperature: 0.07,
            teacher_warmup_epochs: 4,
            ..DinoConfig::default()
        };
        // np.linspace(0.04, 0.07, 4) = 0.04, 0.05, 0.06, 0.07
        let got: Vec<f64> = (0..6).map(|e| c.teacher_temperature_at(e)).collect();
        for (g, w) in got.iter().zip([0.04, 0.05, 0.06, 0.07, 0.07, 0.07]) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn identical_uniform_outputs_give_log_k_and_the_head_has_unit_columns() {
        let device = Device::flex();
        let k = 32;
        // All logits equal: q and p uniform, the loss is the entropy log K.
        let out = dino_loss(
            Tensor::zeros([5 * 3, k], &device),
            Tensor::zeros([2 * 3, k], &device),
            Tensor::zeros([1, k], &device),
            0.04,
            &cfg(),
        );
        let v = out.total.into_data().try_to_vec::<f32>().unwrap()[0];
        assert!((v as f64 - (k as f64).ln()).abs() < 1e-5, "{v}");
        // Every output of a unit-norm input through unit-norm columns is a cosine in [-1, 1].
        let head = DinoHead::new(12, &cfg(), &device);
        let y = head.forward(Tensor::random(
            [4, 12],
            burn::tensor::Distribution::Normal(0.0, 3.0),
            &device,
        ));
        let y = y.into_data().try_to_vec::<f32>().unwrap();
        assert!(y.iter().all(|v| v.abs() <= 1.0 + 1e-5), "{y:?}");
    }
}
