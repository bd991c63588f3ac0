//! Matrix products written straight into the buffer of a new CPU tensor, for the linear
//! layers and the attention in CPU inference (`crate::flex_forward`) and as graph
//! operations (`crate::graph_kernels`). Built with the `cpu-kernels` feature.
//!
//! Burn's CPU backend gives every matrix product's output a fresh tensor made by
//! `FlexTensor::empty`: a zeroed byte vector, then copied into a 16-byte-aligned buffer
//! (a byte vector's declared alignment is 1), so each output is zeroed and copied before
//! the product overwrites it. Profiled on the MSN training step, that took 15 % of the
//! time (BENCHMARKS.md). Here the output is a vector of `u128` (16-byte aligned, which
//! Burn's byte buffers take as they are), left uninitialised until the product writes every
//! element, or filled with the bias that the product is then added to ([`product`]); the
//! attention's products go into parts of such buffers, zeroed once ([`zeros`],
//! [`product_into`]).
//!
//! The products are `gemm`'s (as Burn's are), whose entry point is `unsafe`: it takes raw
//! pointers with strides. [`product`] and [`product_into`] check every bound it relies on
//! first. This and gpu_kernels.rs's launch are the model crate's `unsafe` code.

#![allow(unsafe_code)]

use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{Bytes, DType, Shape};

/// A matrix of `rows x cols` f32 values in `data`: element `(i, j)` at
/// `i * row_stride + j * col_stride`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatrixRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatrixRef<'a> {
    /// `data` as a row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatrixRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose: the same values, rows and columns swapped.
    pub fn t(self) -> Self {
        MatrixRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Whether every element the strides address lies in `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(a, b)| a.checked_add(b));
        last.is_some_and(|last| last < self.data.len())
            && isize::try_from(self.row_stride.max(self.col_stride)).is_ok()
    }
}

/// `a b` (`+ bias` on every row), a new row-major f32 tensor of `shape`, whose element
/// count must be `a.rows * b.cols`; `bias` has `b.cols` values.
///
/// # Panics
/// When the shapes disagree or a matrix's strides address elements outside its data.
pub(crate) fn product(
    a: MatrixRef<'_>,
    b: MatrixRef<'_>,
    bias: Option<&[f32]>,
    shape: Shape,
) -> FlexTensor {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "a product of {m}x{k} and {}x{n}", b.rows);
    assert_eq!(
        shape.num_elements(),
        m * n,
        "{shape:?} for a {m}x{n} product"
    );
    assert!(
        a.in_bounds() && b.in_bounds(),
        "a matrix's strides leave its data"
    );
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "one bias per column");
    }
    let len = m * n;
    if !len.is_multiple_of(4) || len == 0 {
        // Not a whole number of u128: Burn's own path (zeroed, then copied once).
        let mut out = vec![0.0f32; len];
        if let Some(bias) = bias {
            for row in out.chunks_exact_mut(n) {
                row.copy_from_slice(bias);
            }
        }
        // SAFETY: `out` holds the `m * n` initialised values `run` writes (and reads with a
        // bias); `a` and `b` are in bounds (checked above).
        unsafe { run(out.as_mut_ptr(), n, a, b, bias.is_some()) };
        return FlexTensor::from_data(burn::tensor::TensorData::new(out, shape));
    }
    let mut blocks: Vec<u128> = Vec::with_capacity(len / 4);
    let out: &mut [std::mem::MaybeUninit<u128>] = &mut blocks.spare_capacity_mut()[..len / 4];
    let out = out.as_mut_ptr().cast::<f32>();
    if let Some(bias) = bias {
        for i in 0..m {
            // SAFETY: row `i` of the `m x n` output lies within the `len / 4` blocks of
            // capacity; a `u128` holds four f32.
            let row = unsafe { out.add(i * n) };
            unsafe { std::ptr::copy_nonoverlapping(bias.as_ptr(), row, n) };
        }
    }
    // SAFETY: `out` addresses `m * n` f32 of capacity, initialised when there is a bias
    // (which gemm then reads), else only written; `a` and `b` are in bounds (checked
    // above). gemm writes all `m * n` of them, so the blocks are initialised after it.
    unsafe {
        run(out, n, a, b, bias.is_some());
        blocks.set_len(len / 4);
    }
    FlexTensor::new(
        Bytes::from_elems(blocks),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// `a b` written into `dst` as a matrix of `a.rows x b.cols` at row stride `dst_row_stride`
/// (column stride 1), overwriting what was there; the attention's products, into buffers
/// of [`zeros`].
///
/// # Panics
/// When the shapes disagree, the rows would overlap, or a matrix (`dst` included) leaves
/// its data.
pub(crate) fn product_into(
    dst: &mut [f32],
    dst_row_stride: usize,
    a: MatrixRef<'_>,
    b: MatrixRef<'_>,
) {
    let (m, n) = (a.rows, b.cols);
    assert_eq!(
        b.rows, a.cols,
        "a product of {m}x{} and {}x{n}",
        a.cols, b.rows
    );
    assert!(
        a.in_bounds() && b.in_bounds(),
        "a matrix's strides leave its data"
    );
    assert!(
        dst_row_stride >= n,
        "rows of {n} at a stride of {dst_row_stride} overlap"
    );
    if m == 0 || n == 0 {
        return;
    }
    let target = MatrixRef {
        data: dst,
        rows: m,
        cols: n,
        row_stride: dst_row_stride,
        col_stride: 1,
    };
    assert!(target.in_bounds(), "the product leaves its destination");
    // SAFETY: `dst` holds the `m x n` matrix at row stride `dst_row_stride` (checked), all
    // initialised; `a` and `b` are in bounds (checked).
    unsafe { run(dst.as_mut_ptr(), dst_row_stride, a, b, false) };
}

/// A new f32 tensor of `shape`, zeros, in a buffer that Burn takes without copying.
pub(crate) fn zeros(shape: Shape) -> FlexTensor {
    let len = shape.num_elements();
    if !len.is_multiple_of(4) {
        return FlexTensor::from_data(burn::tensor::TensorData::new(vec![0.0f32; len], shape));
    }
    FlexTensor::new(
        Bytes::from_elems(vec![0u128; len / 4]),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// `out = a b`, or `out += a b` with `accumulate`, `out` `a.rows x b.cols` at row stride
/// `out_row_stride` (column stride 1), on the calling thread (callers already spread their
/// work over the cores). gemm writes every element of `out`, and reads them only with
/// `accumulate`.
///
/// # Safety
/// `a` and `b` are in bounds, and `out` addresses the `a.rows x b.cols` writable f32 at
/// that row stride, initialised with `accumulate`; [`product`] and [`product_into`] check
/// and provide both.
unsafe fn run(
    out: *mut f32,
    out_row_stride: usize,
    a: MatrixRef<'_>,
    b: MatrixRef<'_>,
    accumulate: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    debug_assert!(a.in_bounds() && b.in_bounds());
    let s = |x: usize| x as isize;
    // SAFETY: gemm reads `a` and `b` at the strides given, within their data (checked),
    // and writes (and with `accumulate` reads) `out` at column stride 1, row stride
    // `out_row_stride`, within what the caller provides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            s(out_row_stride),
            accumulate,
            a.data.as_ptr(),
            s(a.col_stride),
            s(a.row_stride),
            b.data.as_ptr(),
            s(b.col_stride),
            s(b.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
