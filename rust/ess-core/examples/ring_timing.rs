//! Where the time of the ring stationary distribution goes:
//! `N=1000000 cargo run --release -p ess-core --example ring_timing`.
use ess_core::markov::{cyclic, stationary_distribution, ChainRef, CsrRef};
use std::time::Instant;

fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let half = 4usize;
    let mut s: u64 = 0x9E3779B97F4A7C15;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        0.5 + (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut ip, mut ix, mut v) = (vec![0i32], Vec::new(), Vec::new());
    for i in 0..n {
        let mut row: Vec<(usize, f64)> = (0..=2 * half).map(|o| ((i + n + o - half) % n, rnd())).collect();
        row.sort_by_key(|e| e.0);
        let t: f64 = row.iter().map(|e| e.1).sum();
        for (j, x) in row {
            ix.push(j as i32);
            v.push(x / t);
        }
        ip.push(ix.len() as i32);
    }
    let c = CsrRef { n, indptr: &ip[..], indices: &ix[..], data: &v[..] };
    let chain = ChainRef::Csr32(c);
    for _ in 0..std::env::var("REP").ok().and_then(|v| v.parse().ok()).unwrap_or(3) {
        let t = Instant::now();
        chain.validate("P").unwrap();
        let t1 = t.elapsed();
        let b = cyclic::bandwidth(&c, cyclic::CYCLIC_MAX_B).unwrap();
        let t2 = t.elapsed();
        let pi = cyclic::stationary(&c, b).unwrap().unwrap();
        let t3 = t.elapsed();
        let _ = stationary_distribution(&chain).unwrap();
        let t4 = t.elapsed();
        println!(
            "validate {:?} bandwidth {:?} stream {:?} | full call {:?} (b = {b}, pi[0] = {:e})",
            t1,
            t2 - t1,
            t3 - t2,
            t4 - t3,
            pi[0]
        );
    }
}
