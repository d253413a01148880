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
//! Three engines share this scheme:
//! * sparse: states eliminated one by one in an approximate-minimum-degree order (faer's
//!   AMD on the pattern of `Q + Q^T`) with dynamic fill-in; when the remaining matrix
//!   becomes dense enough it switches to
//! * dense: a recursive elimination whose updates are non-negative triangular solves and
//!   matrix products (faer's GEMM), see [`dense_eliminate`]: still subtraction-free;
//! * banded ([`super::band`]): chosen instead of the sparse engine when the pattern fits a
//!   narrow band in natural or reverse Cuthill–McKee order.

use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef, Par};

use crate::error::{Error, Result};

/// Below this many states the sparse engine starts dense (natural order).
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

/// Dense GTH elimination of the first `npiv` states of `a` (recursive, GEMM-rich).
///
/// `a` is `r x (r + 1)` column-major (leading dimension `r`): entries `a[i, j]`, `i != j`,
/// `j < r` are the off-diagonal `Q_ij`; column `r` is the exit mass `e_i`; the diagonal is
/// ignored. On return, for each pivot `p < npiv`: `d[p]` is its pivot, `a[p, j]` (`j > p`)
/// its row at elimination time, `a[i, p]` (`i > p`) the multiplier `Q_ip / d_p`; the
/// trailing block holds the censored chain on the remaining states.
///
/// The pivot of `p` needs its whole current row. Recursion on column halves keeps that
/// subtraction-free: while the left half `[c0, h)` is eliminated, the columns right of it
/// are carried only as one aggregated exit column `x_i = e_i + sum_{j >= h} Q_ij` (a sum of
/// columns is updated by the same rule as each column, `x_i += l_ip x_p`); the right
/// columns are then brought up to date by a unit-lower triangular solve with the
/// non-negative multipliers (`U12 += L11' U12`, by recursion and GEMM) and a non-negative
/// GEMM update (`A22 += L21 U12`). Every operation adds non-negative numbers.
pub fn dense_eliminate(a: &mut [f64], r: usize, npiv: usize, d: &mut Vec<f64>) -> Result<()> {
    debug_assert_eq!(a.len(), r * (r + 1));
    debug_assert!(npiv <= r);
    d.clear();
    d.resize(npiv, 0.0);
    if npiv == 0 {
        return Ok(());
    }
    let ld = r;
    // aggregate of the columns that are not pivoted (and the exit column)
    let mut x = vec![0.0; r];
    for j in npiv..=r {
        let col = &a[j * ld..j * ld + r];
        for (i, (xi, &v)) in x.iter_mut().zip(col).enumerate() {
            if i != j {
                *xi += v;
            }
        }
    }
    let base = a.as_mut_ptr();
    // SAFETY: every view below lies inside the r x (r + 1) buffer `a` (ld = r) or inside
    // `x`, and the views used together (L, U, and the updated block) are disjoint.
    unsafe {
        rec(base, ld, r, 0, npiv, &mut x, d)?;
        // bring the non-pivoted columns npiv..=r up to date
        let k = npiv;
        let nc = r + 1 - npiv;
        trsm_panels(mat(base, ld, 0, 0, k, k), mat_mut(base, ld, 0, npiv, k, nc))?;
        if k < r {
            matmul_panels(
                mat_mut(base, ld, npiv, npiv, r - npiv, nc),
                mat(base, ld, npiv, 0, r - npiv, k),
                mat(base, ld, 0, npiv, k, nc),
            )?;
        }
    }
    Ok(())
}

/// Columns per leaf of the recursion (unblocked elimination of a narrow panel).
const LEAF: usize = 32;

unsafe fn mat<'a>(p: *mut f64, ld: usize, i: usize, j: usize, nr: usize, nc: usize) -> MatRef<'a, f64> {
    MatRef::from_raw_parts(p.add(j * ld + i) as *const f64, nr, nc, 1, ld as isize)
}

unsafe fn mat_mut<'a>(p: *mut f64, ld: usize, i: usize, j: usize, nr: usize, nc: usize) -> MatMut<'a, f64> {
    MatMut::from_raw_parts_mut(p.add(j * ld + i), nr, nc, 1, ld as isize)
}

/// Floating-point operations per interruptible panel (a few tens of milliseconds on one core).
const PANEL_FLOPS: usize = 50_000_000;

/// Columns per panel for an update touching `m x k` per column.
fn panel_cols(m: usize, k: usize) -> usize {
    (PANEL_FLOPS / (2 * m.max(1) * k.max(1))).max(16)
}

/// `dst += lhs * rhs` in column panels, with an interrupt check before each panel, so that
/// Ctrl-C reaches a large elimination within a fraction of a second.
pub(crate) fn matmul_panels(mut dst: MatMut<'_, f64>, lhs: MatRef<'_, f64>, rhs: MatRef<'_, f64>) -> Result<()> {
    let nc = dst.ncols();
    let w = panel_cols(dst.nrows(), lhs.ncols());
    let mut j = 0;
    while j < nc {
        crate::interrupt::check()?;
        let step = w.min(nc - j);
        matmul(dst.rb_mut().subcols_mut(j, step), Accum::Add, lhs, rhs.subcols(j, step), 1.0, par());
        j += step;
    }
    Ok(())
}

/// [`trsm`] in column panels with an interrupt check before each.
fn trsm_panels(l: MatRef<'_, f64>, mut b: MatMut<'_, f64>) -> Result<()> {
    let nc = b.ncols();
    let k = l.nrows();
    let w = panel_cols(k, k / 2);
    let mut j = 0;
    while j < nc {
        crate::interrupt::check()?;
        let step = w.min(nc - j);
        trsm(l, b.rb_mut().subcols_mut(j, step));
        j += step;
    }
    Ok(())
}

/// `b += L' b` solved downwards: `b_i += sum_{p < i} l[i, p] b_p` for the unit lower
/// triangle of `l` (its strictly lower part holds non-negative multipliers).
fn trsm(l: MatRef<'_, f64>, mut b: MatMut<'_, f64>) {
    let k = l.nrows();
    if k <= LEAF {
        for j in 0..b.ncols() {
            for p in 0..k {
                let u = b[(p, j)];
                if u != 0.0 {
                    for i in p + 1..k {
                        b[(i, j)] += l[(i, p)] * u;
                    }
                }
            }
        }
        return;
    }
    let h = k / 2;
    let (mut top, mut bot) = b.rb_mut().split_at_row_mut(h);
    trsm(l.submatrix(0, 0, h, h), top.rb_mut());
    matmul(bot.rb_mut(), Accum::Add, l.submatrix(h, 0, k - h, h), top.rb(), 1.0, par());
    trsm(l.submatrix(h, h, k - h, k - h), bot);
}

/// Unblocked elimination of the columns `c0..c1` (at most [`LEAF`]): the leaf of [`rec`].
unsafe fn leaf(a: *mut f64, ld: usize, r: usize, c0: usize, c1: usize, x: &mut [f64], d: &mut [f64]) -> Result<()> {
    crate::interrupt::check()?;
    for p in c0..c1 {
        let mut s = x[p];
        for j in p + 1..c1 {
            s += *a.add(j * ld + p);
        }
        if !(s > 0.0) || !s.is_finite() {
            return Err(Error::Numerical(format!(
                "zero pivot in state reduction (a state with no path out of the reduced set); pivot = {s:e}"
            )));
        }
        d[p] = s;
        let inv = 1.0 / s;
        let lcol = std::slice::from_raw_parts_mut(a.add(p * ld + p + 1), r - p - 1);
        for v in lcol.iter_mut() {
            *v *= inv;
        }
        let lcol: &[f64] = lcol;
        for j in p + 1..c1 {
            let u = *a.add(j * ld + p);
            if u != 0.0 {
                let dst = std::slice::from_raw_parts_mut(a.add(j * ld + p + 1), r - p - 1);
                for (v, &l) in dst.iter_mut().zip(lcol) {
                    *v += l * u;
                }
            }
        }
        let xp = x[p];
        if xp != 0.0 {
            for (v, &l) in x[p + 1..r].iter_mut().zip(lcol) {
                *v += l * xp;
            }
        }
    }
    Ok(())
}

/// Eliminate columns `c0..c1` (rows `c0..r`), all earlier pivots already applied; `x` is
/// the aggregated exit of each row towards the columns `>= c1` (including the exit).
unsafe fn rec(a: *mut f64, ld: usize, r: usize, c0: usize, c1: usize, x: &mut [f64], d: &mut [f64]) -> Result<()> {
    if c1 - c0 <= LEAF {
        return leaf(a, ld, r, c0, c1, x, d);
    }
    let h = c0 + ((c1 - c0) / 2).next_multiple_of(8).min(c1 - c0 - 1);
    // left half: the columns h..c1 join the aggregated exit
    let mut xl = x.to_vec();
    for j in h..c1 {
        let col = std::slice::from_raw_parts(a.add(j * ld), r);
        for i in c0..r {
            if i != j {
                xl[i] += col[i];
            }
        }
    }
    rec(a, ld, r, c0, h, &mut xl, d)?;
    drop(xl);
    // right half: apply the pivots c0..h to the columns h..c1 and to x
    let k = h - c0;
    let l11 = mat(a, ld, c0, c0, k, k);
    trsm_panels(l11, mat_mut(a, ld, c0, h, k, c1 - h))?;
    let xp = x.as_mut_ptr();
    trsm(l11, MatMut::from_raw_parts_mut(xp.add(c0), k, 1, 1, k as isize));
    let l21 = mat(a, ld, h, c0, r - h, k);
    matmul_panels(mat_mut(a, ld, h, h, r - h, c1 - h), l21, mat(a, ld, c0, h, k, c1 - h))?;
    matmul(
        MatMut::from_raw_parts_mut(xp.add(h), r - h, 1, 1, (r - h) as isize),
        Accum::Add,
        l21,
        MatRef::from_raw_parts(xp.add(c0) as *const f64, k, 1, 1, k as isize),
        1.0,
        par(),
    );
    rec(a, ld, r, h, c1, x, d)
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
    pub fn from_rows(rows: Vec<Vec<(usize, f64)>>, exit: Vec<f64>, rhs: Vec<f64>, c: usize) -> Reduced {
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
        Reduced { m, ptr, idx, val, exit, rhs, c }
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
    amd::order_maybe_unsorted(&mut perm, &mut perm_inv, sym, amd::Control::default(), stack)
        .map_err(|e| Error::Numerical(format!("AMD ordering failed: {e:?}")))?;
    Ok(perm)
}

/// Eliminate `red`: all states (`keep_last = false`) or all but the last one in the
/// elimination order (`keep_last = true`, for stationary distributions). `dense` forces the
/// dense engine from the start. Sparse-phase right-hand-side updates are applied in place.
fn factor(red: &mut Reduced, keep_last: bool, dense: bool, fill_max: usize) -> Result<Factor> {
    let m = red.m;
    let order: Vec<usize> = if dense || m <= 2 * NB { (0..m).collect() } else { amd_order(red)? };
    if dense {
        let tail = dense_tail(red, order, None, keep_last)?;
        return Ok(Factor { steps: Vec::new(), tail });
    }
    let (steps, mut rows) = sparse_phase(red, &order, keep_last, fill_max)?;
    let states = order[steps.len()..].to_vec();
    let tail = dense_tail(red, states, Some(&mut rows), keep_last)?;
    Ok(Factor { steps, tail })
}

/// Working state of the sparse engine: the live rows of the censored chain, the rows that
/// hold an entry in every column (a superset: eliminated rows are skipped), and the entry
/// counts checked against the fill budget.
struct SparseElim {
    rows: Vec<Vec<(usize, f64)>>,
    cols: Vec<Vec<usize>>,
    elim: Vec<bool>,
    /// Scratch: position of column `j` in the row being updated, `usize::MAX` elsewhere.
    pos: Vec<usize>,
    /// Live off-diagonal entries of the censored chain.
    nnz: usize,
    /// Entries of the stored factor (pivot rows and multiplier columns).
    stored: usize,
}

impl SparseElim {
    fn new(red: &Reduced) -> SparseElim {
        let m = red.m;
        let rows: Vec<Vec<(usize, f64)>> = (0..m)
            .map(|i| {
                let (ix, vs) = red.row(i);
                ix.iter().copied().zip(vs.iter().copied()).collect()
            })
            .collect();
        let mut cols: Vec<Vec<usize>> = vec![Vec::new(); m];
        for (i, row) in rows.iter().enumerate() {
            for &(j, _) in row {
                cols[j].push(i);
            }
        }
        SparseElim { rows, cols, elim: vec![false; m], pos: vec![usize::MAX; m], nnz: red.nnz(), stored: 0 }
    }

    /// Whether the `rem` remaining states are dense enough to hand over to the dense engine.
    fn dense_enough(&self, rem: usize) -> bool {
        rem <= DENSE_MAX && (self.nnz as f64) > DENSE_FRACTION * (rem as f64) * (rem as f64) && rem > 32
    }

    /// Eliminate state `k`: censor it out of every live row that enters it, updating their
    /// exits and right-hand sides, and return its pivot row and multiplier column.
    fn eliminate(&mut self, red: &mut Reduced, k: usize) -> Result<Step> {
        let c = red.c;
        let rowk = std::mem::take(&mut self.rows[k]);
        let mut s = red.exit[k];
        for &(_, v) in &rowk {
            s += v;
        }
        if !(s > 0.0) || !s.is_finite() {
            return Err(Error::Numerical(format!(
                "zero pivot in state reduction at a state with no path out of the reduced set (pivot {s:e})"
            )));
        }
        let colk = std::mem::take(&mut self.cols[k]);
        let mut lcol = Vec::with_capacity(colk.len());
        let exitk = red.exit[k];
        for &i in &colk {
            if self.elim[i] || i == k {
                continue;
            }
            let Some(mult) = self.update_row(i, k, &rowk, s) else { continue };
            red.exit[i] += mult * exitk;
            for t in 0..c {
                let add = mult * red.rhs[k * c + t];
                red.rhs[i * c + t] += add;
            }
            lcol.push((i, mult));
        }
        self.nnz = self.nnz.saturating_sub(rowk.len());
        self.elim[k] = true;
        self.stored += rowk.len() + lcol.len();
        Ok(Step { k, row: rowk, d: s, lcol })
    }

    /// Row `i` of the censored chain after eliminating `k` (pivot `s`, row `rowk`):
    /// `Q_ij += (Q_ik / s) Q_kj`, with the entry `Q_ik` removed and new fill appended.
    /// Returns the multiplier `Q_ik / s`, or `None` when row `i` no longer enters `k`.
    fn update_row(&mut self, i: usize, k: usize, rowk: &[(usize, f64)], s: f64) -> Option<f64> {
        let SparseElim { rows, cols, pos, nnz, .. } = self;
        let ri = &mut rows[i];
        for (t, &(j, _)) in ri.iter().enumerate() {
            pos[j] = t;
        }
        let pk = pos[k];
        if pk == usize::MAX {
            for &(j, _) in ri.iter() {
                pos[j] = usize::MAX;
            }
            return None;
        }
        let qik = ri[pk].1;
        pos[k] = usize::MAX;
        ri.swap_remove(pk);
        if pk < ri.len() {
            pos[ri[pk].0] = pk;
        }
        *nnz = nnz.saturating_sub(1);
        let mult = qik / s;
        for &(j, v) in rowk {
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
                *nnz += 1;
            }
        }
        for &(j, _) in ri.iter() {
            pos[j] = usize::MAX;
        }
        Some(mult)
    }
}

/// Sparse phase of [`factor`]: eliminate the states of `order` one by one until the
/// remaining chain is dense enough (or all are done). Returns the steps and the live rows.
fn sparse_phase(
    red: &mut Reduced,
    order: &[usize],
    keep_last: bool,
    fill_max: usize,
) -> Result<(Vec<Step>, Vec<Vec<(usize, f64)>>)> {
    let m = red.m;
    let mut st = SparseElim::new(red);
    let mut steps: Vec<Step> = Vec::new();
    let last = if keep_last { m.saturating_sub(1) } else { m };
    while steps.len() < last {
        let step = steps.len();
        if step.is_multiple_of(256) {
            crate::interrupt::check()?;
        }
        if st.dense_enough(m - step) {
            break;
        }
        let done = st.eliminate(red, order[step])?;
        if st.nnz + st.stored > fill_max {
            return Err(Error::too_large(
                "P",
                format!(
                    "exact elimination needs more than {fill_max} stored entries (fill-in) after \
                     {step} of {m} states; the chain's graph is too well connected for a \
                     direct method at this size"
                ),
            ));
        }
        steps.push(done);
    }
    Ok((steps, st.rows))
}

/// Dense phase of [`factor`] on `states` (in elimination order): assemble their chain,
/// from the sparse engine's live `rows` (released as they are read) or, without them,
/// from `red`, and eliminate it (all but the last state when `keep_last`).
fn dense_tail(
    red: &Reduced,
    states: Vec<usize>,
    rows: Option<&mut Vec<Vec<(usize, f64)>>>,
    keep_last: bool,
) -> Result<DenseTail> {
    let r = states.len();
    let mut a = dense_block(red, &states, rows)?;
    let npiv = if keep_last { r.saturating_sub(1) } else { r };
    let mut d = Vec::with_capacity(r);
    dense_eliminate(&mut a, r, npiv, &mut d)?;
    Ok(DenseTail { states, a, d, npiv })
}

/// The `r x (r + 1)` block of [`dense_eliminate`] for `states`: off-diagonal entries among
/// them (entries towards other states are dropped) and the exit column.
fn dense_block(red: &Reduced, states: &[usize], mut rows: Option<&mut Vec<Vec<(usize, f64)>>>) -> Result<Vec<f64>> {
    let r = states.len();
    let mut loc = vec![usize::MAX; red.m];
    for (t, &s) in states.iter().enumerate() {
        loc[s] = t;
    }
    let size = r.checked_mul(r + 1).ok_or_else(|| Error::too_large("P", "dense block too large"))?;
    let mut a = crate::mem::filled(size, 0.0).map_err(|_| {
        Error::too_large("P", format!("the dense elimination block needs {r} x {r} doubles; not enough memory"))
    })?;
    for (t, &s) in states.iter().enumerate() {
        let mut put = |j: usize, v: f64| {
            let lj = loc[j];
            if lj != usize::MAX && lj != t {
                a[lj * r + t] += v;
            }
        };
        match rows.as_deref_mut() {
            None => {
                let (ix, vs) = red.row(s);
                for (&j, &v) in ix.iter().zip(vs) {
                    put(j, v);
                }
            }
            Some(rows) => {
                for &(j, v) in &rows[s] {
                    put(j, v);
                }
                rows[s] = Vec::new();
            }
        }
        a[r * r + t] = red.exit[s];
    }
    Ok(a)
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
    let DenseTail { states, a, npiv, .. } = &f.tail;
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

pub(crate) fn normalise(mut pi: Vec<f64>) -> Result<Vec<f64>> {
    let total: f64 = pi.iter().sum();
    if !(total > 0.0) || !total.is_finite() {
        return Err(Error::Numerical("stationary distribution underflowed or overflowed".into()));
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

    /// Unblocked right-looking GTH, the reference for the recursive elimination.
    fn naive(a: &mut [f64], r: usize, npiv: usize) -> Vec<f64> {
        let mut d = Vec::new();
        for p in 0..npiv {
            let mut s = a[r * r + p];
            for j in p + 1..r {
                s += a[j * r + p];
            }
            d.push(s);
            for i in p + 1..r {
                a[p * r + i] /= s;
            }
            for j in p + 1..=r {
                let u = a[j * r + p];
                for i in p + 1..r {
                    if i != j {
                        a[j * r + i] += a[p * r + i] * u;
                    }
                }
            }
        }
        d
    }

    #[test]
    fn recursive_dense_matches_unblocked() {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        for (r, npiv) in [(1, 1), (2, 1), (3, 3), (33, 33), (100, 99), (257, 200), (300, 300)] {
            let mut a = vec![0.0; r * (r + 1)];
            for j in 0..r {
                for i in 0..r {
                    if i != j && rnd() < 0.3 {
                        // some rare transitions
                        a[j * r + i] = if rnd() < 0.2 { 1e-15 * rnd() } else { rnd() };
                    }
                }
            }
            for i in 0..r {
                a[r * r + i] = if i % 5 == 0 { 0.01 } else { 1e-3 * rnd() };
            }
            let mut b = a.clone();
            let dn = naive(&mut b, r, npiv);
            let mut d = Vec::new();
            dense_eliminate(&mut a, r, npiv, &mut d).unwrap();
            for p in 0..npiv {
                assert!((d[p] - dn[p]).abs() <= 1e-13 * dn[p], "r {r} pivot {p}");
            }
            for j in 0..=r {
                for i in 0..r {
                    if i == j {
                        continue;
                    }
                    let (x, y) = (a[j * r + i], b[j * r + i]);
                    assert!((x - y).abs() <= 1e-12 * y.abs(), "r {r} ({i}, {j}): {x:e} vs {y:e}");
                }
            }
        }
    }
}
