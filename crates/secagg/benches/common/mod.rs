//! Timing shared by the hand-rolled benches (`mask`, `agreement`).

use std::time::Instant;

/// The median wall time in seconds of `repeats` calls of `f`, after `warmup` calls.
pub fn median_seconds(warmup: usize, repeats: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
