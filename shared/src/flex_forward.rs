//! The linear layers' and the attention's forward passes on the CPU backend's own tensors,
//! with their products written straight into new buffers ([`crate::gemm_call`]): for CPU
//! inference outside an autodiff graph ([`linear`], [`attention`], which
//! `crate::cpu_kernels` sends here on its `Route::Host`), and the forward halves of
//! `crate::graph_kernels`' operations in a graph. Built with the `cpu-kernels` feature
//! (which `autodiff` includes): the trainer and the page turn it on.
//!
//! Burn's own linear layer allocates each product's output zeroed, copies it once before
//! the product writes it, and adds the bias in a pass of its own; its attention copies q, k
//! and v out of the projection, allocates every product's output the same way and copies
//! the heads back side by side. In the page's encoder those zero-fills and copies took
//! about a tenth of the time (Chromium's profiler, BENCHMARKS.md).

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind, Flex,
    TensorMetadata,
};
use burn::tensor::{DType, Tensor};

use crate::cpu_kernels::softmax_rows;
use crate::gemm_call::{MatrixRef, product, product_into, zeros};

/// The linear layer `x W + b` over the last axis of `x` `[.., d_in]`, `W` `[d_in, d_out]`,
/// `b` `[d_out]` -> `[.., d_out]`: one product into an output that starts as the bias.
///
/// # Panics
/// When a tensor is not an f32 tensor of the CPU backend outside an autodiff graph (the
/// callers check the route), or the shapes disagree.
pub(crate) fn linear<const D: usize>(x: Tensor<D>, w: Tensor<2>, b: Tensor<1>) -> Tensor<D> {
    let y = linear_forward(
        &contiguous(flex(x)),
        &contiguous(flex(w)),
        &contiguous(flex(b)),
    );
    from_flex(y)
}

/// Multi-head self-attention from the fused projection `qkv` `[B, N, 3D]` (q, k and v
/// side by side, each head-major) of `heads` heads: the heads of `range` side by side,
/// `[B, N, range.len() * D / heads]`, each `softmax(q k^T / sqrt(D / heads)) v` per image.
/// Per image and head, `q k^T` straight into one scratch block, the softmax in place, the
/// weights times `v` straight into the head's columns of the output.
///
/// # Panics
/// As [`linear`], and when `range` is not within `0..heads` or `D` not a multiple of it.
pub(crate) fn attention(qkv: Tensor<3>, heads: usize, range: std::ops::Range<usize>) -> Tensor<3> {
    let heads = Heads::new(heads, range.start, range.len());
    from_flex(attention_forward(&contiguous(flex(qkv)), heads, false).0)
}

/// [`attention`] of all `heads` heads, with the attention weights `[B, heads, N, N]`
/// (for explanation maps): each head's `q k^T` and softmax in place in its block of the
/// weights.
///
/// # Panics
/// As [`attention`].
pub(crate) fn attention_and_weights(qkv: Tensor<3>, heads: usize) -> (Tensor<3>, Tensor<4>) {
    let (out, weights) =
        attention_forward(&contiguous(flex(qkv)), Heads::new(heads, 0, heads), true);
    let weights = weights.expect("the weights, kept");
    (from_flex(out), from_flex(weights))
}

/// The CPU backend's f32 tensor inside `x`.
fn flex<const D: usize>(x: Tensor<D>) -> FlexTensor {
    match x.into_dispatch() {
        DispatchTensor {
            kind: DispatchTensorKind::Flex(BackendTensor::Float(x)),
            autodiff: DispatchAutodiffContext::Disabled,
        } => x,
        _ => panic!("the CPU kernels take float tensors of the CPU backend outside a graph"),
    }
}

/// `x` as a tensor of the CPU backend, outside any graph.
fn from_flex<const D: usize>(x: FlexTensor) -> Tensor<D> {
    Tensor::from_dispatch(DispatchTensor {
        kind: DispatchTensorKind::Flex(BackendTensor::Float(x)),
        autodiff: DispatchAutodiffContext::Disabled,
    })
}

/// One head of one image in a contiguous `[B, N, 3D]` qkv buffer: where its q, k and v
/// start and how they are laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLayout {
    /// Tokens per image.
    pub n: usize,
    /// The model width D.
    pub d: usize,
    /// The head width D / heads.
    pub hd: usize,
}

impl HeadLayout {
    pub fn of(qkv: &FlexTensor, heads: usize) -> Self {
        let dims = qkv.shape();
        assert_eq!(dims.num_dims(), 3, "qkv is [B, N, 3D]");
        let d = dims[2] / 3;
        assert!(
            heads > 0 && dims[2] == 3 * d && d.is_multiple_of(heads),
            "qkv [.., {}] for {heads} heads",
            dims[2]
        );
        HeadLayout {
            n: dims[1],
            d,
            hd: d / heads,
        }
    }

    /// Part `which` (0 q, 1 k, 2 v) of head `head` of image `image`, `[N, hd]`.
    pub fn part<'a>(
        &self,
        qkv: &'a [f32],
        image: usize,
        head: usize,
        which: usize,
    ) -> MatrixRef<'a> {
        MatrixRef {
            data: &qkv[self.start(image, head, which)..],
            rows: self.n,
            cols: self.hd,
            row_stride: 3 * self.d,
            col_stride: 1,
        }
    }

    /// Where part `which` of head `head` of image `image` starts.
    pub fn start(&self, image: usize, head: usize, which: usize) -> usize {
        image * self.n * 3 * self.d + which * self.d + head * self.hd
    }

    pub fn scale(&self) -> f32 {
        (self.hd as f32).powf(-0.5)
    }
}

/// Which heads [`attention`] computes: `count` of the `total`, from `first`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub total: usize,
    pub first: usize,
    pub count: usize,
}

impl Heads {
    pub fn new(total: usize, first: usize, count: usize) -> Self {
        assert!(
            first + count <= total,
            "heads {first}..{} of {total}",
            first + count
        );
        Heads {
            total,
            first,
            count,
        }
    }
}

/// [`attention`] on a contiguous qkv: the output `[B, N, count * hd]` and,
/// with `keep_weights` (for the backward step), the attention weights `[B, count, N, N]`;
/// without, each head's weights go through one scratch block.
pub(crate) fn attention_forward(
    qkv: &FlexTensor,
    heads: Heads,
    keep_weights: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let layout = HeadLayout::of(qkv, heads.total);
    let HeadLayout { n, hd, .. } = layout;
    let (images, width) = (qkv.shape()[0], heads.count * hd);
    let mut probs = keep_weights.then(|| zeros([images, heads.count, n, n].into()));
    let mut scratch = Vec::new();
    let p: &mut [f32] = match &mut probs {
        Some(probs) => probs.storage_mut::<f32>(),
        None => {
            scratch.resize(n * n, 0.0f32);
            &mut scratch
        }
    };
    let mut out = zeros([images, n, width].into());
    let x = qkv.storage::<f32>();
    let o = out.storage_mut::<f32>();
    for image in 0..images {
        for slot in 0..heads.count {
            let head = heads.first + slot;
            let at = if keep_weights {
                (image * heads.count + slot) * n * n
            } else {
                0
            };
            let weights = &mut p[at..][..n * n];
            let q = layout.part(x, image, head, 0);
            let k = layout.part(x, image, head, 1);
            product_into(weights, n, q, k.t());
            softmax_rows(weights, n, layout.scale());
            let weights = MatrixRef::row_major(weights, n, n);
            let v = layout.part(x, image, head, 2);
            product_into(&mut o[image * n * width + slot * hd..], width, weights, v);
        }
    }
    (out, probs)
}

/// [`linear`] on contiguous tensors.
pub(crate) fn linear_forward(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let dims = x.shape();
    let (d_in, d_out) = (w.shape()[0], last_dim(w));
    assert_eq!(
        last_dim(x),
        d_in,
        "x [.., {}] for W [{d_in}, {d_out}]",
        last_dim(x)
    );
    let rows = dims.num_elements() / d_in.max(1);
    let mut out_dims = dims.clone();
    let last = out_dims.num_dims() - 1;
    out_dims[last] = d_out;
    product(
        MatrixRef::row_major(x.storage::<f32>(), rows, d_in),
        MatrixRef::row_major(w.storage::<f32>(), d_in, d_out),
        Some(b.storage::<f32>()),
        out_dims,
    )
}

/// The length of `x`'s last axis.
pub(crate) fn last_dim(x: &FloatTensor<Flex>) -> usize {
    let shape = x.shape();
    shape[shape.num_dims() - 1]
}

/// `x` with a row-major buffer of exactly its elements: `x` itself when it has one (so a
/// buffer nothing else holds can be written in place), a copy when it is a view.
pub(crate) fn contiguous(x: FloatTensor<Flex>) -> FloatTensor<Flex> {
    assert_eq!(x.dtype(), DType::F32, "the graph kernels take f32 tensors");
    // Shares the buffer when it is already contiguous; `x` is dropped on return, so the
    // result holds the buffer alone if `x` did.
    x.to_contiguous()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpu_kernels::{Route, route};
    use burn::tensor::{Device, Distribution, Tolerance, activation};

    /// Burn's composed attention of `qkv` `[B, N, 3D]`: the weights `[B, H, N, N]` and the
    /// heads side by side `[B, N, D]`.
    pub(crate) fn composed(qkv: Tensor<3>, heads: usize) -> (Tensor<3>, Tensor<4>) {
        let [b, n, d3] = qkv.dims();
        let (d, hd) = (d3 / 3, d3 / 3 / heads);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * d, d)
                .reshape([b, n, heads, hd])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scale = (hd as f64).powf(-0.5);
        let weights = activation::softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale), 3);
        let out = weights.clone().matmul(v).swap_dims(1, 2).reshape([b, n, d]);
        (out, weights)
    }

    #[test]
    fn attention_and_its_weights_match_burns_composed_attention() {
        let device = Device::flex();
        device.seed(23);
        // Weights of whole u128 blocks and not (7 x 7), one head and several.
        for (b, n, d, heads) in [(2, 5, 12, 3), (1, 7, 8, 2), (3, 4, 6, 1)] {
            let qkv = Tensor::<3>::random([b, n, 3 * d], Distribution::Normal(0.0, 2.0), &device);
            assert_eq!(route(&qkv), Route::Host);
            let (out, weights) = attention_and_weights(qkv.clone(), heads);
            let (want_out, want_weights) = composed(qkv.clone(), heads);
            assert_eq!(weights.dims(), [b, heads, n, n]);
            let tolerance = Tolerance::<f32>::absolute(1e-5);
            weights
                .into_data()
                .assert_approx_eq(&want_weights.into_data(), tolerance);
            out.into_data()
                .assert_approx_eq(&want_out.clone().into_data(), tolerance);
            // Without the weights, the same output.
            attention(qkv, heads, 0..heads)
                .into_data()
                .assert_approx_eq(&want_out.into_data(), tolerance);
        }
    }

    #[test]
    fn linear_matches_burns_product_and_bias() {
        let device = Device::flex();
        device.seed(29);
        for (rows, d_in, d_out) in [(5, 3, 4), (1, 7, 5), (6, 8, 3)] {
            let x = Tensor::<3>::random([1, rows, d_in], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<2>::random([d_in, d_out], Distribution::Normal(0.0, 1.0), &device);
            let b = Tensor::<1>::random([d_out], Distribution::Normal(0.0, 1.0), &device);
            let want = x.clone().matmul(w.clone().unsqueeze()) + b.clone().unsqueeze();
            linear(x, w, b)
                .into_data()
                .assert_approx_eq(&want.into_data(), Tolerance::<f32>::absolute(1e-5));
        }
    }
}
