//! Gives freed heap memory back to the system. glibc's allocator keeps what a burst of work
//! freed (a relist's pages, a wave of API responses) in its arenas, so a long-running
//! process's resident memory shows its busiest moment rather than what it holds. The
//! operator and the gateway trim their heap on a timer. Built against musl (the static image)
//! this does nothing; how musl's allocator behaves here was not measured.

use std::time::Duration;

/// How often the heap is trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims the heap every `every`, forever.
pub async fn trim_forever(every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        trim();
    }
}

/// Returns the free memory of every malloc arena to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
