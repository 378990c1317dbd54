//! Giving freed heap back to the system. glibc's malloc returns memory to the kernel only from
//! the top of each arena; pages freed in the middle of an arena (a large batch's buffers, a
//! status call's JSON tree, a reconnect's backlog burst) stay resident, so a daemon whose load
//! comes in waves keeps each wave's high-water mark as a step that never goes away. Every
//! `TRIM_EVERY` the daemon asks malloc to hand whole free pages back (`malloc_trim(0)`, which
//! `madvise`s them away in every arena). Elsewhere than glibc (musl) this is a no-op.

use std::time::{Duration, Instant};

use tracing::debug;

/// How often freed heap is given back: short enough that a transient spike does not linger in
/// the RSS a fleet dashboard shows, long enough that pages re-faulted after a trim cost nothing
/// measurable (a trim takes well under a millisecond on a heap of a few MB).
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Hand whole free pages of every malloc arena back to the kernel. Returns whether any memory
/// was released.
pub fn give_back() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas under their locks; a pad of 0 keeps
        // nothing extra at the top. It has no preconditions on the caller.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Resident set size of this process in KiB (0 when /proc cannot be read).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Give freed heap back on the blocking pool, without waiting: after a transient spike such as
/// a status answer (a JSON tree of every child's latest values).
pub fn give_back_soon() {
    drop(tokio::task::spawn_blocking(give_back));
}

/// Give freed heap back now (what starting up parsed and built is gone by the time this is
/// spawned) and then every `every`, for as long as the daemon runs. Each trim runs on the
/// blocking pool, so the arenas' locks it takes never stall a worker's other tasks.
pub async fn keep_trimmed(every: Duration) {
    loop {
        let trim = tokio::task::spawn_blocking(|| {
            let before = rss_kib();
            let t = Instant::now();
            let released = give_back();
            (before, rss_kib(), released, t.elapsed())
        });
        if let Ok((before, after, released, took)) = trim.await {
            debug!(
                rss_kib_before = before,
                rss_kib_after = after,
                released,
                took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                "freed heap given back"
            );
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory freed in the middle of the heap stays resident until it is given back: 16 MiB in
    /// 16 KiB blocks (below malloc's mmap threshold, so they come from an arena), each followed
    /// by a small block that stays, so that freed blocks can neither merge nor shrink the arena
    /// from its top; then the big blocks are freed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_pages_in_the_middle_of_the_heap_are_given_back() {
        const BLOCK: usize = 16 * 1024;
        const BLOCKS: usize = 1024;
        let (mut blocks, keepers): (Vec<Vec<u8>>, Vec<Box<[u8; 64]>>) = (0..BLOCKS)
            .map(|i| (vec![i as u8 | 1; BLOCK], Box::new([7u8; 64])))
            .unzip();
        let touched = rss_kib();
        blocks.clear();
        let freed = rss_kib();
        assert!(give_back(), "malloc_trim released nothing");
        let given = rss_kib();
        // Without the trim the freed blocks stay resident (freed ≈ touched); with it, their
        // whole pages (12 of every 16 KiB) leave. Other tests running beside this one allocate
        // too, hence the margin.
        assert!(
            freed.saturating_sub(given) >= 6 * 1024,
            "RSS {touched} KiB with the blocks, {freed} KiB after free, {given} KiB after trim"
        );
        assert!(keepers.iter().all(|k| k[0] == 7));
    }
}
