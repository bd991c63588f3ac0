//! The widest vector instructions the CPU has, chosen at run time, for loops the compiler
//! vectorises.
//!
//! The release build targets baseline x86-64 (SSE2, 4 floats per instruction), so that the
//! binary runs on every x86-64 machine. [`widest`] compiles its argument's work a second
//! time for AVX2 + FMA (8 floats), and with the `x86-v4` feature a third time for AVX-512
//! (16 floats), and runs the copy the CPU supports. `pulp` (which Burn's matrix products
//! already use for the same purpose) checks the CPU and holds the `unsafe` of calling code
//! built for features the baseline lacks; this crate has none. Elsewhere (WebAssembly with
//! SIMD, ARM with NEON) the work runs as compiled.

#[cfg(all(target_arch = "x86_64", feature = "x86-v4"))]
pulp::simd_type! {
    /// AVX-512 (foundation, which implies AVX2 and FMA): 16 floats per instruction.
    struct Avx512 {
        avx512f: "avx512f",
    }
}

#[cfg(target_arch = "x86_64")]
pulp::simd_type! {
    /// AVX2 (which implies AVX and SSE4.2) with FMA: 8 floats per instruction.
    struct Avx2 {
        avx2: "avx2",
        fma: "fma",
    }
}

/// `f.call()`, compiled for the widest vector unit this CPU has. `f` is a small struct
/// whose `call` is `#[inline(always)]`, as are the functions its loops call, so that all of
/// it is compiled into each copy (LLVM may keep a large closure out of line, and then at the
/// baseline width).
#[inline(always)]
pub(crate) fn widest<F: pulp::NullaryFnOnce>(f: F) -> F::Output {
    #[cfg(target_arch = "x86_64")]
    {
        #[cfg(feature = "x86-v4")]
        if let Some(simd) = Avx512::try_new() {
            return simd.vectorize(f);
        }
        if let Some(simd) = Avx2::try_new() {
            return simd.vectorize(f);
        }
    }
    f.call()
}

/// `f.call()` at every width this CPU has, the baseline first: what tests compare. On a
/// CPU with AVX2 and FMA there are at least two, so such a test compares something.
#[cfg(test)]
pub(crate) fn at_every_width<F: pulp::NullaryFnOnce + Clone>(f: F) -> Vec<F::Output> {
    #[allow(unused_mut)] // only the baseline off x86-64
    let mut outs = vec![f.clone().call()];
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        assert_eq!(
            Avx2::try_new().is_some(),
            avx2,
            "the AVX2 copy runs where it can"
        );
        if let Some(simd) = Avx2::try_new() {
            outs.push(simd.vectorize(f.clone()));
        }
        #[cfg(feature = "x86-v4")]
        if let Some(simd) = Avx512::try_new() {
            outs.push(simd.vectorize(f));
        }
    }
    outs
}
