//! The MSN loss (Assran et al. 2022, arXiv 2204.07141; METHOD.md section 3).
//!
//! Anchors predict the sharpened, Sinkhorn-balanced prototype assignment of their target:
//! `CE + me_max_weight * L_me + entropy_weight * H_anchor`. The target side carries no
//! gradient. Everything is computed in f32.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{FloatDType, Tensor};

use crate::config::LossConfig;

/// F.normalize's epsilon.
const NORM_EPS: f64 = 1e-12;

/// Every part of the loss, for the backward pass (`total`) and for logging.
#[derive(Debug, Clone)]
pub struct MsnLossOutput {
    /// `ce + me_max_weight * me_max + entropy_weight * entropy`, `[1]`.
    pub total: Tensor<1>,
    /// Cross-entropy between targets and anchors, averaged over anchors, `[1]`.
    pub ce: Tensor<1>,
    /// Mean-entropy maximisation term `sum p_mean log p_mean + log K` (>= 0), `[1]`.
    pub me_max: Tensor<1>,
    /// Mean per-anchor entropy `-sum p_a log p_a`, `[1]` (reported even at weight 0).
    pub entropy: Tensor<1>,
    /// The target assignments after sharpening and Sinkhorn, `[B, K]` (no gradient).
    pub target_probs: Tensor<2>,
}

/// Rows divided by their L2 norm (at least `1e-12`), as `F.normalize(x, dim=1)`.
/// `[N, d]` -> `[N, d]`.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(NORM_EPS);
    x / norm
}

/// Sinkhorn-Knopp balancing of assignments `p`: `[B, K]` -> `[B, K]`.
///
/// With A = p^T (`[K, B]`): A /= sum(A); `iterations` times { each row /= its sum, then /= K;
/// each column /= its sum, then /= B }; finally A *= B, returned transposed. Rows of the
/// result sum to 1 and every prototype receives mass B / K.
pub fn sinkhorn(p: Tensor<2>, iterations: usize) -> Tensor<2> {
    if iterations == 0 {
        return p;
    }
    let [b, k] = p.dims();
    let mut a = p.transpose();
    a = a.clone() / a.sum().unsqueeze::<2>();
    for _ in 0..iterations {
        a = (a.clone() / a.sum_dim(1)).div_scalar(k as f64);
        a = (a.clone() / a.sum_dim(0)).div_scalar(b as f64);
    }
    a.mul_scalar(b as f64).transpose()
}

/// Sharpened target assignments: `softmax(z_t Q^T / (tau * T))`, the log-space form of
/// `p^(1/T) / sum p^(1/T)` with `p = softmax(z_t Q^T / tau)`.
/// `target`, `prototypes` L2-normalised, `[B, d]` and `[K, d]` -> `[B, K]`.
pub fn sharpened_targets(target: Tensor<2>, prototypes: Tensor<2>, cfg: &LossConfig) -> Tensor<2> {
    let logits = target.matmul(prototypes.transpose());
    softmax(
        logits.div_scalar(cfg.temperature * cfg.sharpen_temperature),
        1,
    )
}

/// The MSN loss.
///
/// - `anchors`: `[M*B, d]` projected anchor embeddings, view-major (rows `m*B .. (m+1)*B`
///   are view m of images 0..B);
/// - `targets`: `[B, d]` projected target embeddings (detached here);
/// - `prototypes`: `[K, d]`.
pub fn msn_loss(
    anchors: Tensor<2>,
    targets: Tensor<2>,
    prototypes: Tensor<2>,
    cfg: &LossConfig,
) -> MsnLossOutput {
    let [rows, _] = anchors.dims();
    let [b, _] = targets.dims();
    let [k, _] = prototypes.dims();
    assert!(
        b > 0 && rows % b == 0,
        "{rows} anchors cannot be split into views of {b} targets"
    );
    let views = rows / b;
    // The loss is computed in f32 whatever precision the model runs in.
    let (anchors, targets, prototypes) = (
        anchors.cast(FloatDType::F32),
        targets.cast(FloatDType::F32),
        prototypes.cast(FloatDType::F32),
    );

    let protos = l2_normalize(prototypes);
    let anchor_logits = l2_normalize(anchors)
        .matmul(protos.clone().transpose())
        .div_scalar(cfg.temperature);
    let log_pa = log_softmax(anchor_logits, 1);
    let pa = log_pa.clone().exp();

    let pt = sharpened_targets(l2_normalize(targets.detach()), protos.detach(), cfg);
    let pt = sinkhorn(pt, cfg.sinkhorn_iterations).detach();
    let pt_views = pt.clone().repeat_dim(0, views);

    let ce = (pt_views.neg() * log_pa.clone()).sum_dim(1).mean();

    let p_mean = pa.clone().mean_dim(0);
    let me_max = (p_mean.clone() * p_mean.clamp_min(f32::MIN_POSITIVE as f64).log())
        .sum()
        .add_scalar((k as f64).ln());

    let entropy = (pa.neg() * log_pa).sum_dim(1).mean();

    let mut total = ce.clone() + me_max.clone().mul_scalar(cfg.me_max_weight);
    if cfg.entropy_weight != 0.0 {
        total = total + entropy.clone().mul_scalar(cfg.entropy_weight);
    }
    MsnLossOutput {
        total,
        ce,
        me_max,
        entropy,
        target_probs: pt,
    }
}
