//! A process-wide allocator setting for programs that run forward passes in a loop.

/// Keeps freed memory in the process for reuse: with glibc, large blocks stop being separate
/// mappings and the heap is never trimmed, so the activations a forward pass allocates and
/// frees (tens of MiB at batch 8) are reused by the next pass instead of being mapped, faulted
/// in page by page and unmapped again each time. The peak resident size is unchanged; it is
/// simply not given back. Returns whether the setting applied (`false` on other C libraries).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // glibc's `malloc.h`.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        // SAFETY: `mallopt` only changes allocator tunables (under glibc's arena locks) and
        // takes plain integers; blocks already mapped stay valid and are freed as before.
        unsafe { mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
