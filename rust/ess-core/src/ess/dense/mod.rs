//! Dense ESS: singular values of every block `H_t = T[t:, :t]` of a dense causal operator.
//!
//! # Algorithm
//!
//! A naive loop computes one SVD of an `(L-t) x t` block per split, about `L^4/19` flops in
//! total, and re-reads the whole block each time. Here the blocks are never formed:
//!
//! * Only the strictly lower triangle of `T` enters any block; the diagonal and the upper
//!   triangle are never read.
//! * Splits with `t >= L/2` (fewer rows than columns) are swept with `t` increasing. The
//!   sweep carries an upper-triangular `k x k` factor `R_t` (`k = L - t`) with
//!   `R_t^T R_t = H_t H_t^T`, i.e. the same singular values as `H_t`. Going to `t + 1` drops a
//!   row of `H_t` (a column of `R`, restored to triangular form by `k` Givens rotations) and
//!   appends a column of `T` (a new row of `R`, rotated in by another `k` rotations): `O(k^2)`
//!   per split and orthogonal, so no Gram matrix is formed and small singular values are as
//!   accurate as a direct SVD gives them.
//! * Splits with `t < L/2` are the same computation on `J T^T J` (`J` the reversal), whose
//!   block at `L - t` is `J H_t^T J`.
//! * The two halves (and the operators of a batch) run in parallel on rayon.
//! * Per requested split, a Gram route answers first: the eigenvalues of the carried
//!   `G_t = H_t H_t^T` from the `symeig` module (blocked Householder tridiagonalisation, then
//!   root-free QL; values only, an interrupt check per panel), accepted where the squaring's
//!   rounding cannot change the count or the entropy beyond its bound. Otherwise, where a few
//!   singular values dominate the rest (near-uniform attention, randomly initialised heads),
//!   the deflated Gram route (the `deflate` module) takes them off the carried triangle by
//!   rotations and answers from the Gram matrix of what remains, with a posteriori intervals
//!   that must settle the split. Failing that, the singular values of the small triangle come
//!   from a single values-only SVD (no vectors): from order 16 the kernel's own (the `bidiag`
//!   module: blocked Householder bidiagonalisation with an interrupt check per panel, then
//!   the bidiagonal QR iteration), below it the library's. Once the Gram route misses, the
//!   splits up to the next retry are answered together (see `svd_batch`: the deflated
//!   route's eigensolves and the SVD's QR iterations each run several splits on the vector
//!   lanes), and the sweep goes back to the Gram route as soon as a split's spectrum shows
//!   that it would settle it.
//! * Rounding accumulates along a sweep; its size is tracked, and a block whose
//!   tolerance count could be changed by it (a singular value within the accumulated error
//!   of the threshold) is recomputed from a fresh QR of `H_t` (Givens rotations: a library
//!   Householder QR left errors of several `eps * sigma_max` on some rank-deficient blocks).
//! * Tolerance-ESS alone is counted without eigenvalues where the threshold lies above the
//!   squared route's noise floor: the count is the inertia of `G_t - tau^2 I` (an `L D L^T`
//!   factorisation with an a-posteriori backward-error bound), certified at both ends of the
//!   threshold's uncertainty; a positive definite certificate carries over to later splits of
//!   the sweep, since `lambda_min(G_t)` never decreases along it (interlacing). See the `inertia` module
//!   for the error bound that decides between this route and the accurate ones.
//! * Interrupts: every step of more than a few milliseconds checks for a pending request at a
//!   fine grain: the first Gram product of a sweep per 256 columns, the Householder QR per
//!   128-column panel, the eigensolver and the SVD per 32-column panel of their reductions, the
//!   tolerance route's `L D L^T` per 128-column panel, the Givens factor every 16 rows; all on
//!   the calling thread, so nothing is left running once the call has returned.
//! * Operators are rescaled by a power of two (exact) so that magnitudes from 1e-300 to
//!   1e300 neither overflow nor underflow; each block that the SVD route handles is
//!   rescaled again on its own.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, MatRef, Par};
use rayon::prelude::*;

pub(crate) mod bidiag;
mod deflate;
mod inertia;
mod symeig;

use deflate::Deflation;
use inertia::{inertia_route, InertiaOutcome, InertiaState};

use super::{entropy_ess, tolerance_count, Method, Tolerance};
use crate::error::{check_finite, checked_size, Error, Result};

/// Element types accepted by the dense kernel; computation is always in `f64`.
pub trait Scalar: Copy + Send + Sync + Into<f64> + 'static {
    /// Machine epsilon of the type (the default tolerance uses the input's precision).
    const EPS: f64;
}
impl Scalar for f32 {
    const EPS: f64 = f32::EPSILON as f64;
}
impl Scalar for f64 {
    const EPS: f64 = f64::EPSILON;
}

/// Options of [`dense_ess`].
#[derive(Clone, Debug)]
pub struct DenseOptions {
    pub method: Method,
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
    /// Split points to compute (strictly increasing, each in `0..L`); `None` for all `L`.
    pub positions: Option<Vec<usize>>,
}

impl Default for DenseOptions {
    fn default() -> Self {
        DenseOptions { method: Method::Both, atol: None, rtol: None, positions: None }
    }
}

/// ESS curves of a batch: row-major `(batch, n_positions)`.
#[derive(Clone, Debug, PartialEq)]
pub struct EssCurves {
    pub batch: usize,
    pub n_positions: usize,
    pub tolerance: Option<Vec<f64>>,
    pub entropy: Option<Vec<f64>>,
}

/// Check a `positions` list against the sequence length.
pub fn validate_positions(positions: &[usize], l: usize) -> Result<()> {
    for (i, &p) in positions.iter().enumerate() {
        if p >= l {
            return Err(Error::out_of_range(
                "positions",
                format!("positions[{i}] = {p} is outside [0, {l}) for sequence length L = {l}"),
            ));
        }
        if i > 0 && positions[i - 1] >= p {
            return Err(Error::out_of_range(
                "positions",
                format!(
                    "must be strictly increasing; positions[{}] = {} >= positions[{i}] = {p}",
                    i - 1,
                    positions[i - 1]
                ),
            ));
        }
    }
    Ok(())
}

/// The split points to compute: the given `positions` (checked against `L`), or all of `0..L`.
pub fn split_positions(positions: &Option<Vec<usize>>, l: usize) -> Result<Vec<usize>> {
    match positions {
        Some(p) => {
            validate_positions(p, l)?;
            Ok(p.clone())
        }
        None => Ok((0..l).collect()),
    }
}

/// Dense ESS of a batch of `L x L` causal operators stored contiguously (row-major,
/// `batch * L * L` values). Returns the requested curves, each `(batch, n_positions)`.
pub fn dense_ess<F: Scalar>(data: &[F], batch: usize, l: usize, opts: &DenseOptions) -> Result<EssCurves> {
    if l == 0 {
        return Err(Error::shape("T", "the operator is empty (L = 0)"));
    }
    let expected = checked_size("T", &[batch, l, l])?;
    if data.len() != expected {
        return Err(Error::shape("T", format!("expected {batch} x {l} x {l} = {expected} values, got {}", data.len())));
    }
    check_finite("T", data)?;
    let tol = Tolerance::new(opts.atol, opts.rtol, F::EPS)?;
    if batch == 0 {
        // Nothing to compute: no per-position storage either (L may be huge).
        if let Some(p) = &opts.positions {
            validate_positions(p, l)?;
        }
        let np = opts.positions.as_ref().map_or(l, |p| p.len());
        return Ok(EssCurves {
            batch,
            n_positions: np,
            tolerance: opts.method.wants_tolerance().then(Vec::new),
            entropy: opts.method.wants_entropy().then(Vec::new),
        });
    }
    let positions = split_positions(&opts.positions, l)?;
    let np = positions.len();
    let out_len = checked_size("T", &[batch, np])?;
    let want_tol = opts.method.wants_tolerance();
    let want_ent = opts.method.wants_entropy();
    let mut tol_out = if want_tol { vec![0.0; out_len] } else { Vec::new() };
    let mut ent_out = if want_ent { vec![0.0; out_len] } else { Vec::new() };

    if np > 0 && batch > 0 {
        check_memory(l, batch)?;
        let chunk = np;
        let ll = l * l;
        // Pair up the output rows so each operator owns its slices.
        let mut rows: Vec<(usize, Option<&mut [f64]>, Option<&mut [f64]>)> = Vec::with_capacity(batch);
        let mut tol_iter = if want_tol { Some(tol_out.chunks_mut(chunk)) } else { None };
        let mut ent_iter = if want_ent { Some(ent_out.chunks_mut(chunk)) } else { None };
        for b in 0..batch {
            let tr = tol_iter.as_mut().and_then(|it| it.next());
            let er = ent_iter.as_mut().and_then(|it| it.next());
            rows.push((b, tr, er));
        }
        rows.into_par_iter().try_for_each(|(b, tr, er)| {
            let op = &data[b * ll..(b + 1) * ll];
            one_operator(op, l, &tol, &positions, tr, er)
        })?;
    }
    Ok(EssCurves {
        batch,
        n_positions: np,
        tolerance: want_tol.then_some(tol_out),
        entropy: want_ent.then_some(ent_out),
    })
}

/// Bytes of working memory one operator needs: two `L x L` float64 copies (the operator
/// and its reversed transpose) and, per half (each a sweep), six `L/2 x L/2` buffers (the Gram
/// matrix and its eigensolver's copy, the carried factor and its column-major copy, the
/// deflated route's rotated triangle and Gram matrix), plus the factors that `svd_batch` keeps
/// for the deflated route's batched eigensolves (at most `GRAM_RETRY` of order
/// `DEFLATE_LANES_MAX` per sweep).
pub fn working_bytes(l: usize) -> Option<u64> {
    let l = l as u64;
    let kept = 2 * (GRAM_RETRY * DEFLATE_LANES_MAX * DEFLATE_LANES_MAX * 8) as u64;
    l.checked_mul(l)?.checked_mul(8 * 2 + 8 * 3)?.checked_add(kept)
}

/// Seconds one `n x n` float64 matrix product takes with faer on all rayon threads: a probe of
/// the machine's attainable floating-point rate (`2 n^3` flops), for benchmarks that report a
/// fraction of it.
pub fn matmul_probe_seconds(n: usize) -> f64 {
    let a = Mat::<f64>::from_fn(n, n, |i, j| ((i * 7 + j * 13) % 17) as f64 - 8.0);
    let mut c = Mat::<f64>::zeros(n, n);
    let start = std::time::Instant::now();
    faer::linalg::matmul::matmul(c.as_mut(), faer::Accum::Replace, a.as_ref(), a.as_ref(), 1.0, Par::rayon(0));
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(&c);
    secs
}

/// Memory the system reports as available (Linux `/proc/meminfo`), if known.
pub fn available_memory() -> Option<u64> {
    crate::mem::available()
}

/// Refuse, with a clear error, work whose buffers would not fit in memory (rather than
/// letting the allocator abort the process).
pub fn check_memory(l: usize, batch: usize) -> Result<()> {
    let in_flight = rayon::current_num_threads().min(batch).max(1) as u64;
    let need = working_bytes(l).and_then(|b| b.checked_mul(in_flight));
    let avail = available_memory();
    match (need, avail) {
        (None, _) => Err(Error::too_large("T", format!("L = {l}: working memory overflows the address space"))),
        (Some(n), Some(a)) if n > a => Err(Error::too_large(
            "T",
            format!(
                "L = {l} needs about {:.1} GiB of working memory ({in_flight} operators in flight) but {:.1} GiB is available; \
                 use fewer threads (RAYON_NUM_THREADS) or shorter sequences",
                n as f64 / (1u64 << 30) as f64,
                a as f64 / (1u64 << 30) as f64
            ),
        )),
        _ => Ok(()),
    }
}

/// Result slot for one split.
#[derive(Clone, Copy, Default)]
struct SplitResult {
    tol: f64,
    ent: f64,
}

fn one_operator<F: Scalar>(
    op: &[F],
    l: usize,
    tol: &Tolerance,
    positions: &[usize],
    tol_out: Option<&mut [f64]>,
    ent_out: Option<&mut [f64]>,
) -> Result<()> {
    let want_tol = tol_out.is_some();
    let want_ent = ent_out.is_some();
    let mut results = vec![SplitResult::default(); positions.len()];
    // Largest magnitude in the strictly lower triangle (the only part any block sees).
    let mut amax = 0.0f64;
    for i in 1..l {
        for j in 0..i {
            amax = amax.max(op[i * l + j].into().abs());
        }
    }
    if amax > 0.0 && l >= 2 {
        // Exact power-of-two rescaling to magnitude ~1.
        // Rescale only when the squares of the Gram route could overflow or underflow:
        // scaling down can flush the smallest subnormal entries to zero, so leave
        // moderate magnitudes alone (blocks whose squares underflow are rescaled on
        // their own by the SVD route).
        let e = if amax.log2().abs() <= 500.0 { 0 } else { pow2_exponent(amax) };
        let tol_s = tol.scaled_pow2(e);
        // a: the operator; b: its reversed transpose J T^T J.
        let mut a = vec![0.0f64; l * l];
        let mut bt = vec![0.0f64; l * l];
        for i in 1..l {
            for j in 0..i {
                let v = mul_pow2(op[i * l + j].into(), e);
                a[i * l + j] = v;
                bt[(l - 1 - j) * l + (l - 1 - i)] = v;
            }
        }
        // Output index of each split point.
        let mut slot = vec![usize::MAX; l];
        for (idx, &p) in positions.iter().enumerate() {
            slot[p] = idx;
        }
        let half_hi = l.div_ceil(2); // first t with L - t <= t
                                     // Splits t >= ceil(L/2) from `a`; splits t < ceil(L/2) as t' = L - t > floor(L/2) from `bt`.
        let hi_targets: Vec<(usize, usize)> =
            (half_hi..l).filter(|&t| slot[t] != usize::MAX).map(|t| (t, slot[t])).collect();
        let lo_targets: Vec<(usize, usize)> =
            (1..half_hi).rev().filter(|&t| slot[t] != usize::MAX).map(|t| (l - t, slot[t])).collect();
        let (r1, r2) = rayon::join(
            || sweep(&a, l, &hi_targets, &tol_s, want_tol, want_ent),
            || sweep(&bt, l, &lo_targets, &tol_s, want_tol, want_ent),
        );
        for (idx, r) in r1?.into_iter().chain(r2?) {
            results[idx] = r;
        }
    }
    if let Some(out) = tol_out {
        for (o, r) in out.iter_mut().zip(&results) {
            *o = r.tol;
        }
    }
    if let Some(out) = ent_out {
        for (o, r) in out.iter_mut().zip(&results) {
            *o = r.ent;
        }
    }
    Ok(())
}

/// `x * 2^e` without intermediate overflow of `2^e` (exact unless the result under/overflows).
pub(crate) fn mul_pow2(x: f64, e: i32) -> f64 {
    let mut x = x;
    let mut e = e;
    while e != 0 {
        let step = e.clamp(-1000, 1000);
        // 2^step, exactly, from its bits (a normal number for |step| <= 1000; `powi` here was a
        // library call per entry).
        x *= f64::from_bits(((step + 1023) as u64) << 52);
        e -= step;
    }
    x
}

/// The exponent `e` that brings `amax * 2^e` near 1 (0 for `amax == 0`).
pub(crate) fn pow2_exponent(amax: f64) -> i32 {
    if amax > 0.0 {
        -(amax.log2().round() as i32)
    } else {
        0
    }
}

/// Givens rotation `(c, s)` with `[c s; -s c] [x; y] = [r; 0]`.
#[inline(always)]
fn givens(x: f64, y: f64) -> (f64, f64, f64) {
    if y == 0.0 {
        (1.0, 0.0, x)
    } else {
        let r = x.hypot(y);
        (x / r, y / r, r)
    }
}

#[inline(always)]
fn rotate(u: &mut [f64], v: &mut [f64], c: f64, s: f64) {
    for (x, y) in u.iter_mut().zip(v.iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a + s * b;
        *y = c * b - s * a;
    }
}

/// Rotate the row vector `c` (length `k`) into the upper-triangular `k x k` factor stored
/// row-major with stride `k0`, logical `R(i, j)` at `buf[i * k0 + off + j]` (`c` is zeroed).
#[inline]
fn rotate_row_in(buf: &mut [f64], k0: usize, off: usize, k: usize, c: &mut [f64]) {
    for j in 0..k {
        if c[j] == 0.0 {
            continue;
        }
        let row = &mut buf[j * k0 + off + j..j * k0 + off + k];
        let (cs, sn, r) = givens(row[0], c[j]);
        if sn != 0.0 {
            rotate(&mut row[1..], &mut c[j + 1..], cs, sn);
        }
        row[0] = r;
        c[j] = 0.0;
    }
}

/// The power-of-two exponent that brings the largest entry of the block `H_t = A[t:, :t]`
/// near 1 (exact rescaling, so a block far below the operator's scale keeps full precision).
fn block_exponent(a: &[f64], l: usize, t: usize) -> i32 {
    let mut bmax = 0.0f64;
    for j in 0..l - t {
        for &v in &a[(t + j) * l..(t + j) * l + t] {
            bmax = bmax.max(v.abs());
        }
    }
    pow2_exponent(bmax)
}

/// Carried triangular factor of `K_t = (A[t:, :t])^T` (`t x k`, `k = L - t <= t`).
struct Carried {
    /// Row-major storage `k0 x k0`; logical `R(i, j)` lives at `buf[i * k0 + off + j]`.
    buf: Vec<f64>,
    k0: usize,
    off: usize,
    /// Current size `k = L - t`.
    k: usize,
    /// Running estimate of the rounding error accumulated in `R` (absolute, 2-norm scale).
    err: f64,
    /// `R` is the factor of `2^exp2 * K_t`.
    exp2: i32,
}

impl Carried {
    /// Fresh factor at split `t`: the rows of `K_t` rotated one by one into an upper-triangular
    /// `R` by Givens rotations (an orthogonal QR, backward stable with a small constant), with
    /// the block rescaled by an exact power of two of its own (so a block far smaller than the
    /// operator's largest entries keeps full precision instead of underflowing).
    ///
    /// A library Householder QR was used here before; on some rank-deficient blocks its `R`
    /// carried an error of several `eps * sigma_max` (a 7 x 5 rank-3 block came out with
    /// `sigma_4 ~ 7 eps sigma_max` where the exact value and LAPACK's are below `1.5 eps
    /// sigma_max`), enough to push rounding noise over the default threshold. The rotations
    /// are the same as the sweep's own row updates, whose rounding is tracked in `err`.
    fn fresh(a: &[f64], l: usize, t: usize) -> Result<Self> {
        let k = l - t;
        let e = block_exponent(a, l, t);
        let mut buf = vec![0.0; k * k];
        let mut row = vec![0.0; k];
        // Row i of K_t is column i of H_t: (A[t + j, i])_j.
        for i in 0..t {
            if i % 16 == 0 {
                crate::interrupt::check()?;
            }
            for (j, r) in row.iter_mut().enumerate() {
                *r = mul_pow2(a[(t + j) * l + i], e);
            }
            rotate_row_in(&mut buf, k, 0, k, &mut row);
        }
        let fro2: f64 = buf.iter().map(|x| x * x).sum();
        let err = 4.0 * f64::EPSILON * (t as f64).sqrt() * fro2.sqrt();
        Ok(Carried { buf, k0: k, off: 0, k, err, exp2: e })
    }

    /// Fresh factor by the library's blocked Householder QR: faster than [`Carried::fresh`] on
    /// large blocks, but its rounding can reach several `eps * sigma_max`, so its singular values
    /// only decide counts far from the threshold (see [`fresh_sigma`]).
    fn fresh_householder(a: &[f64], l: usize, t: usize) -> Result<Self> {
        use faer::linalg::householder::{
            apply_block_householder_sequence_transpose_on_the_left_in_place_scratch as apply_scratch,
            apply_block_householder_sequence_transpose_on_the_left_in_place_with_conj as apply,
        };
        use faer::linalg::qr::no_pivoting::factor::{qr_in_place, qr_in_place_scratch};
        let k = l - t;
        let e = block_exponent(a, l, t);
        let mut kmat = Mat::<f64>::from_fn(t, k, |i, j| mul_pow2(a[(t + j) * l + i], e));
        // Blocked by panels of QR_PANEL columns (each panel's QR, then its block reflector on
        // the columns right of it), with an interrupt check per panel.
        let nb = QR_PANEL.min(k.max(1));
        let req = faer::dyn_stack::StackReq::any_of(&[
            qr_in_place_scratch::<f64>(t, nb, nb, Par::Seq, Default::default()),
            apply_scratch::<f64>(t, nb, k),
        ]);
        let mut mem = MemBuffer::new(req);
        let mut qc = Mat::<f64>::zeros(nb, nb);
        let mut p0 = 0;
        while p0 < k.min(t) {
            crate::interrupt::check()?;
            let w = nb.min(k - p0).min(t - p0);
            let (mut left, right) = kmat.as_mut().submatrix_mut(p0, p0, t - p0, k - p0).split_at_col_mut(w);
            let mut q = qc.as_mut().submatrix_mut(0, 0, w, w);
            let stack = MemStack::new(&mut mem);
            qr_in_place(left.as_mut(), q.as_mut(), Par::Seq, stack, Default::default());
            if right.ncols() > 0 {
                apply(left.as_ref(), q.as_ref(), faer::Conj::No, right, Par::Seq, MemStack::new(&mut mem));
            }
            p0 += w;
        }
        let r = kmat.as_ref();
        let mut buf = vec![0.0; k * k];
        let mut fro2 = 0.0;
        for i in 0..k.min(t) {
            for j in i..k {
                let v = r[(i, j)];
                buf[i * k + j] = v;
                fro2 += v * v;
            }
        }
        let err = 4.0 * f64::EPSILON * (t as f64).sqrt() * fro2.sqrt();
        Ok(Carried { buf, k0: k, off: 0, k, err, exp2: e })
    }

    /// Advance from split `t` to `t + 1`.
    fn advance(&mut self, a: &[f64], l: usize, t: usize) {
        let k = self.k;
        let k0 = self.k0;
        // 1. drop the first column: upper Hessenberg k x (k-1), rotate rows j, j+1.
        self.off += 1;
        let off = self.off;
        let mut fro2 = 0.0;
        for j in 0..k - 1 {
            let (head, tail) = self.buf.split_at_mut((j + 1) * k0);
            let row_j = &mut head[j * k0 + off + j..j * k0 + off + k - 1];
            let row_j1 = &mut tail[off + j..off + k - 1];
            let (c, s, r) = givens(row_j[0], row_j1[0]);
            if s != 0.0 {
                rotate(&mut row_j[1..], &mut row_j1[1..], c, s);
            }
            row_j[0] = r;
            row_j1[0] = 0.0;
        }
        // The last row (k-1) is now zero in the logical columns: drop it.
        let k = k - 1;
        self.k = k;
        // 2. append the row c_j = A[t + 1 + j, t], j < k, and rotate it in.
        let mut cvec: Vec<f64> = (0..k).map(|j| mul_pow2(a[(t + 1 + j) * l + t], self.exp2)).collect();
        rotate_row_in(&mut self.buf, k0, off, k, &mut cvec);
        for j in 0..k {
            fro2 += self.buf[j * k0 + off + j..j * k0 + off + k].iter().map(|x| x * x).sum::<f64>();
        }
        // Each entry took part in a few rotations; model the rounding as a random walk.
        let step = 3.0 * f64::EPSILON * fro2.sqrt();
        self.err = (self.err * self.err + step * step).sqrt();
    }

    fn max_abs(&self) -> f64 {
        let mut m = 0.0f64;
        for i in 0..self.k {
            for &v in &self.buf[i * self.k0 + self.off + i..i * self.k0 + self.off + self.k] {
                m = m.max(v.abs());
            }
        }
        m
    }

    fn as_mat(&self) -> Mat<f64> {
        let k = self.k;
        Mat::from_fn(k, k, |i, j| if j >= i { self.buf[i * self.k0 + self.off + j] } else { 0.0 })
    }

    /// The factor column-major into `out` (`k * k` values, zeros below the diagonal), as
    /// [`singular_values`] copies [`Carried::as_mat`].
    fn column_major_into(&self, out: &mut Vec<f64>) {
        let k = self.k;
        out.clear();
        out.resize(k * k, 0.0);
        for i in 0..k {
            let row = &self.buf[i * self.k0 + self.off..i * self.k0 + self.off + k];
            for j in i..k {
                out[j * k + i] = row[j];
            }
        }
    }
}

/// Columns of the block per interrupt check in the first Gram product of a sweep.
const GRAM_CHUNK: usize = 256;

/// Panel width of the blocked Householder QR of a fresh factor (one interrupt check per panel).
const QR_PANEL: usize = 128;

/// Order from which [`singular_values`] uses the kernel's own interruptible SVD (`bidiag`)
/// instead of the library's (faster from order 16 up: 1.24x at 16, 1.4x at 32, 2.5x at 128,
/// about 3x at 256 to 512 on triangular factors).
const OWN_SVD_MIN: usize = 16;

/// Values-only SVD of a small square matrix, sequential (the caller is already parallel).
/// Returned in non-increasing order.
///
/// From order [`OWN_SVD_MIN`] on, the kernel's own blocked bidiagonalisation (the `bidiag`
/// module) runs on the calling thread and checks for an interrupt per panel, so that a
/// request stops it within a few milliseconds and no work is left running; it is also faster
/// than the library SVD. Below that order the library SVD costs microseconds. Should the own
/// route fail to converge (not seen), the library SVD answers.
fn singular_values(m: MatRef<'_, f64>) -> Result<Vec<f64>> {
    let n = m.nrows();
    if n < OWN_SVD_MIN || m.ncols() != n {
        return svd_values(m);
    }
    crate::interrupt::check()?;
    let mut a = vec![0.0; n * n];
    for j in 0..n {
        for (i, v) in a[j * n..(j + 1) * n].iter_mut().enumerate() {
            *v = m[(i, j)];
        }
    }
    match bidiag::singular_values(&mut a, n) {
        Err(Error::Numerical(_)) => svd_values(m),
        r => r,
    }
}

/// [`singular_values`] on the calling thread.
fn svd_values(m: MatRef<'_, f64>) -> Result<Vec<f64>> {
    let n = m.nrows();
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut s = faer::diag::Diag::<f64>::zeros(n);
    let par = Par::Seq;
    let scratch = faer::linalg::svd::svd_scratch::<f64>(
        n,
        n,
        faer::linalg::svd::ComputeSvdVectors::No,
        faer::linalg::svd::ComputeSvdVectors::No,
        par,
        Default::default(),
    );
    let mut mem = MemBuffer::new(scratch);
    faer::linalg::svd::svd(m, s.as_mut(), None, None, par, MemStack::new(&mut mem), Default::default())
        .map_err(|e| Error::Numerical(format!("SVD did not converge: {e:?}")))?;
    let mut v: Vec<f64> = s.column_vector().iter().map(|x| x.abs()).collect();
    v.sort_by(|x, y| y.total_cmp(x));
    Ok(v)
}

/// Gram matrix `G_t = H_t H_t^T` (`k x k`, `k = L - t`), carried along the sweep:
/// `G_{t+1} = G_t[1:, 1:] + c c^T` with `c = A[t+1:, t]`. Only sums of products, no
/// cancellation beyond the summation's own rounding.
struct Gram {
    /// `k0 x k0` row-major; logical `G(i, j)` at `buf[(i + off) * k0 + j + off]`, lower triangle kept.
    buf: Vec<f64>,
    k0: usize,
    off: usize,
    k: usize,
    /// Reusable workspace of the eigensolver.
    work: Vec<f64>,
    /// Approximate top eigenvector (unit, length `k` or empty), the warm start of the power
    /// iterations of the inertia route; shifted along with `G`.
    top: Vec<f64>,
}

impl Gram {
    fn fresh(a: &[f64], l: usize, t: usize) -> Result<Self> {
        use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
        let k = l - t;
        let h = MatRef::from_row_major_slice(&a[t * l..], k, l).subcols(0, t);
        let mut g = Mat::<f64>::zeros(k, k);
        // Lower triangle only, summed over chunks of GRAM_CHUNK columns of H with an interrupt
        // check per chunk.
        let mut c0 = 0;
        while c0 < t {
            crate::interrupt::check()?;
            let w = GRAM_CHUNK.min(t - c0);
            let hc = h.subcols(c0, w);
            let (lower, rect) = (BlockStructure::TriangularLower, BlockStructure::Rectangular);
            tri_matmul(g.as_mut(), lower, faer::Accum::Add, hc, rect, hc.transpose(), rect, 1.0, Par::Seq);
            c0 += w;
        }
        let mut buf = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..=i {
                buf[i * k + j] = g[(i, j)];
            }
        }
        Ok(Gram { buf, k0: k, off: 0, k, work: Vec::new(), top: Vec::new() })
    }

    fn advance(&mut self, a: &[f64], l: usize, t: usize) {
        self.off += 1;
        self.k -= 1;
        let (k, k0, off) = (self.k, self.k0, self.off);
        let c: Vec<f64> = (0..k).map(|j| a[(t + 1 + j) * l + t]).collect();
        if !self.top.is_empty() {
            self.top.remove(0);
        }
        for i in 0..k {
            let ci = c[i];
            if ci != 0.0 {
                let row = &mut self.buf[(i + off) * k0 + off..(i + off) * k0 + off + i + 1];
                for (g, &cj) in row.iter_mut().zip(&c[..=i]) {
                    *g += ci * cj;
                }
            }
        }
    }

    fn to_mat(&self, shift: f64) -> Mat<f64> {
        let (k, k0, off) = (self.k, self.k0, self.off);
        Mat::<f64>::from_fn(k, k, |i, j| {
            let (i, j) = if i >= j { (i, j) } else { (j, i) };
            let g = self.buf[(i + off) * k0 + j + off];
            if i == j {
                g - shift
            } else {
                g
            }
        })
    }

    /// `y = G x` from the stored lower triangle.
    fn symv(&self, x: &[f64], y: &mut [f64]) {
        let (k, k0, off) = (self.k, self.k0, self.off);
        y[..k].iter_mut().for_each(|v| *v = 0.0);
        for i in 0..k {
            let row = &self.buf[(i + off) * k0 + off..(i + off) * k0 + off + i + 1];
            let xi = x[i];
            // Dot product of the row with x (four accumulators, so that it vectorises) and the
            // transposed contribution y[..i] += row[..i] * x_i.
            let mut acc = [0.0f64; 4];
            let (rc, rr) = row[..i].split_at(i - i % 4);
            let (xc, xr) = x[..i].split_at(i - i % 4);
            for (g, v) in rc.chunks_exact(4).zip(xc.chunks_exact(4)) {
                for q in 0..4 {
                    acc[q] += g[q] * v[q];
                }
            }
            let mut dot = (acc[0] + acc[1]) + (acc[2] + acc[3]);
            for (g, v) in rr.iter().zip(xr) {
                dot += g * v;
            }
            for (yj, g) in y[..i].iter_mut().zip(&row[..i]) {
                *yj += g * xi;
            }
            y[i] += dot + row[i] * xi;
        }
    }

    /// Frobenius norm (an upper bound of the largest eigenvalue).
    fn frobenius(&self) -> f64 {
        let (k, k0, off) = (self.k, self.k0, self.off);
        let mut s = 0.0;
        for i in 0..k {
            let row = &self.buf[(i + off) * k0 + off..(i + off) * k0 + off + i + 1];
            for (j, &g) in row.iter().enumerate() {
                s += if j == i { g * g } else { 2.0 * g * g };
            }
        }
        s.sqrt()
    }

    /// Eigenvalues, non-increasing, by the interruptible solver of the `symeig` module (a
    /// pending interrupt is seen within one panel of its reduction).
    fn eigenvalues(&mut self) -> Result<Vec<f64>> {
        let form = self.tridiagonal_form()?;
        let mut v = symeig::eigenvalues_of_form(form)?;
        v.sort_by(|x, y| y.total_cmp(x));
        Ok(v)
    }

    /// Eigenvalues (non-increasing) of `G` at each of the splits `ts` (increasing, from `*tg`
    /// on; `G` advances to the last and `*tg` with it), their QL iterations run together on the
    /// vector lanes ([`symeig::eigenvalues_of_forms`]). One result per split; only an interrupt
    /// is returned as an error of the whole.
    fn eigenvalues_ahead(
        &mut self,
        a: &[f64],
        l: usize,
        tg: &mut usize,
        ts: impl Iterator<Item = usize>,
    ) -> Result<Vec<Result<Vec<f64>>>> {
        // Per split, its form's place in the batch, or the error of its reduction.
        let mut forms = Vec::new();
        let mut slots: Vec<std::result::Result<(), Error>> = Vec::new();
        for tj in ts {
            while *tg < tj {
                self.advance(a, l, *tg);
                *tg += 1;
            }
            match self.tridiagonal_form() {
                Ok(f) => {
                    forms.push(f);
                    slots.push(Ok(()));
                }
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(e) => slots.push(Err(e)),
            }
        }
        let mut values = symeig::eigenvalues_of_forms(forms).into_iter();
        Ok(slots
            .into_iter()
            .map(|slot| {
                let mut v = slot.and_then(|()| values.next().unwrap_or_else(|| Err(no_eigenvalues())))?;
                v.sort_by(|x, y| y.total_cmp(x));
                Ok(v)
            })
            .collect())
    }

    /// The tridiagonal form of `G_t` (see [`symeig::tridiagonal_form`]).
    fn tridiagonal_form(&mut self) -> Result<symeig::TridiagonalForm> {
        let (k, k0, off) = (self.k, self.k0, self.off);
        // Column-major lower triangle of G: column j holds G(j.., j), i.e. the stored row-major
        // lower triangle read down its columns.
        let mut work = std::mem::take(&mut self.work);
        work.clear();
        work.resize(k * k, 0.0);
        for i in 0..k {
            let row = &self.buf[(i + off) * k0 + off..(i + off) * k0 + off + i + 1];
            for (j, &g) in row.iter().enumerate() {
                work[j * k + i] = g;
            }
        }
        let res = symeig::tridiagonal_form(&mut work, k);
        self.work = work;
        res
    }
}

/// A batched Gram-route result that is missing (not expected): the split takes the SVD routes.
fn no_eigenvalues() -> Error {
    Error::Numerical("Gram route: no eigenvalues for this split".into())
}

/// Relative accuracy demanded of entropy-ESS from the Gram route before it is trusted.
const ENTROPY_RTOL: f64 = 1e-7;

/// Try to answer from the Gram eigenvalues `lam` (non-increasing). Squaring limits their
/// resolution to about `sqrt(err)`; return `None` when that could change the tolerance
/// count or move the entropy-ESS by more than [`ENTROPY_RTOL`] (relative).
fn gram_route(lam: &[f64], t: usize, k: usize, tol: &Tolerance, want_tol: bool, want_ent: bool) -> Option<SplitResult> {
    let lmax = lam.first().copied().unwrap_or(0.0).max(0.0);
    if lmax < 1e-200 {
        // A zero or tiny block: its squares may have underflowed. The SVD route rescales
        // the block on its own and decides.
        return None;
    }
    // Rounding of the accumulated sums (t terms each) and of the eigensolver.
    let err = 2.0 * f64::EPSILON * (t + k) as f64 * lmax;
    let sigma: Vec<f64> = lam.iter().map(|&x| x.max(0.0).sqrt()).collect();
    let lo: Vec<f64> = lam.iter().map(|&x| (x - err).max(0.0).sqrt()).collect();
    let hi: Vec<f64> = lam.iter().map(|&x| (x + err).sqrt()).collect();
    settle(&sigma, &lo, &hi, 0.0, t, k, tol, want_tol, want_ent)
}

/// Results from singular values `sigma` (non-increasing), each known only to lie in
/// `[lo_i, hi_i]` (and, for the count, within a further `slack` of that); `None` when the
/// uncertainty could change the tolerance count or move the entropy-ESS by more than
/// [`ENTROPY_RTOL`] (relative).
#[allow(clippy::too_many_arguments)]
fn settle(
    sigma: &[f64],
    lo: &[f64],
    hi: &[f64],
    slack: f64,
    t: usize,
    k: usize,
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
) -> Option<SplitResult> {
    let smax = sigma.first().copied().unwrap_or(0.0);
    let mut r = SplitResult::default();
    if want_tol {
        let tau = tol.threshold(smax, k, t);
        let c_lo = lo.iter().filter(|&&x| x - slack > tau).count();
        let c_hi = hi.iter().filter(|&&x| x + slack > tau).count();
        if c_lo != c_hi {
            return None;
        }
        r.tol = c_lo as f64;
    }
    if want_ent {
        let s: f64 = sigma.iter().sum();
        let ent = entropy_ess(sigma);
        let h = ent.ln();
        // First-order bound on |d ln(ESS)| = |dH| from the uncertainty of each sigma.
        let mut bound = 0.0;
        for (&a, &b) in lo.iter().zip(hi) {
            let delta = b - a;
            if delta > 0.0 {
                let p = (b / s).max(f64::MIN_POSITIVE);
                bound += delta / s * ((p.ln()).abs() + h.abs() + 1.0);
            }
        }
        if bound.is_nan() || bound > ENTROPY_RTOL {
            return None;
        }
        r.ent = ent;
    }
    Some(r)
}

/// Singular values of `H_t` (of `2^exp2 * H_t`) from a fresh triangular factor, returned with
/// the factor. The fast Householder factor answers unless a tolerance count is wanted and one of
/// its singular values lies within `8 * max(t, k) * eps * sigma_max` of the threshold (the
/// range its rounding was seen to reach, with margin); then the Givens factor, whose rounding
/// is a small multiple of `eps * sigma_max` like LAPACK's, decides.
///
/// `householder`: that fast factor, if the caller has it already.
fn fresh_sigma(
    a: &[f64],
    l: usize,
    t: usize,
    tol: &Tolerance,
    want_tol: bool,
    householder: Option<Carried>,
) -> Result<(Carried, Vec<f64>)> {
    let k = l - t;
    let c = match householder {
        Some(c) => c,
        None => Carried::fresh_householder(a, l, t)?,
    };
    let first = match singular_values(c.as_mat().as_ref()) {
        Err(Error::Interrupted) => return Err(Error::Interrupted),
        r => r.ok(),
    };
    if let Some(sigma) = first {
        let smax = sigma.first().copied().unwrap_or(0.0);
        let tau = tol.scaled_pow2(c.exp2).threshold(smax, k, t);
        let band = 8.0 * (t.max(k) as f64) * f64::EPSILON * smax + c.err;
        // Entropy-ESS alone moves by O(eps) relative under that rounding: no count to protect.
        if !want_tol || (smax > 0.0 && sigma.iter().all(|&s| (s - tau).abs() > band)) {
            return Ok((c, sigma));
        }
    }
    let c = Carried::fresh(a, l, t)?;
    let sigma = singular_values(c.as_mat().as_ref())?;
    Ok((c, sigma))
}

/// The result of a split that another route answered with the singular values `sigma` (of
/// `2^exp2 * H_t`; thresholds are rescaled to match), and whether the Gram route would have
/// settled it (the same test on `sigma^2`), in which case the sweep goes back to it. Where the
/// deflated route is off, it chooses its directions from this spectrum.
#[allow(clippy::too_many_arguments)]
fn answer_from_sigma(
    defl: &mut Deflation,
    sigma: &[f64],
    exp2: i32,
    t: usize,
    k: usize,
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
) -> (SplitResult, bool) {
    let lam: Vec<f64> = sigma
        .iter()
        .map(|&x| {
            let v = mul_pow2(x, -exp2);
            v * v
        })
        .collect();
    if !defl.active() {
        defl.choose(&lam);
    }
    let gram_again = gram_route(&lam, t, k, tol, want_tol, want_ent).is_some();
    let smax = sigma.first().copied().unwrap_or(0.0);
    let scaled = tol.scaled_pow2(exp2);
    let result = SplitResult {
        tol: if want_tol { tolerance_count(sigma, scaled.threshold(smax, k, t)) as f64 } else { 0.0 },
        ent: if want_ent { entropy_ess(sigma) } else { 0.0 },
    };
    (result, gram_again)
}

/// The deflated Gram route (see the `deflate` module) on the carried factor at split `t`: its
/// singular values where their intervals settle the split (the factor's accumulated rounding
/// counted against the tolerance count as in the SVD route); otherwise `None`, and the route
/// stays off until the Gram route chooses it again. `in_range`: whether the factor's entries
/// lie in `[1e-150, 1e150]` (the route runs only then). `buf` is left holding the factor
/// column-major (see [`Carried::column_major_into`]) whenever the route ran.
#[allow(clippy::too_many_arguments)]
fn deflated_sigma(
    defl: &mut Deflation,
    c: &Carried,
    in_range: bool,
    fresh_householder: bool,
    buf: &mut Vec<f64>,
    t: usize,
    k: usize,
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
) -> Result<Option<Vec<f64>>> {
    if !defl.active() || k < OWN_SVD_MIN || !in_range {
        return Ok(None);
    }
    c.column_major_into(buf);
    let Some(d) = defl.values(buf, k)? else {
        return Ok(None);
    };
    let tol = tol.scaled_pow2(c.exp2);
    // A fresh Householder factor: the wider band of `fresh_sigma`.
    let smax = d.sigma.first().copied().unwrap_or(0.0);
    let slack = c.err + if fresh_householder { 8.0 * (t.max(k) as f64) * f64::EPSILON * smax } else { 0.0 };
    if settle(&d.sigma, &d.lo, &d.hi, slack, t, k, &tol, want_tol, want_ent).is_some() {
        defl.settled();
        Ok(Some(d.sigma))
    } else {
        defl.stop();
        Ok(None)
    }
}

/// Largest order at which [`svd_batch`] runs the deflated route's eigensolves together on the
/// vector lanes (each waiting split keeps a copy of its factor; above this order the QL
/// iteration is a negligible part of a split and each runs on its own).
const DEFLATE_LANES_MAX: usize = 512;

/// Test hook: how many runs [`svd_batch`] has answered (all threads).
#[cfg(test)]
static SVD_BATCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// After repeated misses, the Gram route is tried again at every `GRAM_RETRY`-th target only.
const GRAM_RETRY: usize = 16;

/// The SVD route for a run of consecutive targets `batch` (increasing `t`, from `*t` on) with
/// the carried factor `c`: per split, the factor advanced to it and reduced to bidiagonal form
/// (`bidiag::scaled_bidiagonal`), then the QR iterations of all the forms together on vector
/// lanes (`bidiag::values_of_forms`: each split's values are those of [`singular_values`] on the
/// factor, bit for bit). A split that the carried factor cannot settle (its entries out of
/// range, or a count within its accumulated rounding of the threshold) is recomputed from a
/// fresh factor, as in [`sweep`]; the last such factor, advanced to the end of the run, then
/// replaces the carried one. `*t` and `c` end at the last target. Also returned: whether the
/// Gram route would have settled the last split (see [`answer_from_sigma`]).
#[allow(clippy::too_many_arguments)]
fn svd_batch(
    a: &[f64],
    l: usize,
    batch: &[(usize, usize)],
    t: &mut usize,
    c: &mut Carried,
    defl: &mut Deflation,
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
) -> Result<(Vec<(usize, SplitResult)>, bool)> {
    enum Item {
        /// The next of the bidiagonal forms.
        Form,
        Sigma(Vec<f64>),
        Fresh,
        /// The deflated route, waiting for the eigenvalues of the next of its forms; with the
        /// factor (column-major) for the SVD route, should they not settle the split.
        Deflated(deflate::Prepared, Vec<f64>),
    }
    #[cfg(test)]
    SVD_BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut forms = Vec::new();
    let mut dforms = Vec::new();
    let mut items = Vec::with_capacity(batch.len());
    let mut buf = Vec::new();
    for &(target, _) in batch {
        while *t < target {
            c.advance(a, l, *t);
            *t += 1;
        }
        let k = l - *t;
        let fresh_here = c.k0 == k;
        let in_range = (1e-150..=1e150).contains(&c.max_abs());
        let mut deflated = None;
        if defl.active() && defl.proven() && (OWN_SVD_MIN..=DEFLATE_LANES_MAX).contains(&k) && in_range {
            c.column_major_into(&mut buf);
            if let Some((p, f)) = defl.prepare(&buf, k)? {
                dforms.push(f);
                deflated = Some(Item::Deflated(p, buf.clone()));
            }
        }
        let item = if let Some(item) = deflated {
            item
        } else if !fresh_here && !in_range {
            Item::Fresh
        } else if k < OWN_SVD_MIN {
            match singular_values(c.as_mat().as_ref()) {
                Ok(s) => Item::Sigma(s),
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(_) => Item::Fresh,
            }
        } else if let Some(s) = deflated_sigma(defl, c, in_range, false, &mut buf, *t, k, tol, want_tol, want_ent)? {
            Item::Sigma(s)
        } else {
            c.column_major_into(&mut buf);
            match bidiag::scaled_bidiagonal(&mut buf, k) {
                Ok(Some(f)) => {
                    forms.push(f);
                    Item::Form
                }
                Ok(None) => Item::Sigma(vec![0.0; k]),
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                // (as `singular_values`: the library SVD answers)
                Err(_) => match svd_values(c.as_mat().as_ref()) {
                    Ok(s) => Item::Sigma(s),
                    Err(_) => Item::Fresh,
                },
            }
        };
        items.push((item, c.err, fresh_here));
    }
    crate::interrupt::check()?;
    let mut values = bidiag::values_of_forms(&forms).into_iter();
    let mut dvalues = symeig::eigenvalues_of_forms(dforms).into_iter();
    let mut out = Vec::with_capacity(batch.len());
    let mut last_fresh: Option<(Carried, usize)> = None;
    let mut gram_again = false;
    for (&(target, slot), (item, err, fresh_here)) in batch.iter().zip(items) {
        let k = l - target;
        let sigma = match item {
            Item::Form => match values.next() {
                Some(Ok(s)) => Some(s),
                // (as `singular_values`: the library SVD of the factor would answer; the factor
                // has moved on, so a fresh one does)
                _ => None,
            },
            Item::Sigma(s) => Some(s),
            Item::Fresh => None,
            Item::Deflated(p, factor) => {
                let scaled = tol.scaled_pow2(c.exp2);
                let settled = match dvalues.next() {
                    Some(Ok(lam)) => p.finish(lam).filter(|d| {
                        settle(&d.sigma, &d.lo, &d.hi, err, target, k, &scaled, want_tol, want_ent).is_some()
                    }),
                    _ => None,
                };
                match settled {
                    Some(d) => Some(d.sigma),
                    None => {
                        defl.stop();
                        match singular_values(MatRef::from_column_major_slice(&factor, k, k)) {
                            Ok(s) => Some(s),
                            Err(Error::Interrupted) => return Err(Error::Interrupted),
                            Err(_) => None,
                        }
                    }
                }
            }
        };
        let sigma = sigma.filter(|sigma| {
            let smax = sigma.first().copied().unwrap_or(0.0);
            let tau = tol.scaled_pow2(c.exp2).threshold(smax, k, target);
            let ambiguous = want_tol && sigma.iter().any(|&s| (s - tau).abs() <= err);
            !ambiguous || fresh_here
        });
        let (sigma, scale) = match sigma {
            Some(sigma) => (sigma, c.exp2),
            None => {
                let (fresh, sigma) = fresh_sigma(a, l, target, tol, want_tol, None)?;
                let scale = fresh.exp2;
                last_fresh = Some((fresh, target));
                (sigma, scale)
            }
        };
        let (result, again) = answer_from_sigma(defl, &sigma, scale, target, k, tol, want_tol, want_ent);
        gram_again = again;
        out.push((slot, result));
    }
    if let Some((mut fresh, mut tf)) = last_fresh {
        while tf < *t {
            fresh.advance(a, l, tf);
            tf += 1;
        }
        *c = fresh;
    }
    Ok((out, gram_again))
}

/// Sweep `t` upward over the requested `targets` (`(t, output slot)`, increasing `t`, each
/// with `L - t <= t`), returning the result of each slot.
///
/// Per split, the Gram route runs first (one symmetric eigensolve of the carried `G_t`, by the
/// `symeig` module, which checks for an interrupt per panel of its reduction);
/// when its squared resolution cannot settle the answer, the split is recomputed from the
/// singular values of a triangular factor of `H_t` (fresh QR, or the carried factor once
/// fallbacks repeat, which then advances along with the Gram matrix).
fn sweep(
    a: &[f64],
    l: usize,
    targets: &[(usize, usize)],
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
) -> Result<Vec<(usize, SplitResult)>> {
    let mut out = Vec::with_capacity(targets.len());
    let Some(&(t_first, _)) = targets.first() else {
        return Ok(out);
    };
    let mut gram = Gram::fresh(a, l, t_first)?;
    let mut carried: Option<Carried> = None;
    let mut misses = 0usize;
    let mut inertia = InertiaState::new();
    let mut deflation = Deflation::default();
    let mut defl_buf = Vec::new();
    let mut t = t_first;
    // With entropy wanted, G_t serves only the Gram route's eigenvalues, and those of the next
    // few splits are computed together (their tridiagonal QL iterations share the vector
    // lanes, see `symeig::lanes`): G runs ahead of `t` (it is at split `tg`), and `ahead` holds
    // the eigenvalues of the coming targets (target index, result).
    let batched = want_ent;
    let mut tg = t_first;
    let mut ahead: std::collections::VecDeque<(usize, Result<Vec<f64>>)> = std::collections::VecDeque::new();
    // Targets before this index were answered by a batch of SVD-route splits.
    let mut skip_until = 0usize;
    for (n, &(target, slot)) in targets.iter().enumerate() {
        if n < skip_until {
            if matches!(ahead.front(), Some(&(j, _)) if j == n) {
                ahead.pop_front();
            }
            continue;
        }
        crate::interrupt::check()?;
        while t < target {
            if !batched {
                gram.advance(a, l, t);
                tg += 1;
            }
            if let Some(c) = carried.as_mut() {
                c.advance(a, l, t);
            }
            t += 1;
        }
        let mine = match ahead.front() {
            Some(&(j, _)) if j == n => ahead.pop_front().map(|x| x.1),
            _ => None,
        };
        let k = l - t;
        // Tolerance alone: the count from the inertia of G - tau^2 I (see `inertia`), with
        // no eigenvalues; the routes below decide what it cannot certify.
        if want_tol && !want_ent && k > 0 {
            if let InertiaOutcome::Count(c) = inertia_route(&mut gram, t, k, tol, &mut inertia)? {
                out.push((slot, SplitResult { tol: c as f64, ent: 0.0 }));
                continue;
            }
        }
        // After a miss, the other routes answer until their spectrum says that the Gram route
        // would settle the split again (see `answer_from_sigma`); while the deflated route is
        // off, the Gram route is also retried now and then.
        let try_gram = misses == 0 || (n % GRAM_RETRY == 0 && !deflation.active());
        if batched && !try_gram && k >= OWN_SVD_MIN {
            if let Some(c) = carried.as_mut() {
                // The splits up to the next retry of the Gram route all take the SVD route:
                // their singular values together (see `svd_batch`).
                let end = ((n / GRAM_RETRY + 1) * GRAM_RETRY).min(targets.len());
                let (res, gram_again) =
                    svd_batch(a, l, &targets[n..end], &mut t, c, &mut deflation, tol, want_tol, want_ent)?;
                misses = if gram_again { 0 } else { misses + res.len() };
                out.extend(res);
                skip_until = end;
                continue;
            }
        }
        // The Gram route is a shortcut: an eigensolver that does not converge on it sends the
        // split to the SVD routes below (an interrupt request stops the sweep).
        let quick = if try_gram {
            let lam = match mine {
                Some(lam) => lam,
                None if batched => {
                    // This split and, while the Gram route answers, the next LANES - 1.
                    let count = if misses == 0 { symeig::lanes::LANES } else { 1 };
                    let ts = targets[n..].iter().take(count).map(|x| x.0);
                    let res = gram.eigenvalues_ahead(a, l, &mut tg, ts)?;
                    ahead.clear();
                    ahead.extend(res.into_iter().enumerate().map(|(i, r)| (n + i, r)));
                    // (never empty: this split's own result comes first; an error here would
                    // only send the split to the SVD routes)
                    ahead.pop_front().map(|x| x.1).unwrap_or_else(|| Err(no_eigenvalues()))
                }
                None => gram.eigenvalues(),
            };
            match lam {
                Ok(lam) => {
                    let r = gram_route(&lam, t, k, tol, want_tol, want_ent);
                    if r.is_none() {
                        deflation.choose(&lam);
                    }
                    r
                }
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(_) => None,
            }
        } else {
            None
        };
        if let Some(r) = quick {
            misses = 0;
            out.push((slot, r));
            continue;
        }
        misses += 1;
        let (sigma, scale) = match carried.as_mut() {
            Some(c) => {
                // A block that shrank far below the factor's scale is recomputed from scratch
                // (its own rescaling keeps subnormal entries exact).
                let in_range = (1e-150..=1e150).contains(&c.max_abs());
                let sigma = if c.k0 != k && !in_range {
                    None
                } else if let Some(s) =
                    deflated_sigma(&mut deflation, c, in_range, false, &mut defl_buf, t, k, tol, want_tol, want_ent)?
                {
                    Some(s)
                } else {
                    match singular_values(c.as_mat().as_ref()) {
                        Err(Error::Interrupted) => return Err(Error::Interrupted),
                        r => r.ok(),
                    }
                };
                let sigma = sigma.filter(|sigma| {
                    let smax = sigma.first().copied().unwrap_or(0.0);
                    let tau = tol.scaled_pow2(c.exp2).threshold(smax, k, t);
                    // A count the carried factor's rounding could change: recompute from scratch.
                    let ambiguous = want_tol && sigma.iter().any(|&s| (s - tau).abs() <= c.err);
                    !ambiguous || c.k0 == k
                });
                match sigma {
                    Some(sigma) => (sigma, c.exp2),
                    None => {
                        let (fresh, sigma) = fresh_sigma(a, l, t, tol, want_tol, None)?;
                        *c = fresh;
                        (sigma, c.exp2)
                    }
                }
            }
            None => {
                // A fresh factor, kept for the splits to come; the deflated route first.
                let c = Carried::fresh_householder(a, l, t)?;
                let in_range = (1e-150..=1e150).contains(&c.max_abs());
                let (c, sigma) = match deflated_sigma(
                    &mut deflation,
                    &c,
                    in_range,
                    true,
                    &mut defl_buf,
                    t,
                    k,
                    tol,
                    want_tol,
                    want_ent,
                )? {
                    Some(sigma) => (c, sigma),
                    None => fresh_sigma(a, l, t, tol, want_tol, Some(c))?,
                };
                let exp2 = c.exp2;
                carried = Some(c);
                (sigma, exp2)
            }
        };
        let (result, gram_again) = answer_from_sigma(&mut deflation, &sigma, scale, t, k, tol, want_tol, want_ent);
        if gram_again {
            misses = 0;
        }
        out.push((slot, result));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(op: &[f64], l: usize, tol: &Tolerance) -> (Vec<f64>, Vec<f64>) {
        let mut tc = vec![0.0; l];
        let mut en = vec![0.0; l];
        for t in 1..l {
            let h = Mat::<f64>::from_fn(l - t, t, |i, j| op[(t + i) * l + j]);
            let s = h.singular_values().unwrap();
            let smax = s.iter().cloned().fold(0.0, f64::max);
            tc[t] = tolerance_count(&s, tol.threshold(smax, l - t, t)) as f64;
            en[t] = entropy_ess(&s);
        }
        (tc, en)
    }

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
    }

    #[test]
    fn mul_pow2_is_exact_scaling() {
        let reference = |x: f64, e: i32| {
            let (mut x, mut e) = (x, e);
            while e != 0 {
                let step = e.clamp(-1000, 1000);
                x *= 2f64.powi(step);
                e -= step;
            }
            x
        };
        for &x in &[1.0, -3.5, 1e-310, 7.0e300, f64::MIN_POSITIVE, 0.0, -0.0, f64::INFINITY] {
            for e in [0, 1, -1, 52, -52, 999, -999, 1000, -1000, 1001, -1001, 1500, -1500, 2100, -2100] {
                let (got, want) = (mul_pow2(x, e), reference(x, e));
                assert_eq!(got.to_bits(), want.to_bits(), "{x} * 2^{e}");
            }
        }
    }

    /// Near-uniform causal attention (scores of order 1e-3): blocks close to rank one with
    /// singular values over many decades, so the Gram route misses.
    fn near_uniform(l: usize, seed: &mut u64) -> Vec<f64> {
        let q: Vec<f64> = (0..l * 8).map(|_| 0.05 * lcg(seed)).collect();
        let k: Vec<f64> = (0..l * 8).map(|_| 0.05 * lcg(seed)).collect();
        let mut op = vec![0.0; l * l];
        for i in 0..l {
            let row: Vec<f64> =
                (0..=i).map(|j| (0..8).map(|c| q[i * 8 + c] * k[j * 8 + c]).sum::<f64>().exp()).collect();
            let z: f64 = row.iter().sum();
            for (j, v) in row.iter().enumerate() {
                op[i * l + j] = v / z;
            }
        }
        op
    }

    fn assert_matches_naive(op: &[f64], l: usize, rtol: f64) {
        let got = dense_ess(op, 1, l, &DenseOptions::default()).unwrap();
        let tol = Tolerance::new(None, None, f64::EPSILON).unwrap();
        let (tc, en) = naive(op, l, &tol);
        assert_eq!(got.tolerance.unwrap(), tc, "L = {l}");
        for (a, b) in got.entropy.unwrap().iter().zip(&en) {
            assert!((a - b).abs() <= rtol * b.max(1.0), "L = {l}: {a} vs {b}");
        }
    }

    #[test]
    fn fallback_runs_on_lanes_match_naive_svd() {
        // Runs of splits take `svd_batch`, with the deflated route off so that their bidiagonal
        // QR iterations run on the lanes. Curves as a per-split SVD gives them.
        let _hooks = deflate::HOOKS.lock().unwrap_or_else(|e| e.into_inner());
        deflate::OFF.store(true, std::sync::atomic::Ordering::Relaxed);
        let before = SVD_BATCHES.load(std::sync::atomic::Ordering::Relaxed);
        let res = std::panic::catch_unwind(|| {
            let mut seed = 17u64;
            for l in [70usize, 120] {
                assert_matches_naive(&near_uniform(l, &mut seed), l, 1e-9);
            }
        });
        deflate::OFF.store(false, std::sync::atomic::Ordering::Relaxed);
        res.unwrap();
        assert!(SVD_BATCHES.load(std::sync::atomic::Ordering::Relaxed) > before, "no split took svd_batch");
    }

    #[test]
    fn deflated_route_matches_naive_svd() {
        // The same kind of operator with the deflated Gram route on: it answers most of the
        // splits that the Gram route misses, to the SVD's accuracy.
        let _hooks = deflate::HOOKS.lock().unwrap_or_else(|e| e.into_inner());
        // How many splits the route answered on `op`, whose curves match a per-split SVD.
        let answered = |op: &[f64], l: usize| {
            let before = deflate::DEFLATED.load(std::sync::atomic::Ordering::Relaxed);
            assert_matches_naive(op, l, 1e-9);
            deflate::DEFLATED.load(std::sync::atomic::Ordering::Relaxed) - before
        };
        let mut seed = 23u64;
        let used: usize = [70usize, 160].iter().map(|&l| answered(&near_uniform(l, &mut seed), l)).sum();
        assert!(used > 50, "the deflated route answered {used} splits");
        // Two dominant rank-one terms over a bulk whose rows are scaled down to 1e-9: blocks
        // with two values far above the rest.
        let l = 140;
        let vecs: Vec<f64> = (0..4 * l).map(|_| lcg(&mut seed)).collect();
        let mut op = vec![0.0; l * l];
        for i in 0..l {
            let row_scale = 1e-4 * 10f64.powf(-5.0 * (lcg(&mut seed) + 0.5));
            for j in 0..i {
                op[i * l + j] =
                    vecs[i] * vecs[l + j] + 0.5 * vecs[2 * l + i] * vecs[3 * l + j] + row_scale * lcg(&mut seed);
            }
        }
        let used = answered(&op, l);
        assert!(used > 20, "two directions: the deflated route answered {used} splits");
        // Exactly rank 4: one dominant term over three of order 1e-9, the rest exact zeros
        // (counts decided at the rounding level).
        let l = 120;
        let vecs: Vec<f64> = (0..8 * l).map(|_| lcg(&mut seed)).collect();
        let mut op = vec![0.0; l * l];
        for i in 0..l {
            for j in 0..i {
                let mut v = vecs[i] * vecs[l + j];
                for r in 1..4 {
                    v += 1e-9 * vecs[2 * r * l + i] * vecs[(2 * r + 1) * l + j];
                }
                op[i * l + j] = v;
            }
        }
        let used = answered(&op, l);
        assert!(used > 20, "rank four: the deflated route answered {used} splits");
    }

    #[test]
    fn matches_naive_svd_on_random_operators() {
        let mut seed = 7u64;
        for l in [1usize, 2, 3, 4, 7, 16, 33] {
            let op: Vec<f64> = (0..l * l).map(|_| lcg(&mut seed)).collect();
            let opts = DenseOptions { rtol: Some(1e-10), ..Default::default() };
            let got = dense_ess(&op, 1, l, &opts).unwrap();
            let tol = Tolerance::new(None, Some(1e-10), f64::EPSILON).unwrap();
            let (tc, en) = naive(&op, l, &tol);
            assert_eq!(got.tolerance.unwrap(), tc, "L = {l}");
            let alone = dense_ess(&op, 1, l, &DenseOptions { method: Method::Tolerance, ..opts.clone() }).unwrap();
            assert_eq!(alone.tolerance.unwrap(), tc, "tolerance alone, L = {l}");
            assert!(alone.entropy.is_none());
            for (a, b) in got.entropy.unwrap().iter().zip(&en) {
                assert!((a - b).abs() <= 1e-9 * b.max(1.0), "L = {l}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn low_rank_operator_stays_low_rank() {
        // T[t, s] = sum_n c_t[n] b_s[n], rank <= 3.
        let l = 40;
        let mut seed = 3u64;
        let c: Vec<f64> = (0..l * 3).map(|_| lcg(&mut seed)).collect();
        let b: Vec<f64> = (0..l * 3).map(|_| lcg(&mut seed)).collect();
        let mut op = vec![0.0; l * l];
        for t in 0..l {
            for s in 0..=t {
                op[t * l + s] = (0..3).map(|n| c[t * 3 + n] * b[s * 3 + n]).sum();
            }
        }
        let got = dense_ess(&op, 1, l, &DenseOptions::default()).unwrap();
        for (t, &r) in got.tolerance.unwrap().iter().enumerate() {
            assert!(r <= 3.0_f64.min(t as f64).min((l - t) as f64), "t = {t}: {r}");
        }
    }

    #[test]
    fn rank3_ssm_block_is_not_overcounted() {
        // A rank-3 selective-SSM channel (L = 12): at split 5, sigma_4 is 6.4e-18 (50 digits)
        // against a default threshold of 2.9e-17; a Householder-QR route reported 1.2e-16.
        #[rustfmt::skip]
        let op: [f64; 144] = [1.0051156415683147, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.0031450170102863243, 0.9939555875191721, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.0024032511598588726, -0.0036119487283191743, 0.9983421286290258, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.0013703002763009622, -0.0009942334734612005, -0.002219820344806603, 0.9972882726039904, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.0029164425399581403, -0.0032242637488591867, -0.0031150438207425395, -0.0028720695416058683, 1.0006233071766457, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.004801054143076254, -0.009503276691566215, -0.0030718897623404954, -0.00621173504227698, -0.003927727720235028, 0.991362269102164, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.00086644498801081, -0.0018396451503162607, -6.028597428613757e-05, 0.00017148365207389016, 0.00020809073657156364, -0.0007534409768478099, 1.0000286193365395, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0017441406817803762, 0.007718736175024532, -0.00027765065927830176, 0.005917381029329769, 0.008177545075638018, 0.0085726302759826, -0.0015516319879311275, 0.9983565975174731, 0.0, 0.0, 0.0, 0.0, -0.00040897568115004073, -0.0012893161573678358, -0.0001879072977675412, -0.0011968564461024213, -0.0012975701328862082, -0.001523363985592557, 0.00030356445195750276, 0.00048041911846569656, 1.0000667085756723, 0.0, 0.0, 0.0, -0.0018219680084143842, -0.0028642041421922853, -0.0010252241140923566, -0.0005383492054408825, 0.000624934987066579, -0.0015180854761940596, 0.00021598842329173924, -0.000781623142454224, 0.0013718107872353327, 1.0025520871141314, 0.0, 0.0, 0.002237244880798439, 0.0031252631706652195, 0.0017803730849191269, 0.0015394291752507505, -0.0004203932433543799, 0.0022017857925043386, -0.0004393320281443328, -5.404643177449637e-05, -0.0016686089618245489, -0.002768691912991504, 1.0014531894451668, 0.0, 0.0010530356494685411, 0.0009273474374849874, 0.0013535483049759431, 0.0013012257148018141, -0.00022768248763313807, 0.0010624583634898136, -0.00031046046508715036, -0.0008400623450485196, -0.0008313725230210487, -0.001041696606022489, 0.0007585540308450306, 1.0010858589090916];
        for method in [Method::Tolerance, Method::Both] {
            let opts = DenseOptions { method, ..Default::default() };
            let got = dense_ess(&op, 1, 12, &opts).unwrap().tolerance.unwrap();
            assert_eq!(got, vec![0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 2.0, 1.0], "{method:?}");
            let alone = DenseOptions { method, positions: Some(vec![5]), ..Default::default() };
            assert_eq!(dense_ess(&op, 1, 12, &alone).unwrap().tolerance.unwrap(), vec![3.0]);
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(dense_ess::<f64>(&[], 1, 0, &DenseOptions::default()), Err(Error::Shape { .. })));
        assert!(matches!(
            dense_ess(&[1.0, f64::NAN, 0.0, 1.0], 1, 2, &DenseOptions::default()),
            Err(Error::NonFinite { .. })
        ));
        let opts = DenseOptions { positions: Some(vec![1, 1]), ..Default::default() };
        assert!(matches!(dense_ess(&[0.0f64; 4], 1, 2, &opts), Err(Error::OutOfRange { .. })));
        let opts = DenseOptions { positions: Some(vec![5]), ..Default::default() };
        assert!(matches!(dense_ess(&[0.0f64; 4], 1, 2, &opts), Err(Error::OutOfRange { .. })));
        assert!(matches!(dense_ess(&[0.0f64; 3], 1, 2, &DenseOptions::default()), Err(Error::Shape { .. })));
        let opts = DenseOptions { atol: Some(-1.0), ..Default::default() };
        assert!(matches!(dense_ess(&[0.0f64; 4], 1, 2, &opts), Err(Error::InvalidArgument { .. })));
    }

    /// Orthogonal `n x n` factor from the QR of a random matrix.
    fn orthogonal(n: usize, seed: &mut u64) -> Mat<f64> {
        let m = Mat::<f64>::from_fn(n, n, |_, _| lcg(seed));
        m.qr().compute_thin_Q()
    }

    /// Operator of length `2n` whose block at split `n` has singular values `sigma`.
    fn operator_with_block(sigma: &[f64], fill: f64, seed: &mut u64) -> Vec<f64> {
        let n = sigma.len();
        let l = 2 * n;
        let (u, v) = (orthogonal(n, seed), orthogonal(n, seed));
        let mut op = vec![0.0; l * l];
        for i in 1..l {
            for j in 0..i {
                op[i * l + j] = fill * lcg(seed);
            }
        }
        for i in 0..n {
            for j in 0..n {
                op[(n + i) * l + j] = (0..n).map(|q| u[(i, q)] * sigma[q] * v[(j, q)]).sum();
            }
        }
        op
    }

    #[test]
    fn inertia_route_counts_clustered_and_rank_deficient_blocks() {
        let mut seed = 19u64;
        for &(n, rtol) in &[(6usize, 1e-3), (17, 1e-2), (40, 1e-4)] {
            for &(above, gap) in &[(2usize, 1e-2), (3, 1e-5), (0, 1e-6)] {
                // sigma_1 = 1, `above` values just above rtol, the rest just below (or zero).
                let mut sigma = vec![rtol * (1.0 - gap); n];
                sigma[0] = 1.0;
                for s in sigma.iter_mut().skip(1).take(above) {
                    *s = rtol * (1.0 + gap);
                }
                for e in [-600, 0, 600] {
                    let scale = 2f64.powi(e);
                    let mut op = operator_with_block(&sigma, 0.5, &mut seed);
                    op.iter_mut().for_each(|x| *x *= scale);
                    let opts = DenseOptions { method: Method::Tolerance, rtol: Some(rtol), ..Default::default() };
                    let got = dense_ess(&op, 1, 2 * n, &opts).unwrap().tolerance.unwrap();
                    assert_eq!(got[n], (above + 1) as f64, "n = {n}, rtol = {rtol}, gap = {gap}, 2^{e}");
                    let unscaled: Vec<f64> = op.iter().map(|x| x / scale).collect();
                    let tol = Tolerance::new(None, Some(rtol), f64::EPSILON).unwrap();
                    let (tc, _) = naive(&unscaled, 2 * n, &tol);
                    assert_eq!(got, tc, "n = {n}, rtol = {rtol}, gap = {gap}, 2^{e}");
                }
                // Exactly rank deficient: the values below the threshold set to zero.
                let mut sigma0 = sigma.clone();
                sigma0.iter_mut().skip(above + 1).for_each(|s| *s = 0.0);
                let op = operator_with_block(&sigma0, 1.0, &mut seed);
                let opts = DenseOptions { method: Method::Tolerance, rtol: Some(rtol), ..Default::default() };
                let got = dense_ess(&op, 1, 2 * n, &opts).unwrap().tolerance.unwrap();
                assert_eq!(got[n], (above + 1) as f64, "rank deficient, n = {n}");
            }
        }
    }

    #[test]
    fn positions_subset_equals_full_curve() {
        let l = 21;
        let mut seed = 11u64;
        let op: Vec<f64> = (0..2 * l * l).map(|_| lcg(&mut seed)).collect();
        let full = dense_ess(&op, 2, l, &DenseOptions::default()).unwrap();
        let pos = vec![0, 3, 10, 11, 20];
        let sub = dense_ess(&op, 2, l, &DenseOptions { positions: Some(pos.clone()), ..Default::default() }).unwrap();
        for b in 0..2 {
            for (i, &p) in pos.iter().enumerate() {
                assert_eq!(sub.tolerance.as_ref().unwrap()[b * 5 + i], full.tolerance.as_ref().unwrap()[b * l + p]);
                let (x, y) = (sub.entropy.as_ref().unwrap()[b * 5 + i], full.entropy.as_ref().unwrap()[b * l + p]);
                assert!((x - y).abs() <= 1e-12 * y.max(1.0));
            }
        }
    }
}
