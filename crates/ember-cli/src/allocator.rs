//! The memory allocator's settings for training.
//!
//! glibc's malloc returns large freed blocks to the kernel straight away (they are
//! `mmap`ed above a threshold that grows with use, and the heap's top is trimmed), so a
//! training step that frees its activations and allocates them again every step, or
//! every block when blocks are recomputed in the backward pass, pays for fresh pages
//! from the kernel each time (page faults and zeroing). Training keeps freed memory
//! for reuse instead. The peak memory does not change; memory is not handed back until
//! the process ends, which a training run does not need.

/// Keeps freed memory in the process for reuse (glibc: blocks up to 32 MiB come from the
/// heap, which is trimmed only past 1 GiB free). Elsewhere, nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters; both values are in range
    // (32 MiB is glibc's largest mmap threshold on 64-bit targets).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
