//! libtorch's thread count is process-wide state, and CPU reductions depend on it: a
//! training run must keep the count it asked for while trainers with another count
//! train in other threads of the process. Its own test binary, so that no other test
//! changes the count while the reference runs are made.

use std::sync::atomic::{AtomicBool, Ordering};
use tessera_core::LocalTrainer;
use tessera_train::DetectorTrainer;

mod common;
use common::*;

/// Each run on a fresh thread, as simulated sites and test harnesses run them: a new
/// thread takes libtorch's process-wide count on its first kernel. Without the trainer's
/// thread lease the 1-thread trainer beside it resets that count between the run's
/// own setting and its kernels, and runs differ from the reference (seen in CI, and
/// here in about half of the binary's runs with the lease removed).
#[test]
fn a_run_keeps_its_thread_count_while_other_counts_train_beside_it() {
    let on_new_thread =
        |threads| std::thread::scope(|s| s.spawn(|| deterministic_run(threads)).join().unwrap());
    let alone = on_new_thread(2);
    // The check means something only where the count changes the bits.
    assert!(
        !same_bits(&alone, &on_new_thread(1)),
        "1 and 2 threads give the same bits on this machine; this test could not fail"
    );
    let done = AtomicBool::new(false);
    let (runs, others) = std::thread::scope(|s| {
        let others = s.spawn(|| {
            let mut count = 0;
            while !done.load(Ordering::Relaxed) {
                let mut t =
                    DetectorTrainer::native(&tiny(), examples(2), no_augmentation(), 3).unwrap();
                t.train(&t.parameters(), &round(1, 1)).unwrap();
                count += 1;
            }
            count
        });
        let runs: Vec<Vec<f32>> = (0..8).map(|_| on_new_thread(2)).collect();
        done.store(true, Ordering::Relaxed);
        (runs, others.join().unwrap())
    });
    assert!(others > 0, "nothing trained beside the runs");
    let differ: Vec<usize> = (0..runs.len())
        .filter(|&i| !same_bits(&runs[i], &alone))
        .collect();
    assert!(
        differ.is_empty(),
        "runs {differ:?} of 8 beside 1-thread training differ from the run alone"
    );
}
