//! AdamW in one pass over each parameter on the CPU, with Burn's arithmetic and state.
//!
//! Burn's `AdamW` updates a parameter through about fifteen tensor operations (the two
//! moments, their bias corrections, the square root, the quotient, the step), each a pass
//! over the parameter into a new tensor, on the calling thread. In the MSN step that took
//! 30-32 ms of a 0.75-0.8 s step with the other core idle (BENCHMARKS.md). [`FusedAdamW`]
//! computes the same values, operation for operation in f32, in one pass that updates the
//! parameter and both moments in place, spread over the cores for large parameters.
//!
//! Its state is Burn's [`AdamWState`], so the optimiser files of a run resume with either,
//! and every other case (another device, AMSGrad, a dtype other than f32) is Burn's own
//! `AdamW`.

use burn::backend::flex::FlexTensor;
use burn::backend::{BackendTensor, DispatchTensor, DispatchTensorKind, TensorMetadata};
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer,
};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

/// Parameters with at least this many values are updated on all cores; smaller ones on the
/// calling thread (a parallel loop costs more than it saves below it).
const PARALLEL_FROM: usize = 1 << 16;

/// Values per task of the parallel update.
const CHUNK: usize = 1 << 14;

/// AdamW (Loshchilov and Hutter) with Burn's `AdamW`'s arithmetic and state, fused on the
/// CPU (module doc). Built by [`FusedAdamW::new`] or [`adamw`].
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// Burn's optimiser with the same settings, for every case the fused pass does not take.
    burn: AdamW,
}

impl FusedAdamW {
    /// AdamW with moment decays `beta_1`, `beta_2`, `epsilon` added to the root of the
    /// second moment and decoupled `weight_decay` (Burn's defaults: 0.9, 0.999, 1e-5,
    /// 1e-4).
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let burn = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            burn,
        }
    }
}

/// The optimiser of the pretraining runs: AdamW with betas (0.9, 0.999), epsilon 1e-8 and no
/// weight decay of its own (the schedule's decay is applied beside it), as a module optimiser.
pub fn adamw() -> ModuleOptimizer {
    ModuleOptimizer::from(FusedAdamW::new(0.9, 0.999, 1e-8, 0.0))
}

/// `t`'s CPU buffer (made contiguous) and its dispatch context, or `t` back when it is not
/// an f32 tensor of the CPU backend outside a graph.
// The error hands the (large) tensor back as it came, once per parameter and step.
#[allow(clippy::result_large_err)]
fn into_flex<const D: usize>(
    t: Tensor<D>,
) -> Result<(FlexTensor, burn::backend::DispatchAutodiffContext), Tensor<D>> {
    let DispatchTensor { kind, autodiff } = t.into_dispatch();
    match kind {
        DispatchTensorKind::Flex(BackendTensor::Float(f)) if f.dtype() == DType::F32 => {
            Ok((f.to_contiguous(), autodiff))
        }
        kind => Err(Tensor::from_dispatch(DispatchTensor { kind, autodiff })),
    }
}

/// A CPU buffer as a tensor again.
fn from_flex<const D: usize>(
    f: FlexTensor,
    autodiff: burn::backend::DispatchAutodiffContext,
) -> Tensor<D> {
    Tensor::from_dispatch(DispatchTensor {
        kind: DispatchTensorKind::Flex(BackendTensor::Float(f)),
        autodiff,
    })
}

/// The constants of one update.
#[derive(Clone, Copy)]
struct Update {
    beta_1: f32,
    beta_2: f32,
    /// `1 - beta_1`, `1 - beta_2`.
    factor_1: f32,
    factor_2: f32,
    /// The bias corrections `1 - beta^t`.
    correction_1: f32,
    correction_2: f32,
    epsilon: f32,
    lr: f32,
    /// `1 - lr * weight_decay`, or `None` without decay.
    keep: Option<f32>,
    /// Whether the moments start here (no state yet).
    first: bool,
}

impl Update {
    /// One value's update: Burn's `AdamW` operation by operation (the same roundings).
    #[inline(always)]
    fn apply(&self, p: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        let g2 = g * g;
        if self.first {
            *m = g * self.factor_1;
            *v = g2 * self.factor_2;
        } else {
            *m = *m * self.beta_1 + g * self.factor_1;
            *v = *v * self.beta_2 + g2 * self.factor_2;
        }
        let delta = (*m / self.correction_1) / ((*v / self.correction_2).sqrt() + self.epsilon);
        let base = self.keep.map_or(*p, |keep| *p * keep);
        *p = base - delta * self.lr;
    }

    /// [`Self::apply`] over whole buffers.
    fn run(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let serial = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            for (((p, m), v), g) in p.iter_mut().zip(m).zip(v).zip(g) {
                self.apply(p, m, v, *g);
            }
        };
        if p.len() < PARALLEL_FROM {
            serial(p, m, v, g);
        } else {
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| serial(p, m, v, g));
        }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        if state
            .as_ref()
            .is_some_and(|s| s.momentum.max_moment_2.is_some())
        {
            return self.burn.step(lr, tensor, grad, state);
        }
        let (mut p, context) = match into_flex(tensor) {
            Ok(flex) => flex,
            Err(tensor) => return self.burn.step(lr, tensor, grad, state),
        };
        let g = match into_flex(grad) {
            Ok((g, _)) => g,
            Err(grad) => return self.burn.step(lr, from_flex(p, context), grad, state),
        };
        let shape = p.shape();
        let moments = match state {
            Some(s) => {
                let AdaptiveMomentumState {
                    time,
                    moment_1,
                    moment_2,
                    ..
                } = s.momentum;
                match (into_flex(moment_1), into_flex(moment_2)) {
                    (Ok((m, _)), Ok((v, _))) if m.shape() == shape && v.shape() == shape => {
                        Some((time + 1, m, v))
                    }
                    (m, v) => {
                        // Not CPU buffers of the parameter's shape: Burn's step as it was.
                        let back = |x: Result<(FlexTensor, _), Tensor<D>>| match x {
                            Ok((f, c)) => from_flex(f, c),
                            Err(t) => t,
                        };
                        let state =
                            AdamWState::new(AdaptiveMomentumState::new(time, back(m), back(v)));
                        return self.burn.step(
                            lr,
                            from_flex(p, context),
                            from_flex(g, context),
                            Some(state),
                        );
                    }
                }
            }
            None => None,
        };
        assert_eq!(g.shape(), shape, "a gradient of the parameter's shape");
        let first = moments.is_none();
        let (time, mut m, mut v) = moments.unwrap_or_else(|| {
            (
                1,
                FlexTensor::zeros(shape.clone(), DType::F32),
                FlexTensor::zeros(shape.clone(), DType::F32),
            )
        });
        let t = time as i32;
        let decay = lr * self.weight_decay as f64;
        let update = Update {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            factor_1: 1.0 - self.beta_1,
            factor_2: 1.0 - self.beta_2,
            correction_1: 1f32 - self.beta_1.powi(t),
            correction_2: 1f32 - self.beta_2.powi(t),
            epsilon: self.epsilon,
            lr: lr as f32,
            keep: (decay != 0.0).then_some((1.0 - decay) as f32),
            first,
        };
        update.run(
            p.storage_mut::<f32>(),
            m.storage_mut::<f32>(),
            v.storage_mut::<f32>(),
            g.storage::<f32>(),
        );
        let state = AdamWState::new(AdaptiveMomentumState::new(
            time,
            from_flex(m, Default::default()),
            from_flex(v, Default::default()),
        ));
        (from_flex(p, context), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <AdamW as Optimizer>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::{Distribution, TensorData};

    /// Gradients with small, large and zero entries, different at every step.
    fn gradient(dims: [usize; 2], step: u64, device: &Device) -> Tensor<2> {
        device.seed(100 + step);
        let g = Tensor::<2>::random(dims, Distribution::Normal(0.0, 1.0), device);
        let scale = Tensor::<2>::random(dims, Distribution::Uniform(-6.0, 2.0), device).exp();
        let keep =
            Tensor::<2>::random(dims, Distribution::Uniform(0.0, 1.0), device).greater_elem(0.1);
        (g * scale).mask_fill(keep.bool_not(), 0.0)
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn every_value_is_burns_adamw_bit_for_bit() {
        let device = Device::flex();
        // Below and above the size the update is spread over the cores from.
        for (dims, decay) in [([7, 9], 0.0), ([300, 500], 0.0), ([300, 500], 0.05)] {
            device.seed(3);
            let start = Tensor::<2>::random(dims, Distribution::Normal(0.0, 0.5), &device);
            let ours = FusedAdamW::new(0.9, 0.999, 1e-8, decay);
            let burn = AdamWConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(decay)
                .build();
            let (mut a, mut b) = (start.clone(), start);
            let (mut sa, mut sb) = (None, None);
            for step in 0..4 {
                let lr = 1e-3 * (step + 1) as f64;
                let g = gradient(dims, step, &device);
                (a, sa) = ours.step(lr, a, g.clone(), sa);
                (b, sb) = burn.step(lr, b, g, sb);
                assert_eq!(values(a.clone()), values(b.clone()), "{dims:?} step {step}");
                let (ma, mb) = (
                    &sa.as_ref().unwrap().momentum,
                    &sb.as_ref().unwrap().momentum,
                );
                assert_eq!(ma.time, mb.time);
                assert_eq!(values(ma.moment_1.clone()), values(mb.moment_1.clone()));
                assert_eq!(values(ma.moment_2.clone()), values(mb.moment_2.clone()));
            }
        }
    }

    #[test]
    fn a_hand_computed_first_step() {
        // m = 0.1 g, v = 0.001 g^2, corrections 0.1 and 0.001: delta = g / (|g| + eps),
        // so each weight moves by lr against its gradient's sign (0 where g = 0).
        let device = Device::flex();
        let w = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -2.0, 0.5], [1, 3]), &device);
        let g = Tensor::<2>::from_data(TensorData::new(vec![4.0f32, -0.25, 0.0], [1, 3]), &device);
        let (w, _) = FusedAdamW::new(0.9, 0.999, 1e-8, 0.0).step(0.5, w, g, None);
        let got = values(w);
        for (got, want) in got.iter().zip([0.5f32, -1.5, 0.5]) {
            assert!((got - want).abs() < 1e-6, "{got} against {want}");
        }
    }

    #[test]
    fn a_run_saved_by_burns_adamw_resumes_with_the_fused_one() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let layer: Linear = LinearConfig::new(24, 16).init(&device);
        let x = Tensor::<2>::random([5, 24], Distribution::Normal(0.0, 1.0), &device);
        let grads = |layer: &Linear| {
            GradientsParams::from_grads(
                layer.forward(x.clone()).powi_scalar(2).sum().backward(),
                layer,
            )
        };
        let mut burn = AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(0.0)
            .init();
        let mut model = layer;
        for _ in 0..2 {
            let g = grads(&model);
            model = burn.step(1e-2, model, g);
        }
        let saved = burn.into_bytes().unwrap();
        let mut resumed = adamw().from_bytes(saved).unwrap();
        let ours = resumed.step(1e-2, model.clone(), grads(&model));
        let theirs = burn.step(1e-2, model.clone(), grads(&model));
        assert_eq!(values(ours.weight.val()), values(theirs.weight.val()));
        let bias = |l: Linear| l.bias.unwrap().val().into_data();
        assert_eq!(bias(ours), bias(theirs.clone()));
        // The step moved the weights (the comparison above is not of two untouched copies).
        assert_ne!(values(model.weight.val()), values(theirs.weight.val()));
    }
}
