//! The attention, its softmax, the GELU, LayerNorm and the linear layers with backward
//! passes of their own, for the CPU backend in an autodiff graph (training); the attention
//! and the linear layers also outside one (CPU inference). Built with the `autodiff`
//! feature, which the trainer turns on.
//!
//! Burn differentiates both through the operations they are made of. Its attention
//! (`attention_fallback`, which autodiff backends use) scales the scores, takes the row
//! maximum (differentiated too), subtracts it, exponentiates, sums, clamps and divides: six
//! passes over the `[B, H, N, N]` scores forward, each into a fresh buffer, and about twice
//! as many backward, one of them a scatter into a zeroed tensor as large as the scores. Its
//! LayerNorm is eight operations forward (two means, a square, a square root, ...). Here
//! each is one kernel forward and one backward (`crate::cpu_kernels`): [`softmax_rows`] in
//! place and [`softmax_backward_rows`] in place of the incoming gradient, keeping only the
//! softmax's output (which the product with `v` keeps anyway); [`layer_norm_rows`] and
//! [`layer_norm_backward_rows`], keeping the normalised input and one inverse deviation per
//! row; [`gelu_and_slope`] forward, keeping the slope, and a product with it backward
//! (Burn's GELU calls a scalar `erf` and `exp` per element, forward and again backward).
//!
//! The linear layers run as one matrix product each way written straight into new buffers
//! ([`crate::gemm_call`]): forward into an output that starts as the bias, backward `dx =
//! dy W^T` and `dW = x^T dy` plus the bias's column sums, keeping the input and the weight.
//! Burn's linear layer allocates each product's output zeroed and copies it once before
//! the product writes it, and adds the bias in a pass of its own.
//!
//! The attention runs from the qkv projection to the heads side by side as one operation:
//! per image and head, `q k^T` straight into the weights' buffer, the softmax in place,
//! the weights times `v` straight into the head's columns of the output; backward, `dv`,
//! `dq` and `dk` straight into their columns of one gradient buffer. Burn's composed path
//! copies q, k and v out of the projection, allocates every product's output as above,
//! copies the heads back side by side, and backward zero-fills a buffer as large as the
//! projection for each of q, k and v and adds the three.
//!
//! The operations are a Burn backend extension ([`backend_extension`]): the flex backend
//! runs the forward kernels; `Autodiff<Flex>` records the backward steps. Only tensors on
//! those two are sent here ([`crate::cpu_kernels::route`]).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Tensor, TensorData};

use crate::cpu_kernels::{
    gelu_and_slope, gelu_in_place, layer_norm_backward_rows, layer_norm_rows, mul_in_place,
    softmax_backward_rows, softmax_rows,
};
use crate::flex_forward::{
    HeadLayout, Heads, attention_forward, contiguous, last_dim, linear_forward,
};
use crate::gemm_call::{MatrixRef, product, product_into, zeros};

/// Operations with hand-written kernels (forward on the CPU backend, backward in its
/// autodiff graphs).
#[backend_extension(Flex, Autodiff)]
pub trait GraphKernels: burn::backend::Backend {
    /// `softmax(scale * x)` over the last axis of `x` `[.., N]`, f32.
    fn scaled_softmax(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;

    /// The exact GELU `x Φ(x)` of every value of `x`, f32.
    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// LayerNorm over the last axis of `x` `[.., D]`: `(x - mean) / sqrt(var + eps) *
    /// gamma + beta`, `gamma` and `beta` `[D]`, f32.
    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// The linear layer `x W + b` over the last axis of `x` `[.., d_in]`, `W` `[d_in,
    /// d_out]`, `b` `[d_out]` -> `[.., d_out]`, f32 (`crate::gemm_call`).
    fn linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Multi-head self-attention from the fused projection `qkv` `[B, N, 3D]` (q, k and v
    /// side by side, each head-major) of `heads` heads: heads `first .. first + count`,
    /// side by side, `[B, N, count * D / heads]`, each `softmax(q k^T / sqrt(D / heads)) v`
    /// per image, f32.
    fn attention(
        qkv: FloatTensor<Self>,
        heads: usize,
        first: usize,
        count: usize,
    ) -> FloatTensor<Self>;
}

impl GraphKernels for Flex {
    fn scaled_softmax(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let row = last_dim(&x);
        let mut x = contiguous(x);
        softmax_rows(x.storage_mut::<f32>(), row, scale);
        x
    }

    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let mut x = contiguous(x);
        gelu_in_place(x.storage_mut::<f32>());
        x
    }

    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        // Outside a graph, flex's own fused LayerNorm.
        <Flex as ModuleOps<Flex>>::layer_norm(x, gamma, Some(beta), eps as f64)
    }

    fn linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        linear_forward(&contiguous(x), &contiguous(w), &contiguous(b))
    }

    fn attention(
        qkv: FloatTensor<Self>,
        heads: usize,
        first: usize,
        count: usize,
    ) -> FloatTensor<Self> {
        attention_forward(&contiguous(qkv), Heads::new(heads, first, count), false).0
    }
}

impl<C: CheckpointStrategy> GraphKernels for Autodiff<Flex, C> {
    fn attention(
        qkv: FloatTensor<Self>,
        heads: usize,
        first: usize,
        count: usize,
    ) -> FloatTensor<Self> {
        let heads = Heads::new(heads, first, count);
        match (AttentionBackward { heads })
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let qkv = contiguous(qkv.into_primitive());
                let (out, probs) = attention_forward(&qkv, heads, true);
                let probs = probs.expect("the weights, kept");
                prep.finish((qkv, probs), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as GraphKernels>::attention(
                qkv.into_primitive(),
                heads.total,
                first,
                count,
            )),
        }
    }

    fn linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match LinearBackward
            .prepare::<C>([x.node(), w.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = contiguous(x.into_primitive());
                let w = contiguous(w.into_primitive());
                let y = linear_forward(&x, &w, &contiguous(b.into_primitive()));
                prep.finish((x, w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as GraphKernels>::linear(
                x.into_primitive(),
                w.into_primitive(),
                b.into_primitive(),
            )),
        }
    }

    fn scaled_softmax(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        match (SoftmaxBackward { scale })
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let probs = <Flex as GraphKernels>::scaled_softmax(x.into_primitive(), scale);
                prep.finish(probs.clone(), probs)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as GraphKernels>::scaled_softmax(
                x.into_primitive(),
                scale,
            )),
        }
    }

    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let mut y = contiguous(x.into_primitive());
                let mut slopes = zeros(y.shape());
                gelu_and_slope(y.storage_mut::<f32>(), slopes.storage_mut::<f32>());
                prep.finish(slopes, y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(<Flex as GraphKernels>::gelu(x.into_primitive()))
            }
        }
    }

    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let gamma = contiguous(gamma.into_primitive());
                let beta = contiguous(beta.into_primitive());
                let x = contiguous(x.into_primitive());
                let shape = x.shape();
                let rows = shape.num_elements() / last_dim(&gamma).max(1);
                let mut y = zeros(shape.clone());
                let mut normalized = zeros(shape);
                let mut inv_std = zeros([rows].into());
                layer_norm_rows(
                    x.storage::<f32>(),
                    gamma.storage::<f32>(),
                    beta.storage::<f32>(),
                    eps,
                    y.storage_mut::<f32>(),
                    normalized.storage_mut::<f32>(),
                    inv_std.storage_mut::<f32>(),
                );
                let state = LayerNormState {
                    normalized,
                    inv_std,
                    gamma,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as ModuleOps<Flex>>::layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                Some(beta.into_primitive()),
                eps as f64,
            )),
        }
    }
}

/// The backward step of [`GraphKernels::scaled_softmax`]; its state is the softmax's
/// output.
#[derive(Debug)]
struct SoftmaxBackward {
    scale: f32,
}

impl Backward<Flex, 1> for SoftmaxBackward {
    type State = FloatTensor<Flex>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let probs = contiguous(ops.state);
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let mut grad = contiguous(grad);
            let row = last_dim(&probs);
            let (probs, grads) = (probs.storage::<f32>(), grad.storage_mut::<f32>());
            softmax_backward_rows(probs, grads, row, self.scale);
            grad
        });
    }
}

/// The backward step of [`GraphKernels::gelu`]; its state is the GELU's slope at each
/// input.
#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FloatTensor<Flex>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let slopes = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let mut grad = contiguous(grad);
            mul_in_place(grad.storage_mut::<f32>(), slopes.storage::<f32>());
            grad
        });
    }
}

/// The backward step of [`GraphKernels::layer_norm`].
#[derive(Debug)]
struct LayerNormBackward;

/// What [`LayerNormBackward`] keeps from the forward pass.
#[derive(Debug, Clone)]
struct LayerNormState {
    /// `(x - mean) / sqrt(var + eps)`, the input's shape.
    normalized: FlexTensor,
    /// `1 / sqrt(var + eps)`, one per row.
    inv_std: FlexTensor,
    /// The scale, `[D]`.
    gamma: FlexTensor,
}

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, gamma, beta] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let LayerNormState {
            normalized,
            inv_std,
            gamma: gamma_values,
        } = ops.state;
        let d = last_dim(&gamma_values);
        let mut grad = contiguous(grad);
        let mut d_gamma = vec![0.0f32; d];
        let mut d_beta = vec![0.0f32; d];
        layer_norm_backward_rows(
            normalized.storage::<f32>(),
            inv_std.storage::<f32>(),
            gamma_values.storage::<f32>(),
            grad.storage_mut::<f32>(),
            &mut d_gamma,
            &mut d_beta,
        );
        if let Some(node) = gamma {
            let g = FlexTensor::from_data(TensorData::new(d_gamma, [d]));
            grads.register::<Flex>(node.id, g);
        }
        if let Some(node) = beta {
            let g = FlexTensor::from_data(TensorData::new(d_beta, [d]));
            grads.register::<Flex>(node.id, g);
        }
        if let Some(node) = x {
            grads.register::<Flex>(node.id, grad);
        }
    }
}

/// The backward step of [`GraphKernels::attention`]; its state is the contiguous qkv and
/// the attention weights.
#[derive(Debug)]
struct AttentionBackward {
    heads: Heads,
}

impl Backward<Flex, 1> for AttentionBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (qkv, probs) = ops.state;
        let heads = self.heads;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = contiguous(grad);
            let layout = HeadLayout::of(&qkv, heads.total);
            let HeadLayout { n, d, hd } = layout;
            let (images, width) = (qkv.shape()[0], heads.count * hd);
            let (x, p, dy) = (
                qkv.storage::<f32>(),
                probs.storage::<f32>(),
                grad.storage::<f32>(),
            );
            // The computed heads' q, k and v columns are written; the others stay zero.
            let mut dqkv = zeros(qkv.shape());
            let dx = dqkv.storage_mut::<f32>();
            let mut d_weights = vec![0.0f32; n * n];
            for image in 0..images {
                for slot in 0..heads.count {
                    let head = heads.first + slot;
                    let weights = &p[(image * heads.count + slot) * n * n..][..n * n];
                    let dout = MatrixRef {
                        data: &dy[image * n * width + slot * hd..],
                        rows: n,
                        cols: hd,
                        row_stride: width,
                        col_stride: 1,
                    };
                    let at = |which: usize| layout.start(image, head, which);
                    let w = MatrixRef::row_major(weights, n, n);
                    // dv = w^T dout; d(weights) = dout v^T, then back through the softmax.
                    product_into(&mut dx[at(2)..], 3 * d, w.t(), dout);
                    let v = layout.part(x, image, head, 2);
                    product_into(&mut d_weights, n, dout, v.t());
                    softmax_backward_rows(weights, &mut d_weights, n, layout.scale());
                    // With s = q k^T: dq = ds k, dk = ds^T q.
                    let ds = MatrixRef::row_major(&d_weights, n, n);
                    product_into(&mut dx[at(0)..], 3 * d, ds, layout.part(x, image, head, 1));
                    product_into(
                        &mut dx[at(1)..],
                        3 * d,
                        ds.t(),
                        layout.part(x, image, head, 0),
                    );
                }
            }
            dqkv
        });
    }
}

/// The backward step of [`GraphKernels::linear`]; its state is the input and the weight,
/// both contiguous.
#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node, b_node] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, w) = ops.state;
        let (d_in, d_out) = (w.shape()[0], last_dim(&w));
        let rows = x.shape().num_elements() / d_in.max(1);
        let dy = MatrixRef::row_major(grad.storage::<f32>(), rows, d_out);
        if let Some(node) = b_node {
            // db = the column sums of dy.
            let mut db = zeros([d_out].into());
            let sums = db.storage_mut::<f32>();
            for row in grad.storage::<f32>().chunks_exact(d_out.max(1)) {
                for (s, g) in sums.iter_mut().zip(row) {
                    *s += g;
                }
            }
            grads.register::<Flex>(node.id, db);
        }
        if let Some(node) = w_node {
            // dW = x^T dy, [d_in, d_out].
            let xs = MatrixRef::row_major(x.storage::<f32>(), rows, d_in);
            let dw = product(xs.t(), dy, None, w.shape());
            grads.register::<Flex>(node.id, dw);
        }
        if let Some(node) = x_node {
            // dx = dy W^T, the shape of x.
            let ws = MatrixRef::row_major(w.storage::<f32>(), d_in, d_out);
            let dx = product(dy, ws.t(), None, x.shape());
            grads.register::<Flex>(node.id, dx);
        }
    }
}

/// The exact GELU of `x`, differentiable, by the kernels above; the same conditions as
/// [`scaled_softmax`].
pub(crate) fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GraphKernels>::gelu(x.into_dispatch()))
}

/// LayerNorm over the last axis of `x` `[.., D]` with `gamma` and `beta` `[D]`,
/// differentiable, by the kernels above; the same conditions as [`scaled_softmax`].
pub(crate) fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f32,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GraphKernels>::layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
    ))
}

/// The linear layer `x W + b`, `x` `[.., d_in]`, `W` `[d_in, d_out]`, `b` `[d_out]`,
/// differentiable, by [`crate::gemm_call`]; the same conditions as [`scaled_softmax`].
pub(crate) fn linear<const D: usize>(x: Tensor<D>, w: Tensor<2>, b: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GraphKernels>::linear(
        x.into_dispatch(),
        w.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// Multi-head self-attention from the fused projection `qkv` `[B, N, 3D]` of `heads` heads:
/// the heads of `range` side by side, `[B, N, range.len() * D / heads]`, differentiable, by
/// [`crate::gemm_call`] and the softmax kernels; the same conditions as [`scaled_softmax`].
pub(crate) fn attention(qkv: Tensor<3>, heads: usize, range: std::ops::Range<usize>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as GraphKernels>::attention(
        qkv.into_dispatch(),
        heads,
        range.start,
        range.len(),
    ))
}

/// `softmax(scale * x)` over the last axis of `x` `[.., N]`, differentiable, by the kernels
/// above. `x` must be an f32 tensor on the CPU backend, with or without autodiff.
pub(crate) fn scaled_softmax<const D: usize>(x: Tensor<D>, scale: f32) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GraphKernels>::scaled_softmax(
        x.into_dispatch(),
        scale,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_kernels::{Route, route};
    use burn::module::Param;
    use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
    use burn::tensor::{Device, Distribution, TensorData, Tolerance, activation};

    /// The loss `sum(w * softmax(scale * x))` over a random `x` of `dims`, viewed through
    /// `view`, and its gradient with respect to `x`, by `softmax`.
    fn value_and_grad(
        softmax: impl Fn(Tensor<4>, f32) -> Tensor<4>,
        view: impl Fn(Tensor<4>) -> Tensor<4>,
        dims: [usize; 4],
    ) -> (Tensor<4>, Tensor<4>) {
        let device = Device::flex();
        device.seed(7);
        let x = Tensor::<4>::random(dims, Distribution::Normal(0.0, 4.0), &device);
        let w = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let ad = device.autodiff();
        let x = Tensor::<4>::from_data(x.into_data(), &ad).require_grad();
        let w = view(Tensor::<4>::from_data(w.into_data(), &ad));
        let y = softmax(view(x.clone()), 0.35);
        let grads = (y.clone() * w).sum().backward();
        let grad = x.grad(&grads).expect("a gradient for x");
        (y, grad)
    }

    fn burns(x: Tensor<4>, scale: f32) -> Tensor<4> {
        activation::softmax(x.mul_scalar(scale), 3)
    }

    #[test]
    fn value_and_gradient_match_burns_composed_softmax() {
        // Contiguous scores, a transposed view (computed on a copy), and rows shorter and
        // longer than one vector block.
        let views: [fn(Tensor<4>) -> Tensor<4>; 2] = [|x| x, |x| x.swap_dims(2, 3)];
        for view in views {
            for dims in [[2, 3, 7, 19], [1, 2, 40, 5]] {
                let (y, grad) = value_and_grad(scaled_softmax, view, dims);
                let (y_ref, grad_ref) = value_and_grad(burns, view, dims);
                assert_eq!(route(&y), Route::Graph);
                let tol = Tolerance::absolute(1e-6);
                y.into_data()
                    .assert_approx_eq::<f32>(&y_ref.into_data(), tol);
                grad.into_data()
                    .assert_approx_eq::<f32>(&grad_ref.into_data(), tol);
            }
        }
    }

    #[test]
    fn the_gradient_matches_the_softmax_jacobian_in_f64() {
        // One row, by hand: d/dx_j sum_i w_i y_i = s y_j (w_j - sum_i w_i y_i).
        let xs = [1.5f32, -0.25, 3.0, 0.0, -2.0];
        let ws = [0.5f32, -1.0, 2.0, 0.25, 1.0];
        let scale = 0.7f32;
        let ad = Device::flex().autodiff();
        let x =
            Tensor::<4>::from_data(TensorData::new(xs.to_vec(), [1, 1, 1, 5]), &ad).require_grad();
        let w = Tensor::<4>::from_data(TensorData::new(ws.to_vec(), [1, 1, 1, 5]), &ad);
        let grads = (scaled_softmax(x.clone(), scale) * w).sum().backward();
        let got = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let e: Vec<f64> = xs
            .iter()
            .map(|&x| (scale as f64 * x as f64).exp())
            .collect();
        let total: f64 = e.iter().sum();
        let y: Vec<f64> = e.iter().map(|e| e / total).collect();
        let wy: f64 = ws.iter().zip(&y).map(|(&w, y)| w as f64 * y).sum();
        for j in 0..5 {
            let exact = scale as f64 * y[j] * (ws[j] as f64 - wy);
            assert!(
                (got[j] as f64 - exact).abs() < 1e-7,
                "d/dx_{j}: {} against {exact}",
                got[j]
            );
        }
    }

    /// A LayerNorm of width `d` with random scale and offset, on `device`, and its epsilon.
    fn random_norm(d: usize, device: &Device) -> (LayerNorm, f64) {
        let eps = 1e-6;
        let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init(device);
        let dist = Distribution::Normal(0.5, 1.0);
        norm.gamma = Param::from_tensor(Tensor::random([d], dist, device));
        norm.beta = Some(Param::from_tensor(Tensor::random([d], dist, device)));
        (norm, eps)
    }

    #[test]
    fn layer_norm_value_and_gradients_match_burns_layer_norm() {
        let device = Device::flex();
        device.seed(11);
        let ad = device.clone().autodiff();
        for (dims, transposed) in [([2, 5, 24], false), ([3, 40, 7], false), ([2, 24, 5], true)] {
            let x = Tensor::<3>::random(dims, Distribution::Normal(1.0, 3.0), &device);
            let w = Tensor::<3>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let d = if transposed { dims[1] } else { dims[2] };
            let (norm, eps) = random_norm(d, &ad);
            // The gradients of sum(w * LayerNorm(x)) by the kernels and by Burn.
            let run = |ours: bool| {
                let x = Tensor::<3>::from_data(x.clone().into_data(), &ad).require_grad();
                let w = Tensor::<3>::from_data(w.clone().into_data(), &ad);
                let view = |t: Tensor<3>| if transposed { t.swap_dims(1, 2) } else { t };
                let y = if ours {
                    crate::cpu_kernels::layer_norm(&norm, eps, view(x.clone()))
                } else {
                    norm.forward(view(x.clone()))
                };
                let grads = (y.clone() * view(w)).sum().backward();
                let grad = |t: Tensor<1>| t.grad(&grads).expect("a gradient").into_data();
                [
                    y.into_data(),
                    x.grad(&grads).expect("a gradient for x").into_data(),
                    grad(norm.gamma.val()),
                    grad(norm.beta.as_ref().unwrap().val()),
                ]
            };
            assert_all_close(run(true), run(false), Tolerance::absolute(2e-5));
        }
    }

    #[test]
    fn layer_norm_matches_a_hand_computed_row() {
        // x = [1, 2, 3, 6]: mean 3, biased variance 3.5; gamma 2, beta 1 throughout.
        let ad = Device::flex().autodiff();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 6.0], [1, 4]), &ad)
            .require_grad();
        let mut norm = LayerNormConfig::new(4).with_epsilon(0.0).init(&ad);
        norm.gamma = Param::from_tensor(Tensor::full([4], 2.0, &ad));
        norm.beta = Some(Param::from_tensor(Tensor::full([4], 1.0, &ad)));
        let y = crate::cpu_kernels::layer_norm(&norm, 0.0, x.clone());
        let s = 3.5f64.sqrt();
        let got = y.clone().into_data().try_to_vec::<f32>().unwrap();
        for (g, v) in got.iter().zip([1.0, 2.0, 3.0, 6.0]) {
            let exact = 2.0 * (v - 3.0) / s + 1.0;
            assert!((*g as f64 - exact).abs() < 1e-6, "{g} against {exact}");
        }
        // d/dx_0 of y_0: gamma (1 - 1/4 - xhat_0^2 / 4) / s, xhat_0 = -2 / s.
        let grads = y.narrow(1, 0, 1).sum().backward();
        let dx0 = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()[0];
        let exact = 2.0 * (1.0 - 0.25 - (4.0 / 3.5) / 4.0) / s;
        assert!((dx0 as f64 - exact).abs() < 1e-6, "{dx0} against {exact}");
    }

    /// Each of `ours` within `tol` of the same item of `reference`.
    fn assert_all_close<const N: usize>(
        ours: [TensorData; N],
        reference: [TensorData; N],
        tol: Tolerance<f32>,
    ) {
        for (a, b) in ours.iter().zip(&reference) {
            a.assert_approx_eq::<f32>(b, tol);
        }
    }

    /// A linear layer with random weights and bias on `device`.
    fn random_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
        let mut layer = LinearConfig::new(d_in, d_out).init(device);
        layer.bias = Some(Param::from_tensor(Tensor::random(
            [d_out],
            Distribution::Normal(0.0, 1.0),
            device,
        )));
        layer
    }

    #[test]
    fn linear_value_and_gradients_match_burns_linear() {
        let device = Device::flex();
        device.seed(5);
        let ad = device.clone().autodiff();
        // Output sizes that are whole u128 blocks and sizes that are not (7 x 5 = 35), and a
        // transposed input view (computed on a copy).
        for (dims, d_out, transposed) in [
            ([2, 6, 16], 24, false),
            ([1, 7, 9], 5, false),
            ([3, 12, 8], 32, true),
        ] {
            let x = Tensor::<3>::random(dims, Distribution::Normal(0.0, 2.0), &device);
            let d_in = if transposed { dims[1] } else { dims[2] };
            let layer = random_linear(d_in, d_out, &ad);
            let out_dims = if transposed {
                [dims[0], dims[2], d_out]
            } else {
                [dims[0], dims[1], d_out]
            };
            let w = Tensor::<3>::random(out_dims, Distribution::Normal(0.0, 1.0), &device);
            // The gradients of sum(w * linear(x)) by the product here and by Burn.
            let run = |ours: bool| {
                let x = Tensor::<3>::from_data(x.clone().into_data(), &ad).require_grad();
                let w = Tensor::<3>::from_data(w.clone().into_data(), &ad);
                let x_in = if transposed {
                    x.clone().swap_dims(1, 2)
                } else {
                    x.clone()
                };
                let y = if ours {
                    crate::cpu_kernels::linear(&layer, x_in)
                } else {
                    layer.forward(x_in)
                };
                let grads = (y.clone() * w).sum().backward();
                let bias = layer.bias.as_ref().unwrap().val();
                [
                    y.into_data(),
                    x.grad(&grads).expect("a gradient for x").into_data(),
                    layer.weight.val().grad(&grads).expect("dW").into_data(),
                    bias.grad(&grads).expect("db").into_data(),
                ]
            };
            assert_all_close(run(true), run(false), Tolerance::absolute(1e-4));
        }
    }

    #[test]
    fn linear_matches_a_hand_computed_product() {
        // [[1, 2], [3, 4]] [[1, 0, 2], [-1, 1, 0]] + [0.5, 0, -1] = [[-0.5, 2, 1], [-0.5, 4, 5]].
        let device = Device::flex();
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
            &device,
        );
        let w = vec![1.0f32, 0.0, 2.0, -1.0, 1.0, 0.0];
        let w = Tensor::<2>::from_data(TensorData::new(w, [2, 3]), &device);
        let b = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, 0.0, -1.0], [3]), &device);
        let y = linear(x, w, b);
        assert_eq!(route(&y), Route::Host);
        let want = TensorData::new(vec![-0.5f32, 2.0, 1.0, -0.5, 4.0, 5.0], [2, 3]);
        y.into_data()
            .assert_approx_eq::<f32>(&want, Tolerance::absolute(1e-6));
    }

    /// Attention from `qkv` `[B, N, 3D]` by Burn's operations, as `vit::Attention` composes
    /// them where the fused operation does not run.
    fn composed_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
        crate::flex_forward::tests::composed(qkv, heads).0
    }

    #[test]
    fn attention_value_and_gradient_match_burns_composed_attention() {
        let device = Device::flex();
        device.seed(17);
        let ad = device.clone().autodiff();
        // Weights of whole u128 blocks and not (7 x 7), one head and several, all heads and
        // a range of them (the output's columns of those heads).
        for (b, n, d, heads, range) in [
            (2, 5, 12, 3, 0..3),
            (1, 7, 8, 2, 0..2),
            (3, 4, 6, 1, 0..1),
            (2, 5, 12, 3, 1..3),
            (1, 7, 8, 2, 1..2),
        ] {
            let hd = d / heads;
            let width = range.len() * hd;
            let qkv = Tensor::<3>::random([b, n, 3 * d], Distribution::Normal(0.0, 1.5), &device);
            let w = Tensor::<3>::random([b, n, width], Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                let x = Tensor::<3>::from_data(qkv.clone().into_data(), &ad).require_grad();
                let w = Tensor::<3>::from_data(w.clone().into_data(), &ad);
                let y = if ours {
                    attention(x.clone(), heads, range.clone())
                } else {
                    composed_attention(x.clone(), heads).narrow(2, range.start * hd, width)
                };
                let grads = (y.clone() * w).sum().backward();
                [
                    y.into_data(),
                    x.grad(&grads).expect("a gradient for qkv").into_data(),
                ]
            };
            let reference = run(false);
            let tol = Tolerance::absolute(1e-5);
            assert_all_close(run(true), reference.clone(), tol);
            // Outside a graph: the CPU backend, and the autodiff one untracked.
            let plain = attention(qkv.clone(), heads, range.clone());
            assert_eq!(route(&plain), Route::Host);
            plain
                .into_data()
                .assert_approx_eq::<f32>(&reference[0], tol);
            let untracked = Tensor::<3>::from_data(qkv.clone().into_data(), &ad);
            attention(untracked, heads, range.clone())
                .into_data()
                .assert_approx_eq::<f32>(&reference[0], tol);
        }
    }

    /// The tokens and the gradients of `sum(w * tokens)` with respect to `conv`'s weight
    /// and bias.
    fn value_and_conv_grads(
        conv: &burn::nn::conv::Conv2d,
        tokens: Tensor<3>,
        w: &Tensor<3>,
    ) -> [TensorData; 3] {
        let grads = (tokens.clone() * w.clone()).sum().backward();
        let bias = conv.bias.as_ref().unwrap().val();
        [
            tokens.into_data(),
            conv.weight.val().grad(&grads).expect("dW").into_data(),
            bias.grad(&grads).expect("db").into_data(),
        ]
    }

    #[test]
    fn patch_embedding_matches_burns_convolution_in_and_out_of_a_graph() {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex();
        device.seed(9);
        let ad = device.clone().autodiff();
        // Whole patches, and a size the patches do not divide (the convolution leaves the
        // last rows and columns out).
        for (dims, p, d) in [([2, 3, 32, 32], 8, 12), ([1, 2, 20, 27], 6, 5)] {
            let conv = Conv2dConfig::new([dims[1], d], [p, p])
                .with_stride([p, p])
                .init(&ad);
            let images = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let grid = (dims[2] / p) * (dims[3] / p);
            let w = Tensor::<3>::random([dims[0], grid, d], Distribution::Normal(0.0, 1.0), &ad);
            // Value, dW and db of sum(w * tokens), by the product and by Burn's convolution.
            let run = |ours: bool| {
                let images = Tensor::<4>::from_data(images.clone().into_data(), &ad);
                let tokens = if ours {
                    crate::cpu_kernels::patch_embed(&conv, images.into())
                } else {
                    conv.forward(images).flatten::<3>(2, 3).swap_dims(1, 2)
                };
                assert_eq!(tokens.dims(), [dims[0], grid, d]);
                value_and_conv_grads(&conv, tokens, &w)
            };
            assert_all_close(run(true), run(false), Tolerance::absolute(1e-4));
            // Outside a graph.
            let plain = burn::module::Module::valid(&conv);
            assert_all_close(
                [crate::cpu_kernels::patch_embed(&plain, images.clone().into()).into_data()],
                [plain
                    .forward(images)
                    .flatten::<3>(2, 3)
                    .swap_dims(1, 2)
                    .into_data()],
                Tolerance::absolute(1e-4),
            );
        }
    }

    /// Grey images through the folded kernel against Burn's convolution over the grey
    /// plane repeated and normalised by hand: the same tokens and the same gradients of the
    /// conv's own weight and bias, in a graph and outside one.
    #[test]
    fn grey_patch_embedding_matches_the_convolution_of_the_normalised_channels() {
        use crate::config::Normalization;
        use crate::pixels::{Pixels, channels_by_hand as by_hand};
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex();
        device.seed(10);
        let ad = device.clone().autodiff();
        for (norm, b, side, p, d) in [
            (Normalization::imagenet(3), 2, 32, 8, 12),
            (Normalization::cxr(1), 1, 20, 6, 5),
        ] {
            let c = norm.mean.len();
            let conv = Conv2dConfig::new([c, d], [p, p])
                .with_stride([p, p])
                .init(&ad);
            let grey =
                Tensor::<4>::random([b, 1, side, side], Distribution::Uniform(0.0, 1.0), &device);
            let grid = (side / p) * (side / p);
            let w = Tensor::<3>::random([b, grid, d], Distribution::Normal(0.0, 1.0), &ad);
            let run = |folded: bool| {
                let grey = Tensor::<4>::from_data(grey.clone().into_data(), &ad);
                let tokens = if folded {
                    crate::cpu_kernels::patch_embed(
                        &conv,
                        Pixels::Grey {
                            grey,
                            normalization: norm.clone(),
                        },
                    )
                } else {
                    conv.forward(by_hand(grey, &norm))
                        .flatten::<3>(2, 3)
                        .swap_dims(1, 2)
                };
                assert_eq!(tokens.dims(), [b, grid, d]);
                value_and_conv_grads(&conv, tokens, &w)
            };
            assert_all_close(run(true), run(false), Tolerance::absolute(1e-4));
            let plain = burn::module::Module::valid(&conv);
            let grey_in = Pixels::Grey {
                grey: grey.clone(),
                normalization: norm.clone(),
            };
            assert_all_close(
                [crate::cpu_kernels::patch_embed(&plain, grey_in).into_data()],
                [plain
                    .forward(by_hand(grey.clone(), &norm))
                    .flatten::<3>(2, 3)
                    .swap_dims(1, 2)
                    .into_data()],
                Tolerance::absolute(1e-4),
            );
        }
    }

    #[test]
    fn outside_a_graph_it_is_the_plain_softmax() {
        let device = Device::flex();
        device.seed(3);
        let x = Tensor::<4>::random([2, 2, 5, 9], Distribution::Normal(0.0, 2.0), &device);
        let expected = burns(x.clone(), 0.5).into_data();
        let tol = Tolerance::absolute(1e-6);
        // On the autodiff device but not tracked, and on the plain CPU backend.
        let untracked = Tensor::<4>::from_data(x.clone().into_data(), &device.autodiff());
        scaled_softmax(untracked, 0.5)
            .into_data()
            .assert_approx_eq::<f32>(&expected, tol);
        // A tensor whose buffer another one shares is computed on a copy.
        let before = x.clone().into_data();
        scaled_softmax(x.clone(), 0.5)
            .into_data()
            .assert_approx_eq::<f32>(&expected, tol);
        x.into_data()
            .assert_approx_eq::<f32>(&before, Tolerance::absolute(0.0));
    }
}
