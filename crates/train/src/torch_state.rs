//! libtorch's process-wide state, shared by every trainer of a process.
//!
//! Two pieces of libtorch state are one per process, not one per model: the default
//! random generator, and the intra-op thread count. Simulated sites and tests run
//! trainers in threads of one process, so both are guarded here:
//!
//! - [`torch_rng`]: seeding the generator and drawing from it (a new model's initial weights)
//!   happen under one lock, so each trainer draws exactly what its seed names.
//! - [`ThreadLease`]: CPU kernels split reductions by the thread count, so the same
//!   training with 1 and with 2 threads differs in the last bits. A lease fixes the
//!   count for as long as it is held; trainers asking for the same count run at once,
//!   and one asking for another count waits until the others are done. Without it a
//!   trainer started elsewhere in the process could change the count a training run
//!   uses (a test trains beside another thread count and compares bits).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

static RNG: Mutex<()> = Mutex::new(());

/// The generator lock; it guards no data, so a panic elsewhere cannot leave it invalid.
pub(crate) fn torch_rng() -> MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The thread count in force and how many leases hold it.
struct Threads {
    count: i32,
    holders: usize,
}

static THREADS: Mutex<Threads> = Mutex::new(Threads {
    count: 0,
    holders: 0,
});
static THREADS_FREED: Condvar = Condvar::new();

/// libtorch's intra-op thread count, fixed while this lives.
pub(crate) struct ThreadLease(());

impl ThreadLease {
    /// Waits until no lease holds another count, then sets `count` and holds it.
    pub(crate) fn acquire(count: i32) -> Self {
        let mut state = THREADS.lock().unwrap_or_else(PoisonError::into_inner);
        while state.holders > 0 && state.count != count {
            state = THREADS_FREED
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // libtorch keeps the count per thread (OpenMP's) and copies the process-wide
        // value into a thread on its first parallel kernel, which would overwrite a count
        // set before. So: first that copy (`get_num_threads` makes it), then the count,
        // in every thread that takes a lease, even when the value looks unchanged.
        let _ = tch::get_num_threads();
        tch::set_num_threads(count);
        state.count = count;
        state.holders += 1;
        ThreadLease(())
    }
}

impl Drop for ThreadLease {
    fn drop(&mut self) {
        let mut state = THREADS.lock().unwrap_or_else(PoisonError::into_inner);
        state.holders -= 1;
        if state.holders == 0 {
            THREADS_FREED.notify_all();
        }
    }
}
