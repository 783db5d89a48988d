//! Times KL shaping on 512 x 2048 float32 per estimator:
//! `cargo run --release -p rlhf_fast_kernels --example kl_timing [threads]`.

use std::time::Instant;

use rlhf_fast_kernels::kl::{kl_shaped_rewards, Estimator, KlInputs, KlParams};
use rlhf_fast_kernels::Rows;

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    rlhf_fast_kernels::parallel::set_num_threads(threads);
    let (rows, cols) = (512usize, 2048usize);
    let n = rows * cols;
    let lp: Vec<f32> = (0..n).map(|i| -((i % 97) as f32) * 0.01).collect();
    let rp: Vec<f32> = (0..n).map(|i| -((i % 89) as f32) * 0.01).collect();
    let m: Vec<u8> = (0..n).map(|i| u8::from(i % cols < 1500)).collect();
    let scores = vec![1.0f32; rows];
    let (mut r, mut k) = (vec![0.0f32; n], vec![0.0f32; n]);
    let only = std::env::args().nth(2);
    for est in [Estimator::K1, Estimator::K3] {
        if only.as_deref().is_some_and(|o| o != format!("{est:?}")) {
            continue;
        }
        let inp = KlInputs { logprobs: &lp, ref_logprobs: &rp, mask: Some(&m), scores: &scores, rows: Rows::Padded { rows, cols } };
        let p = KlParams { kl_coef: 0.1, estimator: est, clamp: None, check_finite: true };
        let mut times = Vec::new();
        for _ in 0..reps() {
            let t = Instant::now();
            kl_shaped_rewards(&inp, &p, &mut r, &mut k).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!("{est:?} threads={threads} median {:.3} ms  min {:.3} ms", times[times.len() / 2], times[0]);
    }
}

fn reps() -> usize {
    std::env::var("REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(50)
}
