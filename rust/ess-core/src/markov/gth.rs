//! Subtraction-free state reduction (Grassmann–Taksar–Heyman elimination).
//!
//! The solves of this module are all of the form
//!
//! ```text
//!     d_i x_i - sum_{j in S, j != i} Q_ij x_j = r_i,   d_i = sum_{j in S, j != i} Q_ij + e_i,
//! ```
//!
//! on a set `S` of states, where `Q_ij = P_ij` are the off-diagonal transition
//! probabilities inside `S` and `e_i = sum_{j not in S} P_ij` is the mass leaving `S`.
//! This is `(I - Q) x = r` with the diagonal `1 - P_ii` replaced by the sum of the
//! off-diagonal entries of the row (the two are equal for a stochastic row, but the sum is
//! computed without cancellation). Eliminating state `k` censors it out of the chain:
//! `Q_ij += Q_ik Q_kj / d_k`, `e_i += Q_ik e_k / d_k`, `r_i += Q_ik r_k / d_k`, and the next
//! pivot is again a sum of off-diagonal entries. Every operation adds or multiplies
//! non-negative numbers, so each result carries a small relative error (a few units of
//! roundoff times the number of steps), independent of how small the rare transitions are.
//!
//! Two engines share this scheme:
//! * sparse: states eliminated one by one in an approximate-minimum-degree order (faer's
//!   AMD on the pattern of `Q + Q^T`) with dynamic fill-in; when the remaining matrix
//!   becomes dense enough it switches to
//! * dense: a blocked right-looking elimination whose trailing updates are matrix products
//!   of non-negative blocks (faer's GEMM): still subtraction-free.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use crate::error::{Error, Result};

/// Block size of the dense elimination.
const NB: usize = 64;

/// Switch the sparse engine to dense when the remaining `r` states hold more than
/// `DENSE_FRACTION * r^2` entries (and `r <= DENSE_MAX`).
const DENSE_FRACTION: f64 = 0.08;
const DENSE_MAX: usize = 20_000;

/// Most matrix entries (live fill plus stored factor) the sparse engine may hold, about
/// 16 bytes each: beyond this it stops with `TooLarge` instead of exhausting memory.
pub const FILL_MAX: usize = 500_000_000;

fn par() -> Par {
    if rayon::current_num_threads() > 1 {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

/// Dense blocked GTH elimination of the first `npiv` states of `a`.
///
/// `a` is `r x (r + 1)` column-major (leading dimension `r`): entries `a[i, j]`, `i != j`,
/// `j < r` are the off-diagonal `Q_ij`; column `r` is the exit mass `e_i`; the diagonal is
/// ignored. On return, for each pivot `p < npiv`: `d[p]` is its pivot, `a[p, j]` (`j > p`)
/// its row at elimination time, `a[i, p]` (`i > p`) the multiplier `Q_ip / d_p`; the
/// trailing block holds the censored chain on the remaining states.
pub fn dense_eliminate(a: &mut [f64], r: usize, npiv: usize, d: &mut Vec<f64>) -> Result<()> {
    debug_assert_eq!(a.len(), r * (r + 1));
    d.clear();
    let ld = r;
    let mut k0 = 0;
    while k0 < npiv {
        let k1 = (k0 + NB).min(npiv);
        for p in k0..k1 {
            // pivot: off-diagonal row sum over remaining states, plus exit
            let mut s = a[r * ld + p];
            for j in p + 1..r {
                s += a[j * ld + p];
            }
            if !(s > 0.0) || !s.is_finite() {
                return Err(Error::Numerical(format!(
                    "zero pivot in state reduction (a state with no path out of the reduced set); pivot = {s:e}"
                )));
            }
            d.push(s);
            let inv = 1.0 / s;
            {
                let col = &mut a[p * ld..(p + 1) * ld];
                for x in &mut col[p + 1..r] {
                    *x *= inv;
                }
            }
            // eager column-panel update: columns p+1..k1, rows p+1..r
            for j in p + 1..k1 {
                let u = a[j * ld + p];
                if u != 0.0 {
                    let (lo, hi) = a.split_at_mut(j * ld);
                    let lcol = &lo[p * ld + p + 1..p * ld + r];
                    let dst = &mut hi[p + 1..r];
                    for (x, &l) in dst.iter_mut().zip(lcol) {
                        *x += l * u;
                    }
                }
            }
            // eager row-panel update: rows p+1..k1, columns k1..=r
            if p + 1 < k1 {
                for j in k1..=r {
                    let u = a[j * ld + p];
                    if u != 0.0 {
                        for i in p + 1..k1 {
                            let l = a[p * ld + i];
                            a[j * ld + i] += l * u;
                        }
                    }
                }
            }
        }
        // trailing update: A[k1.., k1..=r] += L[k1.., k0..k1] * U[k0..k1, k1..=r]
        if k1 < r {
            let base = a.as_mut_ptr();
            // SAFETY: the three views cover disjoint regions of `a` (rows k1.. x columns k1..,
            // rows k0..k1 x columns k1.., rows k1.. x columns k0..k1), all inside r x (r + 1).
            let (a22, l21, u12) = unsafe {
                (
                    MatMut::<f64>::from_raw_parts_mut(
                        base.add(k1 * ld + k1),
                        r - k1,
                        r + 1 - k1,
                        1isize,
                        ld as isize,
                    ),
                    MatRef::<f64>::from_raw_parts(
                        base.add(k0 * ld + k1) as *const f64,
                        r - k1,
                        k1 - k0,
                        1isize,
                        ld as isize,
                    ),
                    MatRef::<f64>::from_raw_parts(
                        base.add(k1 * ld + k0) as *const f64,
                        k1 - k0,
                        r + 1 - k1,
                        1isize,
                        ld as isize,
                    ),
                )
            };
            matmul(a22, Accum::Add, l21, u12, 1.0, par());
        }
        k0 = k1;
    }
    Ok(())
}

/// Forward substitution of the right-hand sides through the multipliers of
/// [`dense_eliminate`]: `rhs[i] += a[i, p] * rhs[p]` for `p < npiv < i`. `rhs` is
/// `r x c` row-major.
pub fn dense_forward(a: &[f64], r: usize, npiv: usize, rhs: &mut [f64], c: usize) {
    for p in 0..npiv {
        for i in p + 1..r {
            let l = a[p * r + i];
            if l != 0.0 {
                for t in 0..c {
                    rhs[i * c + t] += l * rhs[p * c + t];
                }
            }
        }
    }
}

/// Back substitution: `x[p] = (rhs[p] + sum_{j > p} a[p, j] x[j]) / d[p]` for `p < r`,
/// all `r` states pivoted. `rhs` (`r x c` row-major) is overwritten with `x`.
pub fn dense_backward(a: &[f64], r: usize, d: &[f64], rhs: &mut [f64], c: usize) {
    for p in (0..r).rev() {
        for t in 0..c {
            let mut s = rhs[p * c + t];
            for j in p + 1..r {
                s += a[j * r + p] * rhs[j * c + t];
            }
            rhs[p * c + t] = s / d[p];
        }
    }
}

/// The reduced problem on a set `S` of `m` states (local numbering `0..m`).
pub struct Reduced {
    pub m: usize,
    /// Off-diagonal entries inside `S` as CSR (`ptr`, `idx`, `val`), deduplicated, no
    /// diagonal; explicit zeros allowed.
    pub ptr: Vec<usize>,
    pub idx: Vec<usize>,
    pub val: Vec<f64>,
    /// Mass leaving `S`.
    pub exit: Vec<f64>,
    /// Right-hand sides, `m x c` row-major.
    pub rhs: Vec<f64>,
    pub c: usize,
}

impl Reduced {
    /// Build from per-row lists (deduplicated, no diagonal).
    pub fn from_rows(
        rows: Vec<Vec<(usize, f64)>>,
        exit: Vec<f64>,
        rhs: Vec<f64>,
        c: usize,
    ) -> Reduced {
        let m = rows.len();
        let mut ptr = Vec::with_capacity(m + 1);
        let mut idx = Vec::new();
        let mut val = Vec::new();
        ptr.push(0);
        for row in rows {
            for (j, v) in row {
                idx.push(j);
                val.push(v);
            }
            ptr.push(idx.len());
        }
        Reduced {
            m,
            ptr,
            idx,
            val,
            exit,
            rhs,
            c,
        }
    }

    /// Column indices and values of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> (&[usize], &[f64]) {
        let (a, b) = (self.ptr[i], self.ptr[i + 1]);
        (&self.idx[a..b], &self.val[a..b])
    }

    pub fn nnz(&self) -> usize {
        self.idx.len()
    }
}

struct Step {
    k: usize,
    row: Vec<(usize, f64)>,
    d: f64,
    lcol: Vec<(usize, f64)>,
}

struct DenseTail {
    states: Vec<usize>,
    a: Vec<f64>,
    d: Vec<f64>,
    npiv: usize,
}

/// Eliminated form of a [`Reduced`] problem.
struct Factor {
    steps: Vec<Step>,
    tail: DenseTail,
}

/// Fill-reducing order: faer's AMD on the pattern of `Q + Q^T`.
fn amd_order(red: &Reduced) -> Result<Vec<usize>> {
    use faer::sparse::linalg::amd;
    use faer::sparse::SymbolicSparseColMatRef;
    let m = red.m;
    let (ptr, idx) = (&red.ptr, &red.idx);
    // the rows of Q read as columns are the pattern of Q^T; AMD symmetrises it anyway
    let sym = SymbolicSparseColMatRef::new_unsorted_checked(m, m, ptr, None, idx);
    let mut perm = vec![0usize; m];
    let mut perm_inv = vec![0usize; m];
    let req = amd::order_maybe_unsorted_scratch::<usize>(m, idx.len());
    let mut mem = faer::dyn_stack::MemBuffer::try_new(req)
        .map_err(|_| Error::too_large("P", "not enough memory for the fill-reducing ordering"))?;
    let stack = faer::dyn_stack::MemStack::new(&mut mem);
    amd::order_maybe_unsorted(
        &mut perm,
        &mut perm_inv,
        sym,
        amd::Control::default(),
        stack,
    )
    .map_err(|e| Error::Numerical(format!("AMD ordering failed: {e:?}")))?;
    Ok(perm)
}

/// Eliminate `red`: all states (`keep_last = false`) or all but the last one in the
/// elimination order (`keep_last = true`, for stationary distributions). `dense` forces the
/// dense engine from the start. Sparse-phase right-hand-side updates are applied in place.
fn factor(red: &mut Reduced, keep_last: bool, dense: bool, fill_max: usize) -> Result<Factor> {
    let m = red.m;
    let c = red.c;
    let order: Vec<usize> = if dense || m <= 2 * NB {
        (0..m).collect()
    } else {
        amd_order(red)?
    };
    let mut steps: Vec<Step> = Vec::new();
    let mut elim = vec![false; m];
    let mut pos = vec![usize::MAX; m];
    let mut nnz: usize = red.nnz();
    let mut stored: usize = 0;
    let mut rows: Vec<Vec<(usize, f64)>> = Vec::new();
    let mut step = 0;
    if !dense {
        let mut cols: Vec<Vec<usize>> = vec![Vec::new(); m];
        rows = (0..m)
            .map(|i| {
                let (ix, vs) = red.row(i);
                ix.iter().copied().zip(vs.iter().copied()).collect()
            })
            .collect();
        for (i, row) in rows.iter().enumerate() {
            for &(j, _) in row {
                cols[j].push(i);
            }
        }
        let last = if keep_last { m.saturating_sub(1) } else { m };
        while step < last {
            let rem = m - step;
            if rem <= DENSE_MAX
                && (nnz as f64) > DENSE_FRACTION * (rem as f64) * (rem as f64)
                && rem > 32
            {
                break;
            }
            let k = order[step];
            let rowk = std::mem::take(&mut rows[k]);
            let mut s = red.exit[k];
            for &(_, v) in &rowk {
                s += v;
            }
            if !(s > 0.0) || !s.is_finite() {
                return Err(Error::Numerical(format!(
                    "zero pivot in state reduction at a state with no path out of the reduced set (pivot {s:e})"
                )));
            }
            let colk = std::mem::take(&mut cols[k]);
            let mut lcol = Vec::with_capacity(colk.len());
            let exitk = red.exit[k];
            for &i in &colk {
                if elim[i] || i == k {
                    continue;
                }
                let ri = &mut rows[i];
                for (t, &(j, _)) in ri.iter().enumerate() {
                    pos[j] = t;
                }
                let pk = pos[k];
                if pk == usize::MAX {
                    for &(j, _) in ri.iter() {
                        pos[j] = usize::MAX;
                    }
                    continue;
                }
                let qik = ri[pk].1;
                pos[k] = usize::MAX;
                ri.swap_remove(pk);
                if pk < ri.len() {
                    pos[ri[pk].0] = pk;
                }
                nnz = nnz.saturating_sub(1);
                let mult = qik / s;
                for &(j, v) in &rowk {
                    if j == i {
                        continue; // self-loop of the censored chain: dropped
                    }
                    let pj = pos[j];
                    if pj != usize::MAX {
                        ri[pj].1 += mult * v;
                    } else {
                        pos[j] = ri.len();
                        ri.push((j, mult * v));
                        cols[j].push(i);
                        nnz += 1;
                    }
                }
                for &(j, _) in ri.iter() {
                    pos[j] = usize::MAX;
                }
                red.exit[i] += mult * exitk;
                for t in 0..c {
                    let add = mult * red.rhs[k * c + t];
                    red.rhs[i * c + t] += add;
                }
                lcol.push((i, mult));
            }
            nnz = nnz.saturating_sub(rowk.len());
            elim[k] = true;
            stored += rowk.len() + lcol.len();
            if nnz + stored > fill_max {
                return Err(Error::too_large(
                    "P",
                    format!(
                        "exact elimination needs more than {fill_max} stored entries (fill-in) after \
                         {step} of {m} states; the chain's graph is too well connected for a \
                         direct method at this size"
                    ),
                ));
            }
            steps.push(Step {
                k,
                row: rowk,
                d: s,
                lcol,
            });
            step += 1;
        }
    }
    // dense tail on the remaining states, in order
    let states: Vec<usize> = order[step..].to_vec();
    let r = states.len();
    let mut loc = vec![usize::MAX; m];
    for (t, &s) in states.iter().enumerate() {
        loc[s] = t;
    }
    let size = r
        .checked_mul(r + 1)
        .ok_or_else(|| Error::too_large("P", "dense block too large"))?;
    let a = super::mem::filled(size, 0.0).map_err(|_| {
        Error::too_large(
            "P",
            format!("the dense elimination block needs {r} x {r} doubles; not enough memory"),
        )
    })?;
    let mut a = a;
    for (t, &s) in states.iter().enumerate() {
        let mut put = |j: usize, v: f64| {
            let lj = loc[j];
            if lj != usize::MAX && lj != t {
                a[lj * r + t] += v;
            }
        };
        if dense {
            let (ix, vs) = red.row(s);
            for (&j, &v) in ix.iter().zip(vs) {
                put(j, v);
            }
        } else {
            for &(j, v) in &rows[s] {
                put(j, v);
            }
            rows[s] = Vec::new();
        }
        a[r * r + t] = red.exit[s];
    }
    let npiv = if keep_last { r.saturating_sub(1) } else { r };
    let mut d = Vec::with_capacity(r);
    dense_eliminate(&mut a, r, npiv, &mut d)?;
    Ok(Factor {
        steps,
        tail: DenseTail { states, a, d, npiv },
    })
}

/// Solve the reduced system: returns `x` (`m x c` row-major), every entry computed
/// subtraction-free. `dense` selects the dense engine from the start.
pub fn solve(mut red: Reduced, dense: bool) -> Result<Vec<f64>> {
    let c = red.c;
    if !dense {
        if let Some(plan) = super::band::plan(&red) {
            return super::band::solve(&red, &plan);
        }
    }
    let f = factor(&mut red, false, dense, FILL_MAX)?;
    let DenseTail { states, a, d, npiv } = &f.tail;
    let r = states.len();
    debug_assert_eq!(*npiv, r);
    let mut trhs = vec![0.0; r * c];
    for (t, &s) in states.iter().enumerate() {
        trhs[t * c..(t + 1) * c].copy_from_slice(&red.rhs[s * c..(s + 1) * c]);
    }
    dense_forward(a, r, r, &mut trhs, c);
    dense_backward(a, r, d, &mut trhs, c);
    let mut x = vec![0.0; red.m * c];
    for (t, &s) in states.iter().enumerate() {
        x[s * c..(s + 1) * c].copy_from_slice(&trhs[t * c..(t + 1) * c]);
    }
    for st in f.steps.iter().rev() {
        for t in 0..c {
            let mut s = red.rhs[st.k * c + t];
            for &(j, v) in &st.row {
                s += v * x[j * c + t];
            }
            x[st.k * c + t] = s / st.d;
        }
    }
    Ok(x)
}

/// Stationary distribution of an irreducible chain given as a [`Reduced`] problem with no
/// exits (`exit = 0`, `c = 0`): GTH with the last state kept, then
/// `pi_p = sum_{i after p} pi_i Q_ip / d_p`, normalised at the end (sums of positives).
pub fn stationary(mut red: Reduced, dense: bool) -> Result<Vec<f64>> {
    let m = red.m;
    if m == 1 {
        return Ok(vec![1.0]);
    }
    let band = if dense { None } else { super::band::plan(&red) };
    let pi = match band {
        Some(plan) => super::band::stationary_weights(&red, &plan)?,
        None => stationary_weights(&mut red, dense)?,
    };
    normalise(pi)
}

fn stationary_weights(red: &mut Reduced, dense: bool) -> Result<Vec<f64>> {
    let m = red.m;
    let f = factor(red, true, dense, FILL_MAX)?;
    let DenseTail {
        states, a, npiv, ..
    } = &f.tail;
    let r = states.len();
    let mut pi = vec![0.0; m];
    let mut tp = vec![0.0; r];
    // pi on the tail: last state 1, then back through the dense multipliers
    tp[r - 1] = 1.0;
    for p in (0..*npiv).rev() {
        let mut s = 0.0;
        for i in p + 1..r {
            s += tp[i] * a[p * r + i];
        }
        tp[p] = s;
    }
    for (t, &s) in states.iter().enumerate() {
        pi[s] = tp[t];
    }
    for st in f.steps.iter().rev() {
        let mut s = 0.0;
        for &(i, l) in &st.lcol {
            s += pi[i] * l;
        }
        pi[st.k] = s;
    }
    Ok(pi)
}

fn normalise(mut pi: Vec<f64>) -> Result<Vec<f64>> {
    let total: f64 = pi.iter().sum();
    if !(total > 0.0) || !total.is_finite() {
        return Err(Error::Numerical(
            "stationary distribution underflowed or overflowed".into(),
        ));
    }
    // rescale in two steps so that huge dynamic ranges do not overflow the sum
    for v in &mut pi {
        *v /= total;
    }
    Ok(pi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random-looking well-connected chain on `m` states as a reduced problem.
    fn expander(m: usize) -> Reduced {
        let mut rows = vec![Vec::new(); m];
        for (i, row) in rows.iter_mut().enumerate() {
            for t in 1..4usize {
                let j = (i * 7919 * t + 13 * t) % m;
                if j != i && !row.iter().any(|e: &(usize, f64)| e.0 == j) {
                    row.push((j, 0.2));
                }
            }
        }
        let exit = vec![0.1; m];
        Reduced::from_rows(rows, exit, vec![1.0; m], 1)
    }

    #[test]
    fn fill_budget_is_an_error_not_an_abort() {
        let mut red = expander(3000);
        let r = factor(&mut red, false, false, 10_000);
        assert!(matches!(r, Err(Error::TooLarge { .. })));
        let red = expander(3000);
        assert!(solve(red, false).is_ok());
    }
}
