//! Heads on top of the encoder: the MSN projection head h, the EHR fusion of the anchor
//! branch (f_ehr and g), and the downstream classifier heads.

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::module::{batch_norm, batch_norm_train};
use burn::tensor::{Device, Tensor};

use crate::config::{EhrConfig, HeadConfig};
use crate::init::{deit_linear, torch_default_linear};

/// BatchNorm1d with PyTorch's semantics, on burn-nn's parameters and running statistics.
///
/// Training mode (input on an autodiff device and the layer's training flag on, as in both
/// branches during pretraining): normalise with the batch mean and biased variance, and
/// update the running statistics with the *unbiased* batch variance, as PyTorch does
/// (burn-nn's own forward uses the biased one). Otherwise: normalise with the running
/// statistics. `x`: `[N, C]` -> `[N, C]`.
pub fn batch_norm_1d(bn: &BatchNorm, x: Tensor<2>) -> Tensor<2> {
    let device = x.device();
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    if !(device.is_autodiff() && bn.training.is_enabled()) {
        let (gamma, beta) = (bn.gamma.val(), bn.beta.val());
        return batch_norm(x, gamma, beta, running_mean, running_var, bn.epsilon);
    }
    let [n, _] = x.dims();
    let out = batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon);
    let m = bn.momentum;
    let unbias = if n > 1 {
        n as f64 / (n - 1) as f64
    } else {
        1.0
    };
    let mean = running_mean.mul_scalar(1.0 - m) + out.mean.detach().mul_scalar(m);
    let var = running_var.mul_scalar(1.0 - m) + out.variance.detach().mul_scalar(m * unbias);
    bn.running_mean.update(mean.detach());
    bn.running_var.update(var.detach());
    out.output
}

/// MSN projection head h: Linear -> BN -> GELU -> Linear -> BN -> GELU -> Linear.
///
/// BatchNorm follows [`batch_norm_1d`]: batch statistics in training mode (both branches
/// during pretraining), running statistics otherwise.
#[derive(Module, Debug)]
pub struct ProjectionHead {
    /// Linear(d_in -> hidden).
    pub fc1: Linear,
    /// BatchNorm1d(hidden).
    pub bn1: BatchNorm,
    /// Linear(hidden -> hidden).
    pub fc2: Linear,
    /// BatchNorm1d(hidden).
    pub bn2: BatchNorm,
    /// Linear(hidden -> d_out), with bias.
    pub fc3: Linear,
}

impl HeadConfig {
    /// Builds the head.
    pub fn init(&self, device: &Device) -> ProjectionHead {
        let bn = || {
            BatchNormConfig::new(self.hidden)
                .with_epsilon(self.bn_eps)
                .with_momentum(self.bn_momentum)
                .init(device)
        };
        ProjectionHead {
            fc1: deit_linear(self.d_in, self.hidden, self.bias_before_bn, device),
            bn1: bn(),
            fc2: deit_linear(self.hidden, self.hidden, self.bias_before_bn, device),
            bn2: bn(),
            fc3: deit_linear(self.hidden, self.d_out, true, device),
        }
    }
}

impl ProjectionHead {
    /// `[N, d_in]` -> `[N, d_out]`. Batch statistics (training) are over the N rows.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = gelu(batch_norm_1d(&self.bn1, self.fc1.forward(x)));
        let x = gelu(batch_norm_1d(&self.bn2, self.fc2.forward(x)));
        self.fc3.forward(x)
    }
}

/// The anchor branch's EHR path: `g(concat(v, f_ehr(e)))`, both linear, no activation.
#[derive(Module, Debug)]
pub struct EhrFusion {
    /// f_ehr: Linear(ehr_in -> ehr_dim).
    pub f_ehr: Linear,
    /// g: Linear(D + ehr_dim -> D).
    pub g: Linear,
}

impl EhrConfig {
    /// Builds f_ehr and g for an encoder of width `dim`.
    pub fn init(&self, dim: usize, device: &Device) -> EhrFusion {
        EhrFusion {
            f_ehr: torch_default_linear(self.feature_set.width(), self.ehr_dim, device),
            g: torch_default_linear(dim + self.ehr_dim, dim, device),
        }
    }
}

impl EhrFusion {
    /// Width of the EHR vector this fusion expects.
    pub fn ehr_in(&self) -> usize {
        self.f_ehr.weight.lazy_shape().dims::<2>()[0]
    }

    /// `v`: `[M*B, D]` embeddings in view-major order; `ehr`: `[B, ehr_in]`.
    /// The EHR embedding of image b is repeated for each of its M views. Returns `[M*B, D]`.
    pub fn forward(&self, v: Tensor<2>, ehr: Tensor<2>) -> Tensor<2> {
        let [rows, _] = v.dims();
        let [b, _] = ehr.dims();
        assert!(
            b > 0 && rows % b == 0,
            "{rows} embeddings cannot be split into views of {b} images"
        );
        let e = self.f_ehr.forward(ehr).repeat_dim(0, rows / b);
        self.g.forward(Tensor::cat(vec![v, e], 1))
    }
}

/// Image-only linear head on the [CLS] embedding: `[B, D]` -> logits `[B, labels]`.
#[derive(Module, Debug)]
pub struct LinearClassifier {
    /// Linear(D -> labels).
    pub fc: Linear,
}

impl LinearClassifier {
    /// A fresh head (PyTorch default initialisation).
    pub fn new(dim: usize, labels: usize, device: &Device) -> Self {
        Self {
            fc: torch_default_linear(dim, labels, device),
        }
    }

    /// Logits `[B, labels]` (apply a sigmoid for probabilities).
    pub fn forward(&self, cls: Tensor<2>) -> Tensor<2> {
        self.fc.forward(cls)
    }
}

/// Image + EHR head: the [CLS] embedding is fused with the EHR vector by the same f_ehr
/// and g as the anchor branch (initialised from the pretrained ones when available), then
/// a linear layer gives the logits. Our answer to the paper's open question of using EHR
/// at fine-tuning and inference time too.
#[derive(Module, Debug)]
pub struct FusedClassifier {
    /// f_ehr and g.
    pub fusion: EhrFusion,
    /// Linear(D -> labels).
    pub fc: Linear,
}

impl FusedClassifier {
    /// A head with a fresh fusion.
    pub fn new(dim: usize, labels: usize, ehr: &EhrConfig, device: &Device) -> Self {
        Self::from_fusion(ehr.init(dim, device), dim, labels, device)
    }

    /// A head that starts from a (pretrained) fusion.
    pub fn from_fusion(fusion: EhrFusion, dim: usize, labels: usize, device: &Device) -> Self {
        Self {
            fusion,
            fc: torch_default_linear(dim, labels, device),
        }
    }

    /// `cls`: `[B, D]`, `ehr`: `[B, ehr_in]` -> logits `[B, labels]`.
    pub fn forward(&self, cls: Tensor<2>, ehr: Tensor<2>) -> Tensor<2> {
        self.fc.forward(self.fusion.forward(cls, ehr))
    }
}
