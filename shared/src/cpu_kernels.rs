//! Kernels for the CPU backend: the exact GELU (and its slope), the attention softmax (and
//! its gradient) and LayerNorm (forward and backward), written as branch-free loops that the
//! compiler vectorises (at the CPU's widest width, [`crate::simd`]).
//!
//! Burn's CPU backend (flex) computes the GELU and softmax one element at a time through
//! libm's scalar `erff` and `expf`; profiled on ViT-Tiny inference they took about 40 % of
//! the time (BENCHMARKS.md). Without autodiff ([`Route::Host`]) these kernels take the
//! tensor's buffer out of the backend (no copy for a tensor that nothing else holds), work
//! on it in place, and give it back. With autodiff on the CPU ([`Route::Graph`]) and the
//! crate's `autodiff` feature, `crate::graph_kernels` runs them as operations of the graph
//! with their own backward passes. The ViT's linear layers ([`linear`]), its patch
//! embedding ([`patch_embed`]) and its attention ([`attention_from_qkv`]) take a path of
//! their own on the CPU outside a graph with the `cpu-kernels` feature
//! (`crate::flex_forward`, in the trainer and the page), and in a graph with `autodiff`
//! ([`has_product_kernels`]). On a GPU without subgroup operations (WebGPU in a browser)
//! the linear layers and the attention take kernels of their own with the `gpu-kernels`
//! feature (`crate::gpu_kernels`). Every other device keeps Burn's own operations.
//!
//! Accuracy: [`exp`] is within 2 ulp of the exact value over the range softmax uses
//! (arguments at most 0), [`erf`] within 6e-7 of the exact value (Abramowitz and Stegun
//! 7.1.26 in f32), so a GELU differs from the exact one by at most 3e-7 |x| plus its own
//! rounding. Tests check each against an f64 reference.

use burn::backend::DispatchDevice;
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};

use crate::pixels::{Pixels, fold_patch_kernel};
use crate::simd;

/// Where an operation on a tensor is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// By Burn's own operations: another device, or values that are not f32.
    Burn,
    /// By the kernels here, on the values in place: the CPU backend without autodiff.
    Host,
    /// The CPU backend with autodiff: the kernels here as graph operations with their own
    /// backward passes (with the `autodiff` feature; Burn's operations without it).
    Graph,
}

/// How operations on `x` are computed ([`Route`]).
pub fn route<const D: usize>(x: &Tensor<D>) -> Route {
    let device = x.device();
    let cpu = matches!(
        device.clone().without_autodiff().as_dispatch(),
        DispatchDevice::Flex(_)
    );
    if !cpu || x.dtype() != DType::F32 {
        Route::Burn
    } else if device.is_autodiff() {
        Route::Graph
    } else {
        Route::Host
    }
}

/// The exact GELU, `x Φ(x)`, of any tensor: [`gelu_in_place`] on the [`Route::Host`]; in
/// a graph on the CPU ([`Route::Graph`]) with the `autodiff` feature, [`gelu_and_slope`]
/// forward and the product with the kept slope backward (`crate::graph_kernels`); Burn's
/// `gelu` elsewhere, which calls a scalar `erf` (and `exp`) per element, forward and
/// backward.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match route(&x) {
        Route::Host => in_place(x, gelu_in_place),
        #[cfg(feature = "autodiff")]
        Route::Graph => crate::graph_kernels::gelu(x),
        _ => activation::gelu(x),
    }
}

/// Each value `x` of `values` replaced by the exact GELU `x Φ(x)`, and `slopes` (as long)
/// set to its derivative `Φ(x) + x φ(x)`. `φ` is the standard normal density, `Φ` its
/// distribution function.
///
/// # Panics
/// When the two slices differ in length.
pub fn gelu_and_slope(values: &mut [f32], slopes: &mut [f32]) {
    assert_eq!(values.len(), slopes.len(), "one slope per value");
    simd::widest(GeluAndSlope { values, slopes })
}

/// [`gelu_and_slope`]'s work, as a call that [`simd::widest`] inlines into each of its
/// copies.
struct GeluAndSlope<'a> {
    values: &'a mut [f32],
    slopes: &'a mut [f32],
}

impl pulp::NullaryFnOnce for GeluAndSlope<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        // 1 / sqrt(2 pi)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for (v, s) in self.values.iter_mut().zip(self.slopes.iter_mut()) {
            let x = *v;
            let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let xpdf = x * INV_SQRT_2PI * exp(-0.5 * x * x);
            *v = x * cdf;
            *s = cdf + xpdf;
        }
    }
}

/// Each value of `grads` multiplied by the one at the same place in `slopes` (the
/// backward pass of an element-wise function).
///
/// # Panics
/// When the two slices differ in length.
pub fn mul_in_place(grads: &mut [f32], slopes: &[f32]) {
    assert_eq!(grads.len(), slopes.len(), "one slope per gradient");
    grads.iter_mut().zip(slopes).for_each(|(g, s)| *g *= s);
}

/// `softmax(scale * x)` over the last axis of `x` `[.., N]`: [`softmax_rows`] on the
/// [`Route::Host`]; on the [`Route::Graph`] with the `autodiff` feature, the same kernel
/// forward and [`softmax_backward_rows`] backward (`crate::graph_kernels`); Burn's
/// operations elsewhere ([`softmax_has_kernels`] tells which).
pub fn scaled_softmax<const D: usize>(x: Tensor<D>, scale: f32) -> Tensor<D> {
    match route(&x) {
        Route::Host => {
            let n = x.dims()[D - 1];
            in_place(x, |values| softmax_rows(values, n, scale))
        }
        #[cfg(feature = "autodiff")]
        Route::Graph => crate::graph_kernels::scaled_softmax(x, scale),
        _ => activation::softmax(x.mul_scalar(scale), D - 1),
    }
}

/// `norm(x)`, LayerNorm over the last axis of `x`; `eps` must be the epsilon `norm` was
/// made with (Burn keeps it private). In a graph on the CPU ([`Route::Graph`]) with the
/// `autodiff` feature, [`layer_norm_rows`] forward and [`layer_norm_backward_rows`]
/// backward (`crate::graph_kernels`); elsewhere `norm.forward(x)` (the CPU backend has a
/// fused LayerNorm of its own for the forward pass alone).
pub fn layer_norm<const D: usize>(norm: &LayerNorm, eps: f64, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "autodiff")]
    if route(&x) == Route::Graph
        && let Some(beta) = &norm.beta
    {
        return crate::graph_kernels::layer_norm(x, norm.gamma.val(), beta.val(), eps as f32);
    }
    let _ = eps;
    norm.forward(x)
}

/// `layer`'s forward pass, `[.., d_in]` -> `[.., d_out]`: where the route has kernels of
/// its own ([`has_product_kernels`]) and for a layer with a bias, one matrix product
/// written straight into the output, which starts as the bias (`crate::gemm_call`), and
/// in a graph a backward pass of its own; elsewhere Burn's.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "gpu-kernels")]
    if let Some(bias) = &layer.bias
        && let (w, b) = (layer.weight.val(), bias.val())
        && crate::gpu_kernels::takes(&x, &w, &b)
    {
        return crate::gpu_kernels::linear(x, w, b);
    }
    #[cfg(feature = "cpu-kernels")]
    if let Some(bias) = &layer.bias
        && let route = route(&x)
        && has_product_kernels(route)
    {
        let (w, b) = (layer.weight.val(), bias.val());
        if w.dtype() == DType::F32 && b.dtype() == DType::F32 {
            return linear_by_product(route, x, w, b);
        }
    }
    layer.forward(x)
}

/// Whether the linear layers, the patch embedding and the attention take paths of their
/// own on `route`: outside a graph on the CPU ([`Route::Host`]) with the `cpu-kernels`
/// feature, in a graph on the CPU ([`Route::Graph`]) with `autodiff`.
pub fn has_product_kernels(route: Route) -> bool {
    (cfg!(feature = "cpu-kernels") && route == Route::Host)
        || (cfg!(feature = "autodiff") && route == Route::Graph)
}

/// `x W + b` by the kernels of `route`, one where [`has_product_kernels`] holds.
#[cfg(feature = "cpu-kernels")]
fn linear_by_product<const D: usize>(
    route: Route,
    x: Tensor<D>,
    w: Tensor<2>,
    b: Tensor<1>,
) -> Tensor<D> {
    #[cfg(feature = "autodiff")]
    if route == Route::Graph {
        return crate::graph_kernels::linear(x, w, b);
    }
    debug_assert_eq!(route, Route::Host);
    crate::flex_forward::linear(x, w, b)
}

/// The patch embedding: `conv` (kernel = stride = `P`, no padding, one group) over
/// `images` `[B, C, H, W]`, as tokens `[B, (H / P) (W / P), D]` in row-major patch order
/// (what `conv.forward(images).flatten(2, 3).swap_dims(1, 2)` gives). Grey images
/// ([`Pixels::Grey`]) go through the kernel folded with their normalisation
/// ([`fold_patch_kernel`]), `[D, 1, P, P]` (unless the conv pads: padding applies to the
/// normalised channels, so they are made). Where the route has kernels of its own
/// ([`has_product_kernels`]) and for a conv with a bias (or grey images), the
/// patches' pixels are laid side by side, `[B, (H / P) (W / P), C P P]`, and go through
/// [`linear`]'s product with the kernel as a `[C P P, D]` matrix: one product, where
/// Burn's convolution took about twice as many of the training step's samples, forward and
/// backward (BENCHMARKS.md). Elsewhere Burn's convolution.
pub fn patch_embed(conv: &Conv2d, images: Pixels) -> Tensor<3> {
    // A padded convolution pads the normalised channels, not the grey plane: no fold then.
    let valid = matches!(conv.padding, burn::nn::PaddingConfig2d::Valid);
    let images = match images {
        grey @ Pixels::Grey { .. } if !valid => Pixels::Normalized(grey.normalized()),
        images => images,
    };
    let (images, weight, bias) = match images {
        Pixels::Normalized(images) => {
            #[cfg(feature = "cpu-kernels")]
            if let Some(bias) = &conv.bias
                && let Some(tokens) =
                    patch_embed_by_product(conv, &images, conv.weight.val(), bias.val())
            {
                return tokens;
            }
            return conv.forward(images).flatten::<3>(2, 3).swap_dims(1, 2);
        }
        Pixels::Grey {
            grey,
            normalization,
        } => {
            let bias = match &conv.bias {
                Some(b) => b.val(),
                None => Tensor::zeros([conv.weight.dims()[0]], &grey.device()),
            };
            let (weight, bias) = fold_patch_kernel(conv.weight.val(), bias, &normalization);
            (grey, weight, bias)
        }
    };
    #[cfg(feature = "cpu-kernels")]
    if let Some(tokens) = patch_embed_by_product(conv, &images, weight.clone(), bias.clone()) {
        return tokens;
    }
    let options = ConvOptions::new(conv.stride, [0, 0], conv.dilation, conv.groups);
    burn::tensor::module::conv2d(images, weight, Some(bias), options)
        .flatten::<3>(2, 3)
        .swap_dims(1, 2)
}

/// [`patch_embed`] as a matrix product with the kernel `weight` `[D, C, P, P]` and `bias`
/// `[D]` (`conv`'s own, or folded), or `None` where it does not apply: another route, or a
/// conv that is not a plain patch embedding.
#[cfg(feature = "cpu-kernels")]
fn patch_embed_by_product(
    conv: &Conv2d,
    images: &Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
) -> Option<Tensor<3>> {
    let [p, q] = conv.kernel_size;
    let route = route(images);
    let plain = p == q
        && p > 0
        && conv.stride == conv.kernel_size
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, burn::nn::PaddingConfig2d::Valid);
    if !plain
        || !has_product_kernels(route)
        || weight.dtype() != DType::F32
        || bias.dtype() != DType::F32
    {
        return None;
    }
    let [b, c, h, w] = images.dims();
    let (gh, gw) = (h / p, w / p);
    if gh == 0 || gw == 0 {
        // Smaller than one patch: whatever the convolution makes of it.
        return None;
    }
    let [d, _, _, _] = weight.dims();
    // The convolution leaves out the rows and columns past the last whole patch.
    let mut images = images.clone();
    if gh * p != h || gw * p != w {
        images = images.narrow(2, 0, gh * p).narrow(3, 0, gw * p);
    }
    // [B, C, gh, P, gw, P] -> [B, gh, gw, C, P, P]: each patch's pixels in the order of
    // the kernel's [C, P, P].
    let patches = images
        .reshape([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, gh * gw, c * p * p]);
    let kernel = weight.reshape([d, c * p * p]).transpose();
    Some(linear_by_product(route, patches, kernel, bias))
}

/// Multi-head self-attention from the fused projection `qkv` `[B, N, 3D]` (q, k and v
/// side by side, each head-major) to the heads side by side `[B, N, D]`, as one operation:
/// where the route has kernels of its own ([`has_product_kernels`]), each head's two
/// products written straight into the attention weights and the output around
/// [`softmax_rows`] (`crate::flex_forward`), and in a graph a backward step that writes the
/// gradients of q, k and v into one buffer (`crate::graph_kernels`); all heads on a GPU
/// without subgroup operations with the `gpu-kernels` feature (`crate::gpu_kernels`).
/// Elsewhere `None`: the caller composes Burn's operations. `range` picks which of the
/// `heads` heads are computed: all (`0..heads`), or a group (`forward_in_pieces`), whose
/// output is those heads' columns of the whole.
pub fn attention_from_qkv(
    qkv: &Tensor<3>,
    heads: usize,
    range: std::ops::Range<usize>,
) -> Option<Tensor<3>> {
    let route = route(qkv);
    #[cfg(feature = "autodiff")]
    if route == Route::Graph {
        return Some(crate::graph_kernels::attention(qkv.clone(), heads, range));
    }
    #[cfg(feature = "cpu-kernels")]
    if route == Route::Host {
        return Some(crate::flex_forward::attention(qkv.clone(), heads, range));
    }
    #[cfg(feature = "gpu-kernels")]
    if range == (0..heads) && crate::gpu_kernels::takes_attention(qkv, heads) {
        return Some(crate::gpu_kernels::attention(qkv.clone(), heads).0);
    }
    let _ = (qkv, heads, range, route);
    None
}

/// [`attention_from_qkv`] of all `heads` heads with the attention weights `[B, heads, N,
/// N]` (for explanation maps): on the CPU outside a graph with the `cpu-kernels` feature,
/// each head's `q k^T` and softmax in place in its block of the weights
/// (`crate::flex_forward`); on a GPU without subgroup operations with the `gpu-kernels`
/// feature, `crate::gpu_kernels`. Elsewhere `None`: the caller composes Burn's operations.
pub fn attention_and_weights(qkv: &Tensor<3>, heads: usize) -> Option<(Tensor<3>, Tensor<4>)> {
    #[cfg(feature = "cpu-kernels")]
    if route(qkv) == Route::Host {
        return Some(crate::flex_forward::attention_and_weights(
            qkv.clone(),
            heads,
        ));
    }
    #[cfg(feature = "gpu-kernels")]
    if crate::gpu_kernels::takes_attention(qkv, heads) {
        return Some(crate::gpu_kernels::attention(qkv.clone(), heads));
    }
    let _ = (qkv, heads);
    None
}

/// Whether [`scaled_softmax`] runs on the kernels here on this route, rather than on
/// Burn's composed operations.
pub fn softmax_has_kernels(route: Route) -> bool {
    route == Route::Host || (cfg!(feature = "autodiff") && route == Route::Graph)
}

/// `f` applied to the values of `x` in place (row-major), on the host.
fn in_place<const D: usize>(x: Tensor<D>, f: impl FnOnce(&mut [f32])) -> Tensor<D> {
    let device = x.device();
    let mut data: TensorData = x.into_data();
    match data.as_mut_slice::<f32>() {
        Ok(values) => f(values),
        Err(e) => unreachable!("an f32 tensor's data holds f32 values: {e:?}"),
    }
    Tensor::from_data(data, &device)
}

/// Values per block of the vectorised loops: 16 lanes cover one AVX-512 register, four SSE
/// or WebAssembly SIMD ones.
const LANES: usize = 16;

/// The exact GELU `0.5 x (1 + erf(x / sqrt 2))` of every value, in place.
pub fn gelu_in_place(values: &mut [f32]) {
    simd::widest(Gelu(values))
}

/// [`gelu_in_place`]'s work, as a call that [`simd::widest`] inlines into each of its
/// copies.
struct Gelu<'a>(&'a mut [f32]);

impl pulp::NullaryFnOnce for Gelu<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        for v in self.0.iter_mut() {
            let x = *v;
            *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// Each row of `row` values of `values` replaced by `softmax(scale * row)` for a positive
/// `scale`, subtracting the row's maximum first as usual (so that [`exp`] sees arguments
/// at most 0). `values.len()` must be a multiple of `row`.
///
/// # Panics
/// When it is not, or when `row` is 0 with values present.
pub fn softmax_rows(values: &mut [f32], row: usize, scale: f32) {
    if values.is_empty() {
        return;
    }
    assert!(
        row > 0 && values.len().is_multiple_of(row),
        "{} values do not split into rows of {row}",
        values.len()
    );
    simd::widest(SoftmaxRows { values, row, scale })
}

/// [`softmax_rows`]' work, as a call that [`simd::widest`] inlines into each of its copies
/// (a closure this size would be called, not inlined, and run at the baseline width).
struct SoftmaxRows<'a> {
    values: &'a mut [f32],
    row: usize,
    scale: f32,
}

impl pulp::NullaryFnOnce for SoftmaxRows<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Self { values, row, scale } = self;
        for r in values.chunks_exact_mut(row) {
            let max = max_of(r);
            if max == f32::NEG_INFINITY || max.is_nan() {
                // Every score -inf (or NaN): no distribution to normalise; NaN as Burn gives.
                r.fill(f32::NAN);
                continue;
            }
            let shift = max * scale;
            let sum = exp_shifted(r, scale, shift);
            let inv = 1.0 / sum;
            r.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// The gradient of [`softmax_rows`] with respect to its input, in place of the gradient
/// with respect to its output: for each row, with `y` the softmax and `g` the incoming
/// gradient, `g_j <- scale * y_j * (g_j - sum_k g_k y_k)`. `probs` and `grads` have the same
/// length, a multiple of `row`.
///
/// # Panics
/// When the lengths differ or do not split into rows of `row`.
pub fn softmax_backward_rows(probs: &[f32], grads: &mut [f32], row: usize, scale: f32) {
    assert_eq!(probs.len(), grads.len(), "one gradient per probability");
    if grads.is_empty() {
        return;
    }
    assert!(
        row > 0 && grads.len().is_multiple_of(row),
        "{} values do not split into rows of {row}",
        grads.len()
    );
    simd::widest(SoftmaxBackwardRows {
        probs,
        grads,
        row,
        scale,
    })
}

/// [`softmax_backward_rows`]' work, as a call that [`simd::widest`] inlines.
struct SoftmaxBackwardRows<'a> {
    probs: &'a [f32],
    grads: &'a mut [f32],
    row: usize,
    scale: f32,
}

impl pulp::NullaryFnOnce for SoftmaxBackwardRows<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Self {
            probs,
            grads,
            row,
            scale,
        } = self;
        for (y, g) in probs.chunks_exact(row).zip(grads.chunks_exact_mut(row)) {
            let dot = dot(y, g);
            for (g, &y) in g.iter_mut().zip(y) {
                *g = scale * y * (*g - dot);
            }
        }
    }
}

/// `sum_k a_k b_k`, summed in [`LANES`] interleaved partial sums.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; LANES];
    let (a_blocks, b_blocks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_tail, b_tail) = (a_blocks.remainder(), b_blocks.remainder());
    for (a, b) in a_blocks.zip(b_blocks) {
        for ((s, &a), &b) in sums.iter_mut().zip(a).zip(b) {
            *s += a * b;
        }
    }
    for (&a, &b) in a_tail.iter().zip(b_tail) {
        sums[0] += a * b;
    }
    sums.into_iter().sum()
}

/// LayerNorm over rows of `gamma.len()` values of `input`, into `output`:
/// `(x - mean) / sqrt(var + eps) * gamma + beta` with the row's mean and biased variance.
/// `normalized` (as long as `input`) receives `(x - mean) / sqrt(var + eps)` and `inv_std`
/// (one per row) `1 / sqrt(var + eps)`: what the backward pass needs
/// ([`layer_norm_backward_rows`]).
///
/// # Panics
/// When the lengths do not agree.
pub fn layer_norm_rows(
    input: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    output: &mut [f32],
    normalized: &mut [f32],
    inv_std: &mut [f32],
) {
    let d = gamma.len();
    assert!(
        d > 0
            && beta.len() == d
            && output.len() == input.len()
            && normalized.len() == input.len()
            && input.len() == d * inv_std.len(),
        "LayerNorm of width {d}: {} offsets, {} inputs, {} outputs, {} normalised, {} rows",
        beta.len(),
        input.len(),
        output.len(),
        normalized.len(),
        inv_std.len()
    );
    simd::widest(LayerNormRows {
        input,
        gamma,
        beta,
        eps,
        output,
        normalized,
        inv_std,
    })
}

/// [`layer_norm_rows`]' work, as a call that [`simd::widest`] inlines.
struct LayerNormRows<'a> {
    input: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
    output: &'a mut [f32],
    normalized: &'a mut [f32],
    inv_std: &'a mut [f32],
}

impl pulp::NullaryFnOnce for LayerNormRows<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let d = self.gamma.len();
        let rows = self
            .input
            .chunks_exact(d)
            .zip(self.output.chunks_exact_mut(d))
            .zip(self.normalized.chunks_exact_mut(d))
            .zip(self.inv_std.iter_mut());
        for (((x, y), xhat), inv) in rows {
            let mean = sum(x) / d as f32;
            for (h, &v) in xhat.iter_mut().zip(x) {
                *h = v - mean;
            }
            let var = dot(xhat, xhat) / d as f32;
            let r = 1.0 / (var + self.eps).sqrt();
            *inv = r;
            let per_value = y
                .iter_mut()
                .zip(xhat.iter_mut())
                .zip(self.gamma)
                .zip(self.beta);
            for (((y, h), &g), &b) in per_value {
                *h *= r;
                *y = *h * g + b;
            }
        }
    }
}

/// The gradients of [`layer_norm_rows`], from its `normalized` values, `inv_std` and
/// `gamma` and the gradient `grads` with respect to its output, which is replaced by the
/// gradient with respect to its input: per row,
/// `dx = inv_std * (g gamma - mean(g gamma) - normalized * mean(g gamma normalized))`.
/// The gradients with respect to `gamma` (`sum over rows of g normalized`) and `beta`
/// (`sum of g`) are added to `d_gamma` and `d_beta`.
///
/// # Panics
/// When the lengths do not agree.
pub fn layer_norm_backward_rows(
    normalized: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    grads: &mut [f32],
    d_gamma: &mut [f32],
    d_beta: &mut [f32],
) {
    let d = gamma.len();
    assert!(
        d > 0
            && normalized.len() == grads.len()
            && grads.len() == d * inv_std.len()
            && d_gamma.len() == d
            && d_beta.len() == d,
        "LayerNorm gradients of width {d}: lengths disagree"
    );
    simd::widest(LayerNormBackwardRows {
        normalized,
        inv_std,
        gamma,
        grads,
        d_gamma,
        d_beta,
    })
}

/// [`layer_norm_backward_rows`]' work, as a call that [`simd::widest`] inlines.
struct LayerNormBackwardRows<'a> {
    normalized: &'a [f32],
    inv_std: &'a [f32],
    gamma: &'a [f32],
    grads: &'a mut [f32],
    d_gamma: &'a mut [f32],
    d_beta: &'a mut [f32],
}

impl pulp::NullaryFnOnce for LayerNormBackwardRows<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let d = self.gamma.len();
        let rows = self
            .normalized
            .chunks_exact(d)
            .zip(self.grads.chunks_exact_mut(d))
            .zip(self.inv_std);
        for ((xhat, g), &inv) in rows {
            let per_value = self.d_gamma.iter_mut().zip(self.d_beta.iter_mut());
            for (((dg, db), &g), &h) in per_value.zip(g.iter()).zip(xhat) {
                *dg += g * h;
                *db += g;
            }
            for (g, &w) in g.iter_mut().zip(self.gamma) {
                *g *= w;
            }
            let mean_g = sum(g) / d as f32;
            let mean_gh = dot(g, xhat) / d as f32;
            for (g, &h) in g.iter_mut().zip(xhat) {
                *g = inv * (*g - mean_g - h * mean_gh);
            }
        }
    }
}

/// `sum_k a_k`, summed in [`LANES`] interleaved partial sums.
#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    let mut sums = [0.0f32; LANES];
    let blocks = a.chunks_exact(LANES);
    let tail = blocks.remainder();
    for block in blocks {
        for (s, &v) in sums.iter_mut().zip(block) {
            *s += v;
        }
    }
    for &v in tail {
        sums[0] += v;
    }
    sums.into_iter().sum()
}

/// The largest value of `r` (NaN when any value is NaN), `r` not empty.
#[inline(always)]
fn max_of(r: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let blocks = r.chunks_exact(LANES);
    let tail = blocks.remainder();
    for block in blocks {
        for (m, &v) in lanes.iter_mut().zip(block) {
            *m = max_or_nan(*m, v);
        }
    }
    for &v in tail {
        lanes[0] = max_or_nan(lanes[0], v);
    }
    lanes.into_iter().fold(f32::NEG_INFINITY, max_or_nan)
}

/// The larger of `m` and `v`, NaN from either side sticking: a NaN `v` is taken, and once
/// `m` is NaN no comparison is true. Two comparisons and a select per lane, which
/// vectorise everywhere (a separate "any NaN" flag kept per value did not in WebAssembly:
/// every lane was extracted and tested on its own, 5 % of the page's encoder).
#[inline(always)]
fn max_or_nan(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() { v } else { m }
}

/// Every value `v` of `r` replaced by `exp(scale * v - shift)`; returns their sum.
#[inline(always)]
fn exp_shifted(r: &mut [f32], scale: f32, shift: f32) -> f32 {
    let mut sums = [0.0f32; LANES];
    let mut blocks = r.chunks_exact_mut(LANES);
    for block in &mut blocks {
        for (s, v) in sums.iter_mut().zip(block.iter_mut()) {
            *v = exp(*v * scale - shift);
            *s += *v;
        }
    }
    for v in blocks.into_remainder() {
        *v = exp(*v * scale - shift);
        sums[0] += *v;
    }
    sums.into_iter().sum()
}

/// `e^x` for `x <= 0` (what softmax needs), within 2 ulp; 0 below -87.3 (where `e^x`
/// leaves the normal floats), NaN for NaN. Branch-free, so that loops over it vectorise.
#[inline(always)]
pub fn exp(x_in: f32) -> f32 {
    // Rounding by adding 1.5 * 2^23: the sum's low mantissa bits hold round(x / ln 2).
    const ROUNDER: f32 = 12_582_912.0;
    // ln 2 in two parts (Cody and Waite), the first exact in 9 bits, so that n ln 2 is
    // subtracted without rounding error.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x_in.clamp(-87.3, 0.0);
    let t = x * std::f32::consts::LOG2_E + ROUNDER;
    let n = t - ROUNDER;
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r for |r| <= ln 2 / 2 by its Taylor series to degree 7 (truncation under 3e-9).
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n from its exponent bits; n is in -126..=0 here.
    let n_bits = t.to_bits().wrapping_sub(ROUNDER.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    // Below the range: 0, as e^-inf is (a select, not a branch).
    if x_in < -87.3 { 0.0 } else { p * two_n }
}

/// The error function, within 6e-7 of the exact value: Abramowitz and Stegun's formula
/// 7.1.26 (1.5e-7 in exact arithmetic) evaluated in f32, the approximation PyTorch's
/// vectorised CPU `erf` uses too. Odd, and +-1 beyond |x| = 4. Branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    // Not `min`, which would turn NaN into 4.
    let a = x.abs();
    let a = if a > 4.0 { 4.0 } else { a };
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// `n` evenly spaced points from `lo` to `hi`, both included.
    fn grid(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f32> {
        (0..n).map(move |i| (lo + (hi - lo) * i as f64 / (n - 1) as f64) as f32)
    }

    #[test]
    fn exp_is_within_two_ulp_where_softmax_uses_it() {
        let mut worst = 0.0f64;
        for x in grid(-87.3, 0.0, 2_000_001) {
            let exact = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max((got - exact).abs() / exact);
        }
        // 2 ulp of a float near 1 is 2.4e-7 relative.
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn max_of_finds_the_largest_value_and_any_nan() {
        // Lengths around the blocks of LANES values, the largest (or NaN) at every place.
        for n in [1, 5, LANES - 1, LANES, LANES + 1, 3 * LANES + 7] {
            for at in 0..n {
                let mut r: Vec<f32> = (0..n).map(|i| -(i as f32) - 1.0).collect();
                r[at] = 2.5;
                assert_eq!(max_of(&r), 2.5, "n {n}, largest at {at}");
                r[at] = f32::NAN;
                assert!(max_of(&r).is_nan(), "n {n}, NaN at {at}");
                r[at] = f32::NEG_INFINITY;
                let want = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(max_of(&r), want, "n {n}, -inf at {at}");
            }
            assert_eq!(max_of(&vec![f32::NEG_INFINITY; n]), f32::NEG_INFINITY);
        }
    }

    #[test]
    fn erf_is_within_its_published_bound_of_an_f64_erf() {
        let mut worst = 0.0f64;
        for x in grid(-6.0, 6.0, 1_200_001) {
            let err = (erf(x) as f64 - libm::erf(x as f64)).abs();
            worst = worst.max(err);
            assert_eq!(erf(-x), -erf(x), "odd at {x}");
        }
        // Abramowitz and Stegun's 1.5e-7, plus float rounding.
        assert!(worst < 6e-7, "worst absolute error {worst:e}");
        assert!(erf(f32::NAN).is_nan());
        assert_eq!(erf(f32::INFINITY), 1.0);
    }

    #[test]
    fn gelu_matches_the_exact_gelu_in_f64() {
        let xs: Vec<f32> = grid(-10.0, 10.0, 200_001).collect();
        let mut got = xs.clone();
        gelu_in_place(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let x64 = x as f64;
            let exact = 0.5 * x64 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2));
            let tol = 2e-7 * x64.abs().max(1.0);
            assert!(
                (g as f64 - exact).abs() <= tol,
                "gelu({x}) = {g}, exact {exact}"
            );
        }
    }

    /// A kernel's work on its own copy of the values, so that it can run once per width.
    #[derive(Clone)]
    struct OnCopy {
        values: Vec<f32>,
        softmax_row: Option<usize>,
    }

    impl pulp::NullaryFnOnce for OnCopy {
        type Output = (Vec<f32>, Vec<f32>);

        #[inline(always)]
        fn call(mut self) -> Self::Output {
            let mut offsets = vec![0.0; self.values.len()];
            match self.softmax_row {
                Some(row) => SoftmaxRows {
                    values: &mut self.values,
                    row,
                    scale: 0.3,
                }
                .call(),
                None => {
                    let mut gelu = self.values.clone();
                    Gelu(&mut gelu).call();
                    GeluAndSlope {
                        values: &mut self.values,
                        slopes: &mut offsets,
                    }
                    .call();
                    offsets.extend(gelu);
                }
            }
            (self.values, offsets)
        }
    }

    #[test]
    fn every_vector_width_gives_the_same_bits() {
        let values: Vec<f32> = grid(-9.0, 9.0, 4099).collect();
        for softmax_row in [None, Some(1), Some(17), Some(4099)] {
            let outs = simd::at_every_width(OnCopy {
                values: values.clone(),
                softmax_row,
            });
            for out in &outs[1..] {
                assert!(
                    out.0
                        .iter()
                        .zip(&outs[0].0)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                        && out
                            .1
                            .iter()
                            .zip(&outs[0].1)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "softmax rows {softmax_row:?}: a width differs from the baseline"
                );
            }
        }
    }

    /// [`SoftmaxBackwardRows`] on its own copy of the gradients.
    #[derive(Clone)]
    struct BackwardOnCopy {
        probs: Vec<f32>,
        grads: Vec<f32>,
        row: usize,
    }

    impl pulp::NullaryFnOnce for BackwardOnCopy {
        type Output = Vec<f32>;

        #[inline(always)]
        fn call(mut self) -> Vec<f32> {
            SoftmaxBackwardRows {
                probs: &self.probs,
                grads: &mut self.grads,
                row: self.row,
                scale: 0.3,
            }
            .call();
            self.grads
        }
    }

    #[test]
    fn the_softmax_backward_kernel_matches_f64_at_every_width() {
        // 4097 = 17 x 241.
        let logits: Vec<f32> = grid(-9.0, 9.0, 4097).collect();
        let upstream: Vec<f32> = grid(-1.0, 1.0, 4097).map(|g| g * g - 0.3).collect();
        for row in [1, 17, 4097] {
            let mut probs = logits.clone();
            softmax_rows(&mut probs, row, 0.3);
            let outs = simd::at_every_width(BackwardOnCopy {
                probs: probs.clone(),
                grads: upstream.clone(),
                row,
            });
            for out in &outs[1..] {
                assert!(
                    out.iter()
                        .zip(&outs[0])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "rows of {row}: a width differs from the baseline"
                );
            }
            for (r, (y, g)) in probs.chunks(row).zip(upstream.chunks(row)).enumerate() {
                let dot: f64 = y.iter().zip(g).map(|(&y, &g)| y as f64 * g as f64).sum();
                for (j, (&y, &g)) in y.iter().zip(g).enumerate() {
                    let exact = 0.3 * y as f64 * (g as f64 - dot);
                    let got = outs[0][r * row + j] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-6 * y as f64 + 1e-12,
                        "rows of {row}, row {r}, column {j}: {got} against {exact}"
                    );
                }
            }
        }
        let mut none: Vec<f32> = vec![];
        softmax_backward_rows(&[], &mut none, 3, 1.0);
    }

    #[test]
    fn softmax_rows_match_a_direct_f64_softmax() {
        let mut state = 12345u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        // Row lengths around the 16-lane blocks, and a ViT-Tiny row of 197 tokens.
        for row in [1, 3, 15, 16, 17, 40, 197] {
            let rows = 5;
            let scale = 0.176_776_7;
            let values: Vec<f32> = (0..rows * row).map(|_| 60.0 * uniform() - 30.0).collect();
            let mut got = values.clone();
            softmax_rows(&mut got, row, scale);
            for (r, (input, out)) in values.chunks(row).zip(got.chunks(row)).enumerate() {
                let logits: Vec<f64> = input.iter().map(|&v| v as f64 * scale as f64).collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
                for (l, &p) in logits.iter().zip(out) {
                    let exact = (l - max).exp() / sum;
                    assert!(
                        (p as f64 - exact).abs() <= 1e-6 * exact + 1e-30,
                        "row of {row}, row {r}: {p} against {exact}"
                    );
                }
            }
        }
        let mut masked = vec![0.0, f32::NEG_INFINITY, 0.0];
        softmax_rows(&mut masked, 3, 1.0);
        assert_eq!(masked, vec![0.5, 0.0, 0.5]);
        let mut empty = vec![f32::NEG_INFINITY; 4];
        softmax_rows(&mut empty, 4, 1.0);
        assert!(empty.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn the_tensor_kernels_agree_with_burns_on_the_cpu_with_and_without_autodiff() {
        let device = Device::flex();
        device.seed(1);
        let x = Tensor::<4>::random([2, 3, 7, 19], Distribution::Normal(0.0, 3.0), &device);
        assert_eq!(route(&x), Route::Host);
        assert_eq!(route(&x.clone().autodiff()), Route::Graph);
        let tol = Tolerance::absolute(1e-6);
        gelu(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&activation::gelu(x.clone()).into_data(), tol);
        scaled_softmax(x.clone(), 0.5)
            .into_data()
            .assert_approx_eq::<f32>(
                &activation::softmax(x.clone().mul_scalar(0.5), 3).into_data(),
                tol,
            );
        // A view of another tensor's buffer (narrowed) is computed on a copy, and the
        // source is left as it was.
        let before = x.clone().into_data();
        let part = gelu(x.clone().narrow(3, 2, 5));
        assert_eq!(part.dims(), [2, 3, 7, 5]);
        x.into_data()
            .assert_approx_eq::<f32>(&before, Tolerance::absolute(0.0));

        // With autodiff on the CPU: the exact GELU's value and gradient (against f64), and
        // what Burn's own GELU gives.
        let ad = device.autodiff();
        let xs: Vec<f32> = grid(-12.0, 12.0, 4801).collect();
        let leaf =
            Tensor::<2>::from_data(TensorData::new(xs.clone(), [1, xs.len()]), &ad).require_grad();
        let y = gelu(leaf.clone());
        let values = y.clone().into_data().try_to_vec::<f32>().unwrap();
        let grads = y.sum().backward();
        let g = leaf.grad(&grads).expect("a gradient").into_data();
        let slopes = g.try_to_vec::<f32>().unwrap();
        let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let cdf = |x: f64| 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        for ((&x, &v), &s) in xs.iter().zip(&values).zip(&slopes) {
            let x64 = x as f64;
            let tol = 1e-6 * x64.abs().max(1.0);
            assert!((v as f64 - x64 * cdf(x64)).abs() <= tol, "gelu({x}) = {v}");
            let slope = cdf(x64) + x64 * pdf(x64);
            assert!(
                (s as f64 - slope).abs() <= 1e-6,
                "gelu'({x}) = {s}, exact {slope}"
            );
        }
        let burn_leaf =
            Tensor::<2>::from_data(TensorData::new(xs.clone(), [1, xs.len()]), &ad).require_grad();
        let burn_grads = activation::gelu(burn_leaf.clone()).sum().backward();
        g.assert_approx_eq::<f32>(
            &burn_leaf.grad(&burn_grads).expect("a gradient").into_data(),
            Tolerance::absolute(1e-6),
        );
    }
}
