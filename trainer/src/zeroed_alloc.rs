//! The binary's global allocator: the system's, except that zeroed memory is zeroed by
//! writing it, never handed out as fresh pages that the kernel has not mapped yet.
//!
//! Why (BENCHMARKS.md): Burn's CPU backend creates every fresh tensor (each matrix
//! product's output, each zero-filled gradient) as a zeroed `Vec<u8>` and then copies it
//! into a 16-byte-aligned buffer. `calloc` returns freshly mapped memory untouched, so the
//! copy's reads map the kernel's shared zero page into it; once that memory is freed and
//! reused, the first write to each page is a copy-on-write fault whose TLB flush
//! interrupts the other core. In the MSN training step those faults and interrupts took
//! about 10 % of the time. Writing the zeros up front maps real pages once: over a
//! `bench step` run the system time fell by three quarters (2.3-3.0 s to 0.6-0.8 s for 17
//! steps) and the CPU time by about 7 %.
//!
//! This is the project's one `unsafe` code outside its dependencies: `GlobalAlloc` is an
//! unsafe trait, and each method forwards to [`System`] under the caller's guarantees.

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

#[cfg(test)]
mod tests {
    #[test]
    fn zeroed_memory_is_zero_even_where_a_freed_block_was_dirty() {
        // Freed blocks come back from `malloc` as they were left; `alloc_zeroed` must
        // clear them.
        for size in [64, 4096, 1 << 20, 40 << 20] {
            for _ in 0..4 {
                drop(vec![0xABu8; size]);
                let zeros = vec![0u8; size];
                assert!(zeros.iter().all(|&b| b == 0), "{size} bytes not zeroed");
            }
        }
    }
}
