//! All-pairs mean first-passage times of an irreducible chain by recursive censoring.
//!
//! `M[i, j]` = expected steps to reach `j` from `i` (`M[i, i] = 0`). Splitting the states
//! into halves `R1, R2`, eliminating `R1` by GTH leaves the censored chain on `R2` with a
//! per-state step cost `b` (expected time of an excursion through `R1`); the hitting times of
//! targets in `R2` from states of `R2` are the same problem, one level down, and those from
//! `R1` follow by back substitution. Doing this for both halves and recursing costs
//! `O(n^3)` in total (instead of `n` separate `O(n^3)` solves); every step is a sum or
//! product of non-negative numbers, as in [`super::gth`]. The two halves run in parallel.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use super::gth::{dense_eliminate, dense_forward};
use crate::error::Result;

/// `a`: `r x r` column-major off-diagonal transition probabilities (diagonal ignored) of an
/// irreducible censored chain; `b`: step cost per state. Returns `H` (`r x r`, row-major),
/// `H[i, j]` = expected cost to reach `j` from `i`.
pub fn all_pairs(a: &[f64], b: &[f64], r: usize) -> Result<Vec<f64>> {
    if r == 1 {
        return Ok(vec![0.0]);
    }
    let h = r / 2;
    let first: Vec<usize> = (0..h).collect();
    let second: Vec<usize> = (h..r).collect();
    let (x, y) = rayon::join(|| half(a, b, r, &first, &second), || half(a, b, r, &second, &first));
    let mut out = vec![0.0; r * r];
    for (res, keep) in [(x?, &second), (y?, &first)] {
        let (perm, xm) = res;
        let nk = keep.len();
        for (p, &gi) in perm.iter().enumerate() {
            for (t, &gj) in keep.iter().enumerate() {
                out[gi * r + gj] = xm[p * nk + t];
            }
        }
    }
    Ok(out)
}

/// Eliminate `elim`, recurse on `keep`, back-substitute. Returns the permutation
/// `elim ++ keep` and `X` (`r x |keep|`, row-major in that permuted order): hitting times of
/// each kept target from every state.
fn half(a: &[f64], b: &[f64], r: usize, elim: &[usize], keep: &[usize]) -> Result<(Vec<usize>, Vec<f64>)> {
    let perm: Vec<usize> = elim.iter().chain(keep.iter()).copied().collect();
    let ne = elim.len();
    let nk = keep.len();
    let mut w = vec![0.0; r * (r + 1)];
    for (pj, &gj) in perm.iter().enumerate() {
        let src = &a[gj * r..(gj + 1) * r];
        let dst = &mut w[pj * r..(pj + 1) * r];
        for (pi, &gi) in perm.iter().enumerate() {
            dst[pi] = if gi == gj { 0.0 } else { src[gi] };
        }
    }
    let mut bb: Vec<f64> = perm.iter().map(|&g| b[g]).collect();
    let mut d = Vec::with_capacity(ne);
    dense_eliminate(&mut w, r, ne, &mut d)?;
    dense_forward(&w, r, ne, &mut bb, 1);
    // censored chain on `keep`
    let mut sub = vec![0.0; nk * nk];
    for j in 0..nk {
        for i in 0..nk {
            sub[j * nk + i] = if i == j { 0.0 } else { w[(ne + j) * r + ne + i] };
        }
    }
    let hk = all_pairs(&sub, &bb[ne..], nk)?; // nk x nk row-major
                                              // X (column-major r x nk): rows ne.. = hk, rows ..ne by back substitution
    let mut x = vec![0.0; r * nk];
    for t in 0..nk {
        for i in 0..nk {
            x[t * r + ne + i] = hk[i * nk + t];
        }
        for p in 0..ne {
            x[t * r + p] = bb[p];
        }
    }
    let par = if rayon::current_num_threads() > 1 { Par::rayon(0) } else { Par::Seq };
    {
        let base = x.as_mut_ptr();
        // SAFETY: rows 0..ne and ne..r of x are disjoint.
        let (top, bottom) = unsafe {
            (
                MatMut::<f64>::from_raw_parts_mut(base, ne, nk, 1isize, r as isize),
                MatRef::<f64>::from_raw_parts(base.add(ne) as *const f64, nk, nk, 1isize, r as isize),
            )
        };
        // U12 = rows 0..ne, columns ne..r of w
        let u12 = unsafe { MatRef::<f64>::from_raw_parts(w.as_ptr().add(ne * r), ne, nk, 1isize, r as isize) };
        super::gth::matmul_panels(top, u12, bottom)?;
    }
    // blocked backward substitution inside the eliminated block
    const NB: usize = 64;
    let mut p1 = ne;
    while p1 > 0 {
        crate::interrupt::check()?;
        let p0 = p1.saturating_sub(NB);
        if p1 < ne {
            let base = x.as_mut_ptr();
            // SAFETY: rows p0..p1 and p1..ne of x are disjoint.
            let (dst, src) = unsafe {
                (
                    MatMut::<f64>::from_raw_parts_mut(base.add(p0), p1 - p0, nk, 1isize, r as isize),
                    MatRef::<f64>::from_raw_parts(base.add(p1) as *const f64, ne - p1, nk, 1isize, r as isize),
                )
            };
            let u = unsafe {
                MatRef::<f64>::from_raw_parts(w.as_ptr().add(p1 * r + p0), p1 - p0, ne - p1, 1isize, r as isize)
            };
            matmul(dst, Accum::Add, u, src, 1.0, par);
        }
        for p in (p0..p1).rev() {
            let inv = 1.0 / d[p];
            for t in 0..nk {
                let col = &x[t * r..(t + 1) * r];
                let mut s = col[p];
                for j in p + 1..p1 {
                    s += w[j * r + p] * col[j];
                }
                x[t * r + p] = s * inv;
            }
        }
        p1 = p0;
    }
    // to row-major r x nk
    let mut xm = vec![0.0; r * nk];
    for t in 0..nk {
        for p in 0..r {
            xm[p * nk + t] = x[t * r + p];
        }
    }
    Ok((perm, xm))
}
