use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, Par, Side};
use std::time::Instant;
fn main() {
    for &k in &[64usize, 128, 256, 512] {
        let a =
            Mat::<f64>::from_fn(k, k, |i, j| if j >= i { ((i * 31 + j * 17) % 97) as f64 / 97.0 - 0.3 } else { 0.0 });
        let reps = (200_000_000 / (k * k * k)).max(1);
        // svd values
        let t0 = Instant::now();
        for _ in 0..reps {
            let mut s = faer::diag::Diag::<f64>::zeros(k);
            let sc = faer::linalg::svd::svd_scratch::<f64>(
                k,
                k,
                faer::linalg::svd::ComputeSvdVectors::No,
                faer::linalg::svd::ComputeSvdVectors::No,
                Par::Seq,
                Default::default(),
            );
            let mut mem = MemBuffer::new(sc);
            faer::linalg::svd::svd(
                a.as_ref(),
                s.as_mut(),
                None,
                None,
                Par::Seq,
                MemStack::new(&mut mem),
                Default::default(),
            )
            .unwrap();
        }
        let tsvd = t0.elapsed().as_secs_f64() / reps as f64;
        // gram + evd
        let t0 = Instant::now();
        for _ in 0..reps {
            let mut g = Mat::<f64>::zeros(k, k);
            faer::linalg::matmul::matmul(g.as_mut(), faer::Accum::Replace, a.transpose(), a.as_ref(), 1.0, Par::Seq);
            let mut s = faer::diag::Diag::<f64>::zeros(k);
            let sc = faer::linalg::evd::self_adjoint_evd_scratch::<f64>(
                k,
                faer::linalg::evd::ComputeEigenvectors::No,
                Par::Seq,
                Default::default(),
            );
            let mut mem = MemBuffer::new(sc);
            faer::linalg::evd::self_adjoint_evd(
                g.as_ref(),
                s.as_mut(),
                None,
                Par::Seq,
                MemStack::new(&mut mem),
                Default::default(),
            )
            .unwrap();
        }
        let tevd = t0.elapsed().as_secs_f64() / reps as f64;
        let _ = Side::Lower;
        println!(
            "k={k}: svd {:.3} ms ({:.2} GF/s @8/3k^3), gram+evd {:.3} ms ({:.2} GF/s @ 4/3k^3+2k^3)",
            tsvd * 1e3,
            8.0 / 3.0 * (k as f64).powi(3) / tsvd / 1e9,
            tevd * 1e3,
            (4.0 / 3.0 + 2.0) * (k as f64).powi(3) / tevd / 1e9
        );
    }
}
