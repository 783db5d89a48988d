//! Times the GAE kernel on a 512 x 2048 float32 batch with right-padded ragged rows:
//! `cargo run --release -p rlhf_fast_kernels --example gae_timing [threads]`.

use std::time::Instant;

use rlhf_fast_kernels::gae::{gae, GaeInputs, GaeParams};
use rlhf_fast_kernels::Rows;

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    rlhf_fast_kernels::parallel::set_num_threads(threads);
    let (rows, cols) = (512usize, 2048usize);
    let n = rows * cols;
    let mut seed = 1u64;
    let mut next = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    let r: Vec<f32> = (0..n).map(|_| next()).collect();
    let v: Vec<f32> = (0..n).map(|_| next()).collect();
    let lens: Vec<usize> = (0..rows).map(|_| 1 + (next() * (cols - 1) as f32) as usize).collect();
    let m: Vec<u8> = (0..n).map(|i| u8::from(i % cols < lens[i / cols])).collect();
    let (mut a, mut ret) = (vec![0.0f32; n], vec![0.0f32; n]);
    for (label, mask) in [("masked", Some(&m[..])), ("no mask", None)] {
        let inp = GaeInputs { rewards: &r, values: &v, mask, dones: None, bootstrap_values: None, rows: Rows::Padded { rows, cols } };
        let p = GaeParams { gamma: 1.0, lam: 0.95, check_finite: true };
        let mut times = Vec::new();
        for _ in 0..reps() {
            let t = Instant::now();
            gae(&inp, &p, &mut a, &mut ret).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!("{label:8} threads={threads} median {:.3} ms  min {:.3} ms", times[times.len() / 2], times[0]);
    }
}

fn reps() -> usize {
    std::env::var("REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(50)
}
