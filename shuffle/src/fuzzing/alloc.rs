//! A global allocator that counts live bytes per thread, to assert bounded allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Live bytes allocated by this thread (may go negative when memory moves threads).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// Highest `LIVE` since the last reset.
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// Whether this thread allocated through [`CountingAlloc`].
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// The system allocator, counting live bytes per thread. Install it with
/// `#[global_allocator] static ALLOC: CountingAlloc = CountingAlloc;`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAlloc;

fn record(delta: isize) {
    // `try_with`: never panics, even while thread-locals are being torn down. The cells are
    // `const`-initialised and have no destructor, so touching them does not allocate.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
    let _ = ACTIVE.try_with(|a| a.set(true));
}

fn signed(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is `System`'s; the bookkeeping only touches thread-local counters.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; `layout` meets `alloc`'s contract (the caller's duty).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            record(signed(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            record(signed(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (every allocation goes through it) with
        // `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        record(-signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc` for `ptr`/`layout`; `new_size` is the caller's, unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            record(signed(new_size) - signed(layout.size()));
        }
        p
    }
}

/// Whether this thread's allocations go through [`CountingAlloc`] (it is the global
/// allocator). Allocates a little to find out.
pub fn counting_is_active() -> bool {
    let probe = std::hint::black_box(vec![0u8; 64]);
    drop(probe);
    ACTIVE.try_with(Cell::get).unwrap_or(false)
}

/// Runs `f` and returns its result with the peak of live bytes this thread allocated while
/// it ran, above what was live before (0 when [`CountingAlloc`] is not installed).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.try_with(Cell::get).unwrap_or(0);
    let outer_peak = PEAK.try_with(Cell::get).unwrap_or(0);
    let _ = PEAK.try_with(|p| p.set(base));
    let result = f();
    let peak = PEAK.try_with(Cell::get).unwrap_or(base);
    let _ = PEAK.try_with(|p| p.set(outer_peak.max(peak)));
    (result, usize::try_from(peak - base).unwrap_or(0))
}
