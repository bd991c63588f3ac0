//! Learning-rate, weight-decay and EMA schedules of the two profiles, and the parts of the
//! optimiser step that Burn's AdamW does not do the way the profiles need: decoupled weight
//! decay on a schedule and on chosen parameters, and clipping by the global gradient norm.

use std::f64::consts::PI;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use cxr_msn::config::OptimConfig;

/// Where the run is: `step` of `steps_per_epoch` in each of `epochs` epochs.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Global step, from 0.
    pub step: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
    /// Planned epochs.
    pub epochs: usize,
}

impl Progress {
    fn total(&self) -> usize {
        (self.steps_per_epoch * self.epochs).max(1)
    }
}

fn cosine(start: f64, end: f64, t: f64) -> f64 {
    end + 0.5 * (start - end) * (1.0 + (PI * t.clamp(0.0, 1.0)).cos())
}

/// The learning rate at this point of the run.
///
/// `paper`: cosine from `peak_lr` to `final_lr`, stepped once per epoch (PyTorch's
/// CosineAnnealingLR with T_max = epochs). `msn`: linear warm-up from `start_lr` to
/// `peak_lr` over `warmup_epochs`, then cosine to `final_lr`, every step.
pub fn learning_rate(o: &OptimConfig, p: Progress) -> f64 {
    if o.lr_per_epoch {
        let epoch = p.step / p.steps_per_epoch.max(1);
        return cosine(o.peak_lr, o.final_lr, epoch as f64 / p.epochs.max(1) as f64);
    }
    let warmup = o.warmup_epochs * p.steps_per_epoch;
    if p.step < warmup {
        return o.start_lr + (o.peak_lr - o.start_lr) * p.step as f64 / warmup as f64;
    }
    let rest = p.total().saturating_sub(warmup).max(1);
    cosine(
        o.peak_lr,
        o.final_lr,
        (p.step - warmup) as f64 / rest as f64,
    )
}

/// The weight decay at this point: cosine from `weight_decay_start` to `weight_decay_end`
/// over the run (constant when they are equal).
pub fn weight_decay(o: &OptimConfig, p: Progress) -> f64 {
    cosine(
        o.weight_decay_start,
        o.weight_decay_end,
        p.step as f64 / p.total() as f64,
    )
}

/// Tracks the field path during a visit or a map.
#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn decays(&self, all: bool) -> bool {
        // The EMA copies (MSN's target, DINO's teacher) are never optimised; a model can sit
        // inside an enum variant, so look at every level.
        if self
            .0
            .iter()
            .any(|f| f.starts_with("target_") || f.starts_with("teacher_"))
            // DINO's centre is a statistic of the teacher, not a parameter.
            || self.0.last().is_some_and(|f| f == "center")
        {
            return false;
        }
        // Weights of Linear and Conv layers are named `weight`; norms use gamma/beta,
        // biases `bias`, and the prototypes, [CLS] and position embedding their own names.
        all || self.0.last().is_some_and(|f| f == "weight")
    }
}

struct Decay<'a> {
    factor: f64,
    all: bool,
    path: Path,
    frozen: &'a [ParamId],
}

impl ModuleMapper for Decay<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let field = self.path.0.last().map(String::as_str);
        if !self.path.decays(self.all)
            || matches!(field, Some("running_mean" | "running_var"))
            || self.frozen.contains(&param.id)
        {
            return param;
        }
        let factor = self.factor;
        param.map(|t| {
            let requires = t.is_require_grad();
            t.detach()
                .mul_scalar(factor)
                .detach()
                .set_require_grad(requires)
        })
    }
}

/// Decoupled weight decay, `p <- p * (1 - lr * wd)`, on the weights of Linear and Conv
/// layers only (`all = false`, the `msn` profile) or on every trained parameter.
pub fn decay<M: Module>(model: M, lr: f64, wd: f64, all: bool) -> M {
    decay_except(model, lr, wd, all, &[])
}

/// [`decay`], leaving out the parameters in `frozen` (those that sit out this step, such as
/// DINO's last layer in its first epoch: PyTorch's AdamW skips a parameter without a
/// gradient, decay included).
pub fn decay_except<M: Module>(model: M, lr: f64, wd: f64, all: bool, frozen: &[ParamId]) -> M {
    if wd == 0.0 {
        return model;
    }
    model.map(&mut Decay {
        factor: 1.0 - lr * wd,
        all,
        path: Path::default(),
        frozen,
    })
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: f64,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.total += g.square().sum().into_scalar::<f32>() as f64;
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut norm = SquaredNorm { grads, total: 0.0 };
    model.visit(&mut norm);
    let total = norm.total.sqrt();
    let factor = max_norm / (total + 1e-6);
    if factor < 1.0 {
        model.visit(&mut Scale { grads, factor });
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxr_msn::config::{MsnConfig, VitPreset};

    #[test]
    fn paper_lr_is_cosine_per_epoch_and_msn_warms_up_then_decays() {
        let paper = MsnConfig::paper(VitPreset::Tiny).optim;
        let p = |step| Progress {
            step,
            steps_per_epoch: 10,
            epochs: 100,
        };
        assert_eq!(learning_rate(&paper, p(0)), 1e-4);
        assert_eq!(
            learning_rate(&paper, p(9)),
            1e-4,
            "constant within an epoch"
        );
        assert!(
            (learning_rate(&paper, p(500)) - 0.5e-4).abs() < 1e-12,
            "half way"
        );
        assert_eq!(weight_decay(&paper, p(700)), 1e-3);
        let msn = MsnConfig::msn(VitPreset::Tiny).optim;
        assert_eq!(learning_rate(&msn, p(0)), 2e-4);
        assert!(
            (learning_rate(&msn, p(75)) - 6e-4).abs() < 1e-12,
            "half the warm-up"
        );
        assert!((learning_rate(&msn, p(150)) - 1e-3).abs() < 1e-12);
        assert!((learning_rate(&msn, p(1000)) - 1e-6).abs() < 1e-9);
        assert!((weight_decay(&msn, p(0)) - 0.04).abs() < 1e-12);
        assert!((weight_decay(&msn, p(500)) - 0.22).abs() < 1e-12);
        assert!((weight_decay(&msn, p(1000)) - 0.4).abs() < 1e-12);
    }
}
