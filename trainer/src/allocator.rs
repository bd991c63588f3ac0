//! The binary's memory allocator: the system's, with two changes that spare the CPU work
//! of handing memory back and forth with the kernel.
//!
//! 1. **Zeroed memory is zeroed by writing it** ([`ZeroedByWriting`]), never handed out as
//!    fresh pages that the kernel has not mapped yet. Burn's CPU backend creates every
//!    fresh tensor (each matrix product's output, each zero-filled gradient) as a zeroed
//!    `Vec<u8>` and then copies it into a 16-byte-aligned buffer. `calloc` returns freshly
//!    mapped memory untouched, so the copy's reads map the kernel's shared zero page into
//!    it; once that memory is freed and reused, the first write to each page is a
//!    copy-on-write fault whose TLB flush interrupts the other core. In the MSN training
//!    step those faults and interrupts took about 10 % of the time. Writing the zeros up
//!    front maps real pages once: over a `bench step` run the system time fell by three
//!    quarters (2.3-3.0 s to 0.6-0.8 s for 17 steps) and the CPU time by about 7 %.
//! 2. **Freed blocks stay with the process** ([`keep_freed_blocks`], glibc only). glibc
//!    serves every block above a threshold (128 KiB at first, raised as such blocks are
//!    freed) with its own `mmap` and returns it with `munmap` when freed, and gives the
//!    top of its heap back once 128 KiB of it are free; the next block of that size then
//!    costs a page fault and a page-clearing per 4 KiB. The loader allocates such blocks
//!    for every image (a decoded radiograph is 1-2.5 MB), the training step for many of
//!    its tensors. Serving blocks up to 32 MiB from the heap and keeping up to 512 MiB of
//!    free heap makes them reusable (the price: up to that much free memory stays with
//!    the process): the loader on one thread went from 0.111-0.121 to 0.095-0.096 s per
//!    epoch of the 16 sample radiographs, one image's inference by 9 % (BENCHMARKS.md).
//!
//! One of the project's three modules with `unsafe` code (the others: this binary's
//! `quiet_vulkan.rs`, which sets an environment variable, and the model crate's
//! `gemm_call.rs`): `GlobalAlloc` is an unsafe trait, and each method forwards to
//! [`System`] under the caller's guarantees; `mallopt` is a C function.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// [`System`] with `alloc_zeroed` as `alloc` followed by writing zeros.
#[derive(Debug)]
pub struct ZeroedByWriting;

// SAFETY: every method forwards to `System` with the same arguments, so the caller's
// guarantees (a non-zero-size layout; a pointer from this allocator with its layout) are
// `System`'s; `alloc_zeroed` writes `layout.size()` bytes into a block it just allocated
// with that layout.
unsafe impl GlobalAlloc for ZeroedByWriting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            unsafe { std::ptr::write_bytes(block, 0, layout.size()) };
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(block, layout, new_size) }
    }
}

/// The largest block served from glibc's heap instead of a mapping of its own: the most
/// glibc's own threshold would rise to (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit systems),
/// above every image and every tensor of the training step (the largest, the attention
/// weights of batch 8, is 7.5 MB); rarer, larger blocks keep their own mappings.
pub const LARGEST_HEAP_BLOCK: usize = 32 << 20;

/// How much free memory at the top of glibc's heap it keeps instead of returning it.
pub const KEPT_FREE_MEMORY: usize = 512 << 20;

/// Tells glibc's allocator to serve blocks up to [`LARGEST_HEAP_BLOCK`] from its heap and
/// to keep up to [`KEPT_FREE_MEMORY`] of free heap (module docs). Returns whether glibc
/// took both settings; elsewhere (another C library, another system) it does nothing and
/// returns `false`.
pub fn keep_freed_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |param: libc::c_int, value: usize| {
            let value = libc::c_int::try_from(value).expect("the settings fit a C int");
            // SAFETY: `mallopt` only changes glibc's allocator settings; it takes any
            // parameter and value and returns 0 for those it refuses.
            unsafe { libc::mallopt(param, value) == 1 }
        };
        set(libc::M_MMAP_THRESHOLD, LARGEST_HEAP_BLOCK)
            & set(libc::M_TRIM_THRESHOLD, KEPT_FREE_MEMORY)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Held by each test here: one's large blocks would show in the other's statistics.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    /// Bytes in blocks that glibc serves by mappings of their own.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn mapped_bytes() -> usize {
        // SAFETY: `mallinfo2` only reads the allocator's statistics.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn large_blocks_come_from_the_heap_after_the_settings() {
        // glibc's own threshold starts at 128 KiB and only rises as mapped blocks are
        // freed, so without the settings an 8 MiB block gets a mapping of its own.
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        assert!(keep_freed_blocks(), "glibc refused a setting");
        let size = 8 << 20;
        for _ in 0..3 {
            let before = mapped_bytes();
            let block = vec![1u8; size];
            assert!(
                mapped_bytes() < before + size,
                "an {size}-byte block was mapped on its own"
            );
            assert_eq!(block[size - 1], 1);
        }
        // Blocks of the largest size are served as usual.
        let block = vec![1u8; LARGEST_HEAP_BLOCK];
        assert_eq!(block[LARGEST_HEAP_BLOCK - 1], 1);
    }

    #[test]
    fn zeroed_memory_is_zero_even_where_a_freed_block_was_dirty() {
        // Freed blocks come back from `malloc` as they were left; `alloc_zeroed` must
        // clear them.
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        for size in [64, 4096, 1 << 20, 40 << 20] {
            for _ in 0..4 {
                drop(vec![0xABu8; size]);
                let zeros = vec![0u8; size];
                assert!(zeros.iter().all(|&b| b == 0), "{size} bytes not zeroed");
            }
        }
    }
}
