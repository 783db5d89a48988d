//! Times masked whitening on 512 x 2048 float32:
//! `cargo run --release -p rlhf_fast_kernels --example whiten_timing [threads]`.

use std::time::Instant;

use rlhf_fast_kernels::whiten::{masked_whiten, WhitenParams};

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    rlhf_fast_kernels::parallel::set_num_threads(threads);
    let reps: usize = std::env::var("REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let (rows, cols) = (512usize, 2048usize);
    let n = rows * cols;
    let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 0.01).collect();
    let m: Vec<u8> = (0..n).map(|i| u8::from(i % cols < 1500)).collect();
    let mut out = vec![0.0f32; n];
    let p = WhitenParams { shift_mean: true, unbiased: true, eps: 1e-8, check_finite: true };
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        masked_whiten(&x, Some(&m), &p, &mut out).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!("whiten threads={threads} median {:.3} ms  min {:.3} ms", times[times.len() / 2], times[0]);
}
