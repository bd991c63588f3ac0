//! The linear layers' matrix product on a GPU without subgroup operations (`gpu-kernels`
//! feature; the page turns it on for WebGPU).
//!
//! In a browser WebGPU offers no subgroups to wgpu, so Burn's matrix products fall back to
//! cubek-matmul's unit-level routine, whatever its tiling. Profiled kernel by kernel on
//! Chromium's WebGPU (`tests/browser/gpu-profile.mjs`, BENCHMARKS.md), those products were
//! 95 % of the encoder's time and 1.8 times as slow per product as ONNX Runtime Web's. The
//! kernel here is the classic shared-memory tiling that ONNX Runtime Web and most WebGPU
//! code use: a workgroup of 8 x 8 units computes a 32 x 32 block of the output, stepping
//! along the inner dimension 32 at a time; each step the units load the two 32 x 32 slices
//! into shared memory, four vectors of four per unit, then each unit accumulates its four
//! rows of four columns from them. The bias is added as the block is written.
//!
//! Only inference outside an autodiff graph comes here ([`takes`]); every other device and
//! graph keeps Burn's products.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, Shape, Tensor};
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

/// The linear layer as a Burn backend extension: the cubecl backend runs [`linear_kernel`];
/// with Burn's `fusion` the call joins the lazy stream as an operation of its own.
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

/// `x W + b` by [`linear_kernel`], whatever the device has ([`takes`] says where the
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
