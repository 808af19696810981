//! Cache hints for data another thread wrote: a page is scanned on a tokio
//! worker and projected on the stage's thread. Without a hint the first
//! read of each captured value waits for memory (measured: a quarter of the
//! projector's time). The sinks reading rows the stage wrote were measured
//! with hints too, and gained too little to keep them.

/// Asks the CPU to start loading the cache line `value` starts in; only a hint.
#[inline(always)]
pub fn line<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and never faults; the address is a
    // live reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(value).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
