//! The linear layers' and the attention's matrix products on a GPU without subgroup
//! operations (`gpu-kernels` feature; the page turns it on for WebGPU).
//!
//! In a browser WebGPU offers no subgroups to wgpu, so Burn's matrix products fall back to
//! cubek-matmul's unit-level routine, whatever its tiling. Profiled kernel by kernel on
//! Chromium's WebGPU (`tests/browser/gpu-profile.mjs`, BENCHMARKS.md), those products were
//! 95 % of the encoder's time, the linear layers' 1.8 times as slow per product as ONNX
//! Runtime Web's. The kernels here are the classic shared-memory tiling that ONNX Runtime
//! Web and most WebGPU code use: a workgroup of 8 x 8 units computes a 32 x 32 block of the
//! output, stepping along the inner dimension 32 at a time; each step the units load the
//! two 32 x 32 slices into shared memory, then each unit accumulates its four rows of four
//! columns from them. `linear_kernel` loads vectors of four and adds the bias as the block
//! is written; `batched_kernel` loads single values through strides, so that the
//! attention's two products read the heads straight out of the qkv projection and write
//! them side by side, around `softmax_rows_kernel`.
//!
//! Only inference outside an autodiff graph comes here ([`takes`], [`takes_attention`]);
//! every other device and graph keeps Burn's operations.

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, Device, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Rows and columns of the output per workgroup, and the inner dimension per step.
const BLOCK: usize = 32;
/// Values per vector: each unit's column group, and the unit of every load.
const WIDTH: usize = 4;
/// Units per workgroup along each axis (`BLOCK / WIDTH`).
const UNITS: usize = BLOCK / WIDTH;
// `linear_kernel` spells out one accumulator per row of its unit's four (`acc0`..`acc3`)
// and reads its vectors' lanes by index: another width needs that kernel rewritten.
const _: () = assert!(WIDTH == 4 && BLOCK.is_multiple_of(WIDTH));

/// The linear layer and the attention as a Burn backend extension: the cubecl backend runs
/// the kernels below; with Burn's `fusion` each call joins the lazy stream as an operation
/// of its own.
#[backend_extension(Cube, Fusion)]
pub trait GpuKernels: burn::backend::Backend {
    /// `x W + b` over the last axis of `x` `[.., K]`, `W` `[K, N]`, `b` `[N]` -> `[.., N]`,
    /// f32, with `K` and `N` multiples of 4.
    #[fusion(dtype = x, shape = linear_shape(x, w))]
    fn tiled_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Multi-head self-attention of all `heads` heads from the fused projection `qkv`
    /// `[B, N, 3D]` (q, k and v side by side, each head-major), f32: the heads side by side
    /// `[B, N, D]`, each `softmax(q k^T / sqrt(D / heads)) v`, and the weights `[B, heads,
    /// N, N]`.
    #[fusion(meta = attention_meta)]
    fn tiled_attention(
        qkv: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// [`GpuKernels::tiled_attention`]'s outputs: `[B, N, D]` and `[B, heads, N, N]`.
fn attention_meta(qkv: &TensorSpec, heads: &usize) -> (TensorSpec, TensorSpec) {
    let [b, n, d3] = [qkv.shape[0], qkv.shape[1], qkv.shape[2]];
    (
        TensorSpec::new(Shape::new([b, n, d3 / 3]), qkv.dtype),
        TensorSpec::new(Shape::new([b, *heads, n, n]), qkv.dtype),
    )
}

/// The output shape of `x` `[.., K]` times `w` `[K, N]`: `[.., N]`.
fn linear_shape(x: &Shape, w: &Shape) -> Shape {
    let mut out = x.clone();
    let last = out.num_dims() - 1;
    out[last] = w[1];
    out
}

impl GpuKernels for CubeBackend {
    #[allow(unsafe_code)]
    fn tiled_linear(x: CubeTensor, w: CubeTensor, b: CubeTensor) -> CubeTensor {
        let (x, w, b) = (into_contiguous(x), into_contiguous(w), into_contiguous(b));
        let dims = x.meta.shape().clone();
        let k = dims[dims.num_dims() - 1];
        let m = dims.num_elements() / k.max(1);
        let n = w.meta.shape()[1];
        let out = empty_device_contiguous_dtype(
            x.client.clone(),
            x.device.clone(),
            linear_shape(&dims, w.meta.shape()),
            DType::F32,
        );
        if m == 0 || n == 0 {
            return out;
        }
        let client = out.client.clone();
        let cubes = CubeCount::Static(n.div_ceil(BLOCK) as u32, m.div_ceil(BLOCK) as u32, 1);
        // Safety of the unchecked launch: every read and write below is guarded by the
        // shapes passed with it (rows below `m`, depth below `k`, columns below `n`), and
        // the buffers are contiguous with exactly those shapes.
        unsafe {
            linear_kernel::launch_unchecked(
                &client,
                cubes,
                CubeDim::new_2d(UNITS as u32, UNITS as u32),
                WIDTH,
                x.into_buffer_arg(),
                w.into_buffer_arg(),
                b.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                m,
                k / WIDTH,
                n / WIDTH,
            )
        };
        out
    }

    #[allow(unsafe_code)]
    fn tiled_attention(qkv: CubeTensor, heads: usize) -> (CubeTensor, CubeTensor) {
        let qkv = into_contiguous(qkv);
        let dims = qkv.meta.shape().clone();
        let (b, n, d3) = (dims[0], dims[1], dims[2]);
        let (d, hd) = (d3 / 3, d3 / 3 / heads);
        let client = qkv.client.clone();
        let device = qkv.device.clone();
        let weights = empty_device_contiguous_dtype(
            client.clone(),
            device.clone(),
            Shape::new([b, heads, n, n]),
            DType::F32,
        );
        let out = empty_device_contiguous_dtype(
            client.clone(),
            device,
            Shape::new([b, n, d]),
            DType::F32,
        );
        if b * n * d == 0 {
            return (out, weights);
        }
        let cubes = |rows: usize, cols: usize| {
            CubeCount::Static(
                cols.div_ceil(BLOCK) as u32,
                rows.div_ceil(BLOCK) as u32,
                (b * heads) as u32,
            )
        };
        let dim = CubeDim::new_2d(UNITS as u32, UNITS as u32);
        // Safety of the unchecked launches: every read and write is guarded by the shapes
        // passed with it, and the offsets and strides below stay within the buffers: the
        // contiguous qkv `[B, N, 3D]`, the weights `[B, heads, N, N]`, the output `[B, N, D]`.
        unsafe {
            // The scores q k^T / sqrt(hd): q is (token, depth) at `h hd + depth` of a token's
            // row, k^T (depth, token) at `D + h hd + depth`.
            batched_kernel::launch_unchecked(
                &client,
                cubes(n, n),
                dim,
                qkv.clone().into_buffer_arg(),
                qkv.clone().into_buffer_arg(),
                weights.clone().into_buffer_arg(),
                n,
                hd,
                n,
                heads,
                // q: (token, depth) at `h hd + depth` of the token's row.
                0,
                n * d3,
                hd,
                d3,
                1,
                // k^T: (depth, token) at `D + h hd + depth` of the token's row.
                d,
                n * d3,
                hd,
                1,
                d3,
                // The weights `[B, heads, N, N]`.
                heads * n * n,
                n * n,
                n,
                (hd as f32).powf(-0.5),
            );
            let rows = b * heads * n;
            let row_dim = CubeDim::new_1d(64);
            softmax_rows_kernel::launch_unchecked(
                &client,
                CubeCount::Static(rows.div_ceil(64) as u32, 1, 1),
                row_dim,
                weights.clone().into_buffer_arg(),
                rows,
                n,
            );
            // The weights times v, v (token, depth) at `2D + h hd + depth`, into the head's
            // columns of the output.
            batched_kernel::launch_unchecked(
                &client,
                cubes(n, hd),
                dim,
                weights.clone().into_buffer_arg(),
                qkv.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                n,
                n,
                hd,
                heads,
                // The weights.
                0,
                heads * n * n,
                n * n,
                n,
                1,
                // v: (token, depth) at `2D + h hd + depth` of the token's row.
                2 * d,
                n * d3,
                hd,
                d3,
                1,
                // The output `[B, N, D]`, head h in columns `h hd ..`.
                n * d,
                hd,
                d,
                1.0,
            );
        }
        (out, weights)
    }
}

/// One 32 x 32 block of one product `scale a b` of a batch per workgroup of 8 x 8 units,
/// in single values (any shapes and strides; the batch index is the workgroup's z), unit
/// `(tx, ty)` computing rows `4 ty ..` and columns `4 tx ..` of the block.
///
/// The sizes: `m`, `k`, `n` of each product, `inner` the batch's inner count (heads). The
/// operands: element `(row, col)` of product `(o, i)` of `a` at `a_offset + o a_outer +
/// i a_inner + row a_rows + col a_cols`, of `b` likewise, of `out` at `o o_outer + i o_inner
/// + row o_rows + col`.
#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked)]
fn batched_kernel(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    inner: usize,
    a_offset: usize,
    a_outer: usize,
    a_inner: usize,
    a_rows: usize,
    a_cols: usize,
    b_offset: usize,
    b_outer: usize,
    b_inner: usize,
    b_rows: usize,
    b_cols: usize,
    o_outer: usize,
    o_inner: usize,
    o_rows: usize,
    scale: f32,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let unit = ty * UNITS + tx;
    let z = CUBE_POS_Z as usize;
    let (zo, zi) = (z / inner, z % inner);
    let a_base = a_offset + zo * a_outer + zi * a_inner;
    let b_base = b_offset + zo * b_outer + zi * b_inner;
    let o_base = zo * o_outer + zi * o_inner;
    let row0 = CUBE_POS_Y as usize * BLOCK;
    let col0 = CUBE_POS_X as usize * BLOCK;
    // [32 rows][32 depths] of a, [32 depths][32 columns] of b.
    let mut a_tile = Shared::<[f32]>::new_slice(BLOCK * BLOCK);
    let mut b_tile = Shared::<[f32]>::new_slice(BLOCK * BLOCK);
    let mut acc = Array::<f32>::new(WIDTH * WIDTH);
    #[unroll]
    for i in 0..WIDTH * WIDTH {
        acc[i] = 0.0f32;
    }
    let steps = k.div_ceil(BLOCK);
    for step in 0..steps {
        let k0 = step * BLOCK;
        // 1024 values of each slice, 16 per unit.
        #[unroll]
        for i in 0..WIDTH * WIDTH {
            let slot = unit + i * UNITS * UNITS;
            let r = slot / BLOCK;
            let c = slot % BLOCK;
            let mut av = 0.0f32;
            if row0 + r < m && k0 + c < k {
                av = a[a_base + (row0 + r) * a_rows + (k0 + c) * a_cols];
            }
            a_tile[slot] = av;
            let mut bv = 0.0f32;
            if k0 + r < k && col0 + c < n {
                bv = b[b_base + (k0 + r) * b_rows + (col0 + c) * b_cols];
            }
            b_tile[slot] = bv;
        }
        sync_cube();
        for depth in 0..BLOCK {
            #[unroll]
            for r in 0..WIDTH {
                let av = a_tile[(ty * WIDTH + r) * BLOCK + depth];
                #[unroll]
                for c in 0..WIDTH {
                    acc[r * WIDTH + c] += av * b_tile[depth * BLOCK + tx * WIDTH + c];
                }
            }
        }
        sync_cube();
    }
    #[unroll]
    for r in 0..WIDTH {
        #[unroll]
        for c in 0..WIDTH {
            let row = row0 + ty * WIDTH + r;
            let col = col0 + tx * WIDTH + c;
            if row < m && col < n {
                out[o_base + row * o_rows + col] = acc[r * WIDTH + c] * scale;
            }
        }
    }
}

/// The softmax of each of `rows` rows of `len` values of `x`, in place, one unit per row.
#[cube(launch_unchecked)]
fn softmax_rows_kernel(x: &mut [f32], rows: usize, len: usize) {
    let row = ABSOLUTE_POS;
    if row >= rows {
        terminate!();
    }
    let base = row * len;
    let mut top = x[base];
    for i in 1..len {
        let v = x[base + i];
        if v > top {
            top = v;
        }
    }
    let mut sum = 0.0f32;
    for i in 0..len {
        let e = (x[base + i] - top).exp();
        x[base + i] = e;
        sum += e;
    }
    let inv = 1.0f32 / sum;
    for i in 0..len {
        x[base + i] *= inv;
    }
}

/// One 32 x 32 block of `out = x w + b` per workgroup of 8 x 8 units. `x` `[m, k4]`, `w`
/// `[4 k4, n4]`, `b` `[n4]`, `out` `[m, n4]`, each in vectors of four along its rows.
/// Unit `(tx, ty)` computes rows `4 ty .. 4 ty + 4` of the block in its column vector `tx`.
#[cube(launch_unchecked)]
fn linear_kernel<N: Size>(
    x: &[Vector<f32, N>],
    w: &[Vector<f32, N>],
    b: &[Vector<f32, N>],
    out: &mut [Vector<f32, N>],
    m: usize,
    k4: usize,
    n4: usize,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let unit = ty * UNITS + tx;
    let row0 = CUBE_POS_Y as usize * BLOCK;
    let col0 = CUBE_POS_X as usize * UNITS;
    let col = col0 + tx;
    // [32 rows][8 vectors along the depth] and [32 depths][8 vectors along the columns].
    let mut a_tile = Shared::<[Vector<f32, N>]>::new_slice(BLOCK * UNITS);
    let mut b_tile = Shared::<[Vector<f32, N>]>::new_slice(BLOCK * UNITS);
    let zero = Vector::<f32, N>::broadcast(0.0);
    let mut acc0 = zero;
    let mut acc1 = zero;
    let mut acc2 = zero;
    let mut acc3 = zero;

    let steps = k4.div_ceil(UNITS);
    for step in 0..steps {
        let k0 = step * UNITS;
        // 256 vectors of each slice, four per unit.
        #[unroll]
        for i in 0..WIDTH {
            let slot = unit + i * UNITS * UNITS;
            let r = slot / UNITS;
            let c = slot % UNITS;
            let row = row0 + r;
            let kv = k0 + c;
            let mut a = zero;
            if row < m && kv < k4 {
                a = x[row * k4 + kv];
            }
            a_tile[slot] = a;
            let depth = k0 * WIDTH + r;
            let wc = col0 + c;
            let mut bv = zero;
            if depth < k4 * WIDTH && wc < n4 {
                bv = w[depth * n4 + wc];
            }
            b_tile[slot] = bv;
        }
        sync_cube();
        #[unroll]
        for kv in 0..UNITS {
            let a0 = a_tile[(ty * WIDTH) * UNITS + kv];
            let a1 = a_tile[(ty * WIDTH + 1) * UNITS + kv];
            let a2 = a_tile[(ty * WIDTH + 2) * UNITS + kv];
            let a3 = a_tile[(ty * WIDTH + 3) * UNITS + kv];
            #[unroll]
            for j in 0..WIDTH {
                let bv = b_tile[(kv * WIDTH + j) * UNITS + tx];
                acc0 += Vector::broadcast(a0.extract(j)) * bv;
                acc1 += Vector::broadcast(a1.extract(j)) * bv;
                acc2 += Vector::broadcast(a2.extract(j)) * bv;
                acc3 += Vector::broadcast(a3.extract(j)) * bv;
            }
        }
        sync_cube();
    }

    if col < n4 {
        let bias = b[col];
        let row = row0 + ty * WIDTH;
        if row < m {
            out[row * n4 + col] = acc0 + bias;
        }
        if row + 1 < m {
            out[(row + 1) * n4 + col] = acc1 + bias;
        }
        if row + 2 < m {
            out[(row + 2) * n4 + col] = acc2 + bias;
        }
        if row + 3 < m {
            out[(row + 3) * n4 + col] = acc3 + bias;
        }
    }
}

/// Whether the linear layer on `x` `[.., K]` with `W` `[K, N]` and `b` `[N]` comes here:
/// f32 values on a cubecl device without subgroup operations (WebGPU in a browser), outside
/// an autodiff graph, `K` and `N` multiples of 4.
pub fn takes<const D: usize>(x: &Tensor<D>, w: &Tensor<2>, b: &Tensor<1>) -> bool {
    let device = x.device();
    if device.is_autodiff() || [x.dtype(), w.dtype(), b.dtype()] != [DType::F32; 3] {
        return false;
    }
    let [k, n] = w.dims();
    if k % WIDTH != 0 || n % WIDTH != 0 || x.dims()[D - 1] != k {
        return false;
    }
    lacks_subgroups(&device)
}

/// Whether `device` is a cubecl device without subgroup (plane) operations.
fn lacks_subgroups(device: &Device) -> bool {
    match device.as_dispatch() {
        DispatchDevice::Cube(cube) => !cube
            .client()
            .properties()
            .features
            .plane
            .contains(cubecl::ir::features::Plane::Ops),
        _ => false,
    }
}

/// `x W + b` by `linear_kernel`, whatever the device has ([`takes`] says where the
/// linear layers use it).
///
/// # Panics
/// When the tensors are not f32 tensors of a cubecl device outside an autodiff graph, or
/// `K` or `N` is not a multiple of 4.
pub fn linear<const D: usize>(x: Tensor<D>, w: Tensor<2>, b: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::tiled_linear(
        x.into_dispatch(),
        w.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// Whether the attention of `heads` heads from `qkv` `[B, N, 3D]` comes here: f32 values on
/// a cubecl device without subgroup operations, outside an autodiff graph ([`takes`]).
pub fn takes_attention(qkv: &Tensor<3>, heads: usize) -> bool {
    let device = qkv.device();
    let [_, _, d3] = qkv.dims();
    !device.is_autodiff()
        && qkv.dtype() == DType::F32
        && heads > 0
        && d3 % (3 * heads) == 0
        && lacks_subgroups(&device)
}

/// Multi-head self-attention of all `heads` heads from `qkv` `[B, N, 3D]` by
/// `batched_kernel` and `softmax_rows_kernel`: the heads side by side `[B, N, D]` and
/// the weights `[B, heads, N, N]`.
///
/// # Panics
/// When `qkv` is not an f32 tensor of a cubecl device outside an autodiff graph, or `3
/// heads` does not divide its width.
pub fn attention(qkv: Tensor<3>, heads: usize) -> (Tensor<3>, Tensor<4>) {
    let (out, weights) = Dispatch::tiled_attention(qkv.into_dispatch(), heads);
    (Tensor::from_dispatch(out), Tensor::from_dispatch(weights))
}
