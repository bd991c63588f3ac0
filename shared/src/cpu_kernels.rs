//! Element-wise kernels for the CPU backend: the exact GELU (and its slope, for training)
//! and the attention softmax, written as branch-free loops that the compiler vectorises (at
//! the CPU's widest width, [`crate::simd`]).
//!
//! Burn's CPU backend (flex) computes both one element at a time through libm's scalar
//! `erff` and `expf`; profiled on ViT-Tiny inference they took about 40 % of the time
//! (BENCHMARKS.md). These kernels take the tensor's buffer out of the backend (no copy for
//! a tensor that nothing else holds), work on it in place, and give it back. They are used
//! on the CPU backend without autodiff ([`route`]); with autodiff on the CPU the GELU's
//! slope is computed here and Burn differentiates a product with it ([`gelu`]); every
//! other device keeps Burn's own operations.
//!
//! Accuracy: [`exp`] is within 2 ulp of the exact value over the range softmax uses
//! (arguments at most 0), [`erf`] within 6e-7 of the exact value (Abramowitz and Stegun
//! 7.1.26 in f32), so a GELU differs from the exact one by at most 3e-7 |x| plus its own
//! rounding. Tests check each against an f64 reference.

use burn::backend::DispatchDevice;
use burn::tensor::activation;
use burn::tensor::{DType, Tensor, TensorData};

use crate::simd;

/// Where an operation on a tensor is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// By Burn's own operations: another device, or values that are not f32.
    Burn,
    /// By the kernels here, on the values in place: the CPU backend without autodiff.
    Host,
    /// The CPU backend with autodiff: the kernels here compute what Burn's differentiable
    /// operations need ([`gelu`]), or Burn does it all.
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

/// The exact GELU, `x Φ(x)`, of any tensor: [`gelu_in_place`] on the [`Route::Host`];
/// in a graph on the CPU, [`gelu_linearised`]'s slope and offset around two of Burn's
/// differentiable operations; Burn's `gelu` elsewhere.
///
/// In a graph the result is `x * slope - offset`, where `slope = Φ(x) + x φ(x)` (the
/// GELU's derivative) and `offset = x² φ(x)` are computed on the host and enter the graph as
/// constants: the value is `x Φ(x)`, and the gradient `slope` is the exact GELU's. Burn's
/// own GELU and its backward pass call a scalar `erf` (and `exp`) per element twice.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match route(&x) {
        Route::Burn => activation::gelu(x),
        Route::Host => in_place(x, gelu_in_place),
        Route::Graph => {
            let device = x.device();
            let dims = x.dims();
            let mut slope: TensorData = x.clone().detach().into_data();
            let mut offset = vec![0.0f32; slope.num_elements()];
            match slope.as_mut_slice::<f32>() {
                Ok(values) => gelu_linearised(values, &mut offset),
                Err(e) => unreachable!("an f32 tensor's data holds f32 values: {e:?}"),
            }
            let slope = Tensor::from_data(slope, &device);
            let offset = Tensor::from_data(TensorData::new(offset, dims), &device);
            x * slope - offset
        }
    }
}

/// Each value `x` of `values` replaced by the exact GELU's slope `Φ(x) + x φ(x)`, and
/// `offsets` (as long) set to `x² φ(x)`: `x * slope - offset` is `x Φ(x)`. `φ` is the
/// standard normal density, `Φ` its distribution function.
///
/// # Panics
/// When the two slices differ in length.
pub fn gelu_linearised(values: &mut [f32], offsets: &mut [f32]) {
    assert_eq!(values.len(), offsets.len(), "one offset per value");
    simd::widest(GeluLinearised { values, offsets })
}

/// [`gelu_linearised`]'s work, as a call that [`simd::widest`] inlines into each of its
/// copies.
struct GeluLinearised<'a> {
    values: &'a mut [f32],
    offsets: &'a mut [f32],
}

impl pulp::NullaryFnOnce for GeluLinearised<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        // 1 / sqrt(2 pi)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for (v, o) in self.values.iter_mut().zip(self.offsets.iter_mut()) {
            let x = *v;
            let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let xpdf = x * INV_SQRT_2PI * exp(-0.5 * x * x);
            *v = cdf + xpdf;
            *o = x * xpdf;
        }
    }
}

/// `softmax(scale * x)` over the last axis of `x` `[.., N]`: [`softmax_rows`] on the
/// [`Route::Host`], Burn's ops elsewhere.
pub fn scaled_softmax<const D: usize>(x: Tensor<D>, scale: f32) -> Tensor<D> {
    if route(&x) != Route::Host {
        return activation::softmax(x.mul_scalar(scale), D - 1);
    }
    let n = x.dims()[D - 1];
    in_place(x, |values| softmax_rows(values, n, scale))
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

/// The largest value of `r` (NaN when any value is NaN), `r` not empty.
#[inline(always)]
fn max_of(r: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut nan = false;
    let blocks = r.chunks_exact(LANES);
    let tail = blocks.remainder();
    for block in blocks {
        for (m, &v) in lanes.iter_mut().zip(block) {
            nan |= v.is_nan();
            *m = if v > *m { v } else { *m };
        }
    }
    for &v in tail {
        nan |= v.is_nan();
        lanes[0] = if v > lanes[0] { v } else { lanes[0] };
    }
    if nan {
        return f32::NAN;
    }
    lanes.into_iter().fold(f32::NEG_INFINITY, f32::max)
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
                    GeluLinearised {
                        values: &mut self.values,
                        offsets: &mut offsets,
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
