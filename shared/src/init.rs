//! Parameter initialisation shared by the modules.

use burn::module::Initializer;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Device;

/// N(0, 0.02), the DeiT / MSN initialisation of weights (without truncation).
pub(crate) fn normal_002() -> Initializer {
    Initializer::Normal {
        mean: 0.0,
        std: 0.02,
    }
}

/// A Linear with N(0, 0.02) weights and, when it has one, a zero bias (timm / MSN).
pub(crate) fn deit_linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    let mut layer = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(normal_002())
        .init(device);
    if bias {
        layer.bias = Some(Initializer::Zeros.init([d_out], device));
    }
    layer
}

/// A Linear with PyTorch's default initialisation (Kaiming-uniform weights, uniform bias),
/// for the small layers the authors' code leaves at their default.
pub(crate) fn torch_default_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out).init(device)
}
