//! A global allocator for the binaries whose memory the planner can bound.
//!
//! Under glibc's malloc, activations freed during a UNet step stay in the heap (its dynamic
//! mmap and trim thresholds keep blocks of up to 32 MiB for reuse), so the process held 80-130
//! MiB more than the values alive at any moment, an amount that depends on the order of
//! frees and could not be predicted from the graph. Making glibc return every large block
//! (fixed thresholds) costs 9-28% of a 64x64 UNet step in page faults, measured on this machine.
//!
//! [`CachingAlloc`] keeps glibc for small blocks and gives each block of at least [`BIG`] its
//! own mapping. A freed big block goes into a cache keyed by its exact length, up to a byte
//! limit the planner sets ([`set_cache_limit`]), and the next request of that length (every
//! UNet step asks for the same lengths in the same order) takes it back without faulting its
//! pages in again. Past the limit, the oldest cached blocks are unmapped. So the memory
//! beyond the live values is at most the limit, which the planner counts.
//!
//! Install it in a binary:
//! ```no_run
//! #[global_allocator]
//! static ALLOC: ldm_edge::alloc::CachingAlloc = ldm_edge::alloc::CachingAlloc;
//! ```
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks at least this big get their own mapping and may be cached.
pub const BIG: usize = 1 << 20;
/// The cache limit until the planner sets one.
pub const DEFAULT_CACHE_LIMIT: usize = 64 << 20;
const PAGE: usize = 4096;
/// Cached blocks at most: a UNet step uses a few dozen distinct big lengths.
const SLOTS: usize = 128;

static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_CACHE_LIMIT);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Freed big blocks, oldest first. A fixed array: the allocator must not allocate while it
/// holds the lock.
struct Cache {
    len: [usize; SLOTS],
    ptr: [usize; SLOTS],
    n: usize,
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    len: [0; SLOTS],
    ptr: [0; SLOTS],
    n: 0,
    bytes: 0,
});

impl Cache {
    /// A cached block for `len` bytes: one of exactly that length (the newest, the most likely
    /// to be in the CPU cache), else the smallest longer one, whose tail past `len` stays cached
    /// as a block of its own (a mapping can be unmapped piecewise). Also returns a tail too
    /// short to keep, for the caller to unmap.
    fn take(&mut self, len: usize) -> Option<(*mut u8, Option<(usize, usize)>)> {
        let i = (0..self.n)
            .rev()
            .find(|&i| self.len[i] == len)
            .or_else(|| {
                (0..self.n)
                    .filter(|&i| self.len[i] > len)
                    .min_by_key(|&i| self.len[i])
            })?;
        let (p, have) = (self.ptr[i], self.len[i]);
        self.remove(i);
        let tail = (p + len, have - len);
        let drop_tail = if tail.1 == 0 {
            None
        } else if tail.1 >= BIG && self.n < SLOTS {
            self.len[self.n] = tail.1;
            self.ptr[self.n] = tail.0;
            self.n += 1;
            self.bytes += tail.1;
            None
        } else {
            Some(tail)
        };
        Some((p as *mut u8, drop_tail))
    }

    fn remove(&mut self, i: usize) {
        self.bytes -= self.len[i];
        self.len.copy_within(i + 1..self.n, i);
        self.ptr.copy_within(i + 1..self.n, i);
        self.n -= 1;
    }

    /// Keeps `ptr` if it fits under `limit`, evicting the oldest blocks; returns what is to be
    /// unmapped (at most one block per call besides `ptr` itself: callers loop).
    fn put(&mut self, ptr: *mut u8, len: usize, limit: usize) -> Option<(usize, usize)> {
        if len > limit {
            return Some((ptr as usize, len));
        }
        if self.bytes + len > limit || self.n == SLOTS {
            let old = (self.ptr[0], self.len[0]);
            self.remove(0);
            // Not kept yet: the caller unmaps `old` and offers `ptr` again.
            return Some(old);
        }
        self.len[self.n] = len;
        self.ptr[self.n] = ptr as usize;
        self.n += 1;
        self.bytes += len;
        None
    }
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    // The cache is consistent between statements; a panic cannot leave it half-updated.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_big(layout: &Layout) -> bool {
    layout.size() >= BIG && layout.align() <= PAGE
}

fn mapped_len(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// # Safety
/// `len` is a multiple of the page size.
unsafe fn map(len: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

/// # Safety
/// `(ptr, len)` is a mapping made by [`map`] that nothing uses any more.
unsafe fn unmap(ptr: usize, len: usize) {
    // SAFETY: per the contract. A failure (it cannot fail for a whole mapping) leaks the block.
    unsafe {
        libc::munmap(ptr as *mut libc::c_void, len);
    }
}

/// See the module documentation.
pub struct CachingAlloc;

// SAFETY: small blocks are System's; a big block is a fresh or cached private mapping of at
// least `size` bytes, page-aligned (every alignment it is used for is at most a page), owned by
// the caller until it is passed back to `dealloc`, which unmaps or caches it under the lock.
unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_big(&layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        }
        INSTALLED.store(true, Ordering::Relaxed);
        let len = mapped_len(layout.size());
        let hit = lock().take(len);
        match hit {
            Some((p, tail)) => {
                // SAFETY: the tail is the unused end of a cached mapping, no longer cached.
                tail.map(|(t, l)| unsafe { unmap(t, l) });
                p
            }
            // SAFETY: len is page-rounded.
            None => unsafe { map(len) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_big(&layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc_zeroed(layout) };
        }
        INSTALLED.store(true, Ordering::Relaxed);
        let len = mapped_len(layout.size());
        let hit = lock().take(len);
        match hit {
            Some((p, tail)) => {
                // SAFETY: the tail is the unused end of a cached mapping, no longer cached; the
                // block is len >= size writable bytes, ours now.
                unsafe {
                    tail.map(|(t, l)| unmap(t, l));
                    std::ptr::write_bytes(p, 0, layout.size());
                }
                p
            }
            // SAFETY: len is page-rounded; a fresh anonymous mapping reads as zeros.
            None => unsafe { map(len) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !is_big(&layout) {
            // SAFETY: a small layout was allocated by System.
            return unsafe { System.dealloc(ptr, layout) };
        }
        let len = mapped_len(layout.size());
        let limit = LIMIT.load(Ordering::Relaxed);
        loop {
            let out = lock().put(ptr, len, limit);
            match out {
                None => return,
                Some((p, l)) => {
                    // SAFETY: `p` is either `ptr` (too big to cache) or an evicted cached block,
                    // both mappings of `l` bytes that nothing else holds.
                    unsafe { unmap(p, l) };
                    if p == ptr as usize {
                        return;
                    }
                }
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size > 0 and that it does not overflow isize when
        // rounded to the alignment, so the layout is valid.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_big(&layout) && !is_big(&new) {
            // SAFETY: both small: System's block, forwarded.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if is_big(&layout) && is_big(&new) && mapped_len(new_size) == mapped_len(layout.size()) {
            return ptr;
        }
        // SAFETY: a valid non-zero layout.
        let p = unsafe { self.alloc(new) };
        if !p.is_null() {
            // SAFETY: both blocks hold at least the smaller size and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        p
    }
}

/// Sets the most bytes of freed big blocks kept for reuse, and unmaps what is over it.
pub fn set_cache_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
    loop {
        let evicted = {
            let mut c = lock();
            if c.bytes <= bytes || c.n == 0 {
                return;
            }
            let old = (c.ptr[0], c.len[0]);
            c.remove(0);
            old
        };
        // SAFETY: a cached block, just removed from the cache: nothing holds it.
        unsafe { unmap(evicted.0, evicted.1) };
    }
}

/// The current cache limit.
pub fn cache_limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// Bytes of freed big blocks held for reuse now.
pub fn cached_bytes() -> usize {
    lock().bytes
}

/// Whether [`CachingAlloc`] is this process's global allocator (it has served a big block).
/// Probes with one big allocation the first time.
pub fn installed() -> bool {
    if !INSTALLED.load(Ordering::Relaxed) {
        drop(std::hint::black_box(Vec::<u8>::with_capacity(BIG)));
    }
    INSTALLED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The cache bookkeeping, on fake addresses (nothing is mapped or unmapped here).
    #[test]
    fn cache_takes_exact_lengths_and_evicts_oldest_past_the_limit() {
        let mut c = Cache {
            len: [0; SLOTS],
            ptr: [0; SLOTS],
            n: 0,
            bytes: 0,
        };
        let limit = 10 * PAGE;
        assert_eq!(c.put(0x1000 as *mut u8, 4 * PAGE, limit), None);
        assert_eq!(c.put(0x2000 as *mut u8, 4 * PAGE, limit), None);
        // 12 pages would exceed 10: the oldest goes first, then it fits.
        assert_eq!(
            c.put(0x3000 as *mut u8, 4 * PAGE, limit),
            Some((0x1000, 4 * PAGE))
        );
        assert_eq!(c.put(0x3000 as *mut u8, 4 * PAGE, limit), None);
        assert_eq!(c.bytes, 8 * PAGE);
        // Too big to ever cache: handed straight back.
        assert_eq!(
            c.put(0x4000 as *mut u8, 11 * PAGE, limit),
            Some((0x4000, 11 * PAGE))
        );
        // Exact lengths, newest first.
        assert_eq!(c.take(4 * PAGE), Some((0x3000 as *mut u8, None)));
        assert_eq!(c.take(4 * PAGE), Some((0x2000 as *mut u8, None)));
        assert_eq!((c.n, c.bytes), (0, 0));
        assert_eq!(c.take(PAGE), None);
    }

    #[test]
    fn a_longer_block_is_split() {
        let mut c = Cache {
            len: [0; SLOTS],
            ptr: [0; SLOTS],
            n: 0,
            bytes: 0,
        };
        let base = 1usize << 32;
        assert_eq!(c.put(base as *mut u8, 3 * BIG, usize::MAX), None);
        assert_eq!(c.put((base << 1) as *mut u8, 8 * BIG, usize::MAX), None);
        // The smallest longer block serves; its tail stays cached.
        assert_eq!(c.take(BIG), Some((base as *mut u8, None)));
        assert_eq!((c.n, c.bytes), (2, 10 * BIG));
        assert_eq!(c.take(2 * BIG), Some(((base + BIG) as *mut u8, None)));
        // A tail under BIG is handed back to be unmapped.
        assert_eq!(
            c.take(8 * BIG - PAGE),
            Some((
                (base << 1) as *mut u8,
                Some(((base << 1) + 8 * BIG - PAGE, PAGE))
            ))
        );
        assert_eq!((c.n, c.bytes), (0, 0));
    }

    #[test]
    fn a_full_cache_evicts_by_count_too() {
        let mut c = Cache {
            len: [0; SLOTS],
            ptr: [0; SLOTS],
            n: 0,
            bytes: 0,
        };
        for i in 0..SLOTS {
            assert_eq!(c.put((0x1000 * (i + 1)) as *mut u8, PAGE, usize::MAX), None);
        }
        assert_eq!(
            c.put(0xdead000 as *mut u8, PAGE, usize::MAX),
            Some((0x1000, PAGE))
        );
    }

    // The real allocator, used directly (the test binary keeps the system allocator).
    #[test]
    fn big_blocks_round_trip_and_are_reused() {
        let a = CachingAlloc;
        let layout = Layout::from_size_align(3 * BIG + 5, 64).unwrap();
        unsafe {
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert!(std::slice::from_raw_parts(p, layout.size())
                .iter()
                .all(|&b| b == 0));
            std::ptr::write_bytes(p, 7, layout.size());
            a.dealloc(p, layout);
            // Same length: the cached block comes back, zeroed when asked.
            let q = a.alloc_zeroed(layout);
            assert_eq!(p, q);
            assert!(std::slice::from_raw_parts(q, layout.size())
                .iter()
                .all(|&b| b == 0));
            // Growing keeps the contents.
            std::ptr::write_bytes(q, 9, layout.size());
            let r = a.realloc(q, layout, 5 * BIG);
            assert!(std::slice::from_raw_parts(r, layout.size())
                .iter()
                .all(|&b| b == 9));
            a.dealloc(r, Layout::from_size_align(5 * BIG, 64).unwrap());
            // Small blocks are the system's.
            let small = Layout::from_size_align(100, 8).unwrap();
            let s = a.alloc(small);
            assert!(!s.is_null());
            a.dealloc(s, small);
        }
    }
}
