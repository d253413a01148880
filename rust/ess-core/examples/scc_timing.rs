//! Where the time of the SCC pipeline goes: `cargo run --release -p ess-core --example scc_timing`.
use ess_core::graph::{csr_and_transpose, csr_from_edges, scc_csr, scc_from_edges, scc_fwbw};
use std::time::Instant;

fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let m: usize = std::env::var("M").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let mut s: u64 = 0x9E3779B97F4A7C15;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let src: Vec<i64> = (0..m).map(|_| (next() % n as u64) as i64).collect();
    let dst: Vec<i64> = (0..m).map(|_| (next() % n as u64) as i64).collect();
    for _ in 0..std::env::var("REP").ok().and_then(|v| v.parse().ok()).unwrap_or(3) {
        let t = Instant::now();
        let g = csr_from_edges(&src, &dst, n).unwrap();
        let t1 = t.elapsed();
        let (nc, lab) = scc_csr(&g);
        let t2 = t.elapsed();
        println!("pearce: csr {:?}  scc {:?}  total {:?}  ({nc} components)", t1, t2 - t1, t2);
        let t = Instant::now();
        let (g2, gt2) = csr_and_transpose(&src, &dst, n, true).unwrap();
        let gt2 = gt2.unwrap();
        let t1 = t.elapsed();
        let (nc2, lab2) = scc_fwbw(&g2, &gt2);
        let t2 = t.elapsed();
        println!(
            "fw-bw:  csr+csc {:?}  scc {:?}  total {:?}  ({nc2} components, same labels: {})",
            t1,
            t2 - t1,
            t2,
            lab == lab2
        );
        let t = Instant::now();
        let (_, nc3, _) = scc_from_edges(&src, &dst, n, ess_core::graph::SccAlgorithm::Auto).unwrap();
        println!("scc_from_edges total {:?} ({nc3})", t.elapsed());
    }
}
