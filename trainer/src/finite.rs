//! Guards against non-finite numbers: a NaN or an infinity in the gradients or the weights
//! must stop training before it reaches a checkpoint.
//!
//! Each check costs one elementwise pass per tensor and a single read back from the
//! device: `x - x` is 0 for every finite `x` and NaN for NaN and both infinities, so the
//! sum of all `x - x` is 0 exactly when every value is finite, and it cannot overflow.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Adds `sum(x - x)` of each visited tensor to a running total, kept on the device.
struct NonFinite<'a> {
    grads: Option<&'a GradientsParams>,
    total: Option<Tensor<1>>,
}

impl NonFinite<'_> {
    fn add<const D: usize>(&mut self, t: Tensor<D>) {
        let t = t.detach();
        let zero_if_finite = (t.clone() - t).sum();
        self.total = Some(match self.total.take() {
            Some(total) => total + zero_if_finite,
            None => zero_if_finite,
        });
    }

    fn finite(self) -> bool {
        self.total
            .is_none_or(|t| t.into_scalar::<f32>().is_finite())
    }
}

impl ModuleVisitor for NonFinite<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match self.grads {
            Some(grads) => {
                if let Some(g) = grads.get::<D>(param.id) {
                    self.add(g);
                }
            }
            None => self.add(param.val()),
        }
    }
}

/// Whether every float parameter of `model` is finite.
pub fn weights_finite<M: Module>(model: &M) -> bool {
    let mut check = NonFinite {
        grads: None,
        total: None,
    };
    model.visit(&mut check);
    check.finite()
}

/// Whether every gradient in `grads` of a parameter of `model` is finite.
pub fn gradients_finite<M: Module>(model: &M, grads: &GradientsParams) -> bool {
    let mut check = NonFinite {
        grads: Some(grads),
        total: None,
    };
    model.visit(&mut check);
    check.finite()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    fn linear(weight: [f32; 4]) -> Linear {
        let device = Device::flex();
        let mut layer = LinearConfig::new(2, 2).init(&device);
        layer.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(weight.to_vec(), [2, 2]),
            &device,
        ));
        layer
    }

    #[test]
    fn any_nan_or_infinity_is_caught_and_huge_finite_values_are_not() {
        assert!(weights_finite(&linear([1.0, -2.0, 0.5, 3.0])));
        assert!(
            weights_finite(&linear([f32::MAX, f32::MAX, f32::MAX, -f32::MAX])),
            "no overflow in the check itself"
        );
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(!weights_finite(&linear([1.0, bad, 0.5, 3.0])), "{bad}");
        }
    }

    #[test]
    fn gradients_are_checked_per_parameter() {
        let device = Device::flex().autodiff();
        let layer = LinearConfig::new(2, 1).init(&device);
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2]), &device);
        let grads = GradientsParams::from_grads(layer.forward(x.clone()).sum().backward(), &layer);
        assert!(gradients_finite(&layer, &grads));
        let inf =
            Tensor::<2>::from_data(TensorData::new(vec![f32::INFINITY, 2.0], [1, 2]), &device);
        let grads = GradientsParams::from_grads(layer.forward(inf).sum().backward(), &layer);
        assert!(!gradients_finite(&layer, &grads));
    }
}
