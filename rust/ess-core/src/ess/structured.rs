//! Structured ESS: state-space realisations `T[t, s] = c_t^T A_t A_{t-1} ... A_{s+1} b_s`
//! (`s < t`) of a batch of channels, without forming `T`.
//!
//! # Conventions
//!
//! The recurrence is `h_t = A_t h_{t-1} + b_t u_t`, `y_t = c_t^T h_t (+ D u_t)`, 0-indexed,
//! state size `N`. For `s < t`, `T[t, s] = c_t^T Phi(t, s) b_s` with
//! `Phi(t, s) = A_t A_{t-1} ... A_{s+1}` (so `A_0` never enters any block). The diagonal
//! `T[t, t] = c_t^T b_t (+ D)` is in no block `H_t = T[t:, :t]` and is never used.
//! This matches the SPEC table: gated linear attention
//! `T[t, s] = q_t^T diag(a_t) ... diag(a_{s+1}) k_s`; Mamba `A_t = exp(Delta_t A)`,
//! `b_s = Delta_s B_s`, `c_t = C_t`.
//!
//! # Algorithm (square-root Gramians)
//!
//! `H_t = O_t R_t` with the reachability factor `R_t = [Phi(t-1, s) b_s]_{s<t}` (`N x t`) and
//! the observability factor `O_t` whose rows are `c_i^T A_i ... A_t` (`i >= t`). Their
//! Gramians are `P_t = R_t R_t^T` and `Q_t = O_t^T O_t`, and `sigma(H_t) = sigma(S_O^T S_R)`
//! for any square roots `S_R S_R^T = P_t`, `S_O S_O^T = Q_t`. The Gramians are never formed:
//!
//! * forward, `S_R(t+1) = tri([A_t S_R(t), b_t])`,
//! * backward, `S_O(t) = tri(A_t^T [c_t, S_O(t+1)])`,
//!
//! where `tri` compresses an `N x (N+1)` matrix `M` to a lower-triangular `N x N` factor with
//! the same `M M^T` by orthogonal transformations (Givens rotations for appending a column
//! to a triangular factor; a Householder QR after a dense transition). Diagonal and scalar
//! transitions keep the factor triangular, so a step costs `O(N^2)`; a dense `A_t` costs
//! `O(N^3)`. Each split then needs the `N x N` product `S_O^T S_R` and its singular values
//! (`O(N^3)`). For `N <= 64` these small problems are batched, eight splits of a channel at a
//! time, through an allocation-free Golub-Reinsch whose bidiagonalisation runs in lockstep over
//! the eight matrices (AVX2/FMA by runtime dispatch) and whose QR chases are interleaved step by
//! step; larger `N` (and any lane that does not converge) go to faer's SVD. Every worker thread
//! keeps its buffers across the channels it takes. Nothing is squared, so small singular values keep the accuracy of an SVD of
//! `S_O^T S_R`, i.e. about `eps * ||S_O|| ||S_R||` absolute.
//!
//! # Scaling
//!
//! Each row (state coordinate) of a factor is stored with its own power-of-two exponent:
//! the true factor is `diag(2^e) S`, with every row of `S` of max-norm in `[1, 2)`. Row
//! scalings commute with the column rotations, so the exponents pass through the updates
//! exactly; transitions that decay (`|a|` near 0) or grow (`|a| > 1`) over long sequences,
//! and factors that are badly scaled per coordinate, neither overflow nor underflow. At
//! a split the combined exponents `e_R + e_O` are folded into the product relative to their
//! maximum `E`, and `sigma(H_t) = 2^E sigma(W)`: entropy and relative thresholds use `W`
//! directly; an absolute `atol` is compared as `atol * 2^-E` (no overflow either way).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, MatRef, Par};
use rayon::prelude::*;

use super::dense::{validate_positions, EssCurves, Scalar};
use super::{entropy_ess, tolerance_count, Tolerance};
use crate::error::{check_finite, checked_size, Error, Result};

/// How the transitions `A_t` are given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// `A_t = I` for all `t` (linear attention); no `a` data.
    Identity,
    /// `A_t = a_t I`: `a` holds `batch * L` values.
    Scalar,
    /// `A_t = diag(a_t)`: `a` holds `batch * L * N` values.
    Diagonal,
    /// Dense `A_t`: `a` holds `batch * L * N * N` values, `A_t[i, j]` row-major.
    Dense,
}

/// Factors of a batch of time-varying state-space operators, all contiguous row-major.
#[derive(Clone, Copy, Debug)]
pub struct SsmFactors<'a, F> {
    pub batch: usize,
    /// Sequence length `L`.
    pub l: usize,
    /// State size `N`.
    pub n: usize,
    pub kind: Transition,
    /// Transitions, layout given by `kind` (empty for `Identity`).
    pub a: &'a [F],
    /// Inputs `b_t`: `batch * L * N`.
    pub b: &'a [F],
    /// Outputs `c_t`: `batch * L * N`.
    pub c: &'a [F],
}

/// Options of [`ssm_ess`]: the dense kernel's options, with the same meaning.
pub type StructuredOptions = super::dense::DenseOptions;

/// Validate the shapes and values of `f`.
fn validate<F: Scalar>(f: &SsmFactors<'_, F>) -> Result<()> {
    if f.l == 0 {
        return Err(Error::shape("B", "the sequence is empty (L = 0)"));
    }
    if f.n == 0 {
        return Err(Error::shape(
            "B",
            "the state dimension is empty (N = 0); B and C must have shape (..., L, N) with N >= 1",
        ));
    }
    let bc = checked_size("B", &[f.batch, f.l, f.n])?;
    if f.b.len() != bc {
        return Err(Error::shape(
            "B",
            format!("expected {} x {} x {} = {bc} values, got {}", f.batch, f.l, f.n, f.b.len()),
        ));
    }
    if f.c.len() != bc {
        return Err(Error::shape(
            "C",
            format!("expected {} x {} x {} = {bc} values (the shape of B), got {}", f.batch, f.l, f.n, f.c.len()),
        ));
    }
    let (dims, what): (Vec<usize>, &str) = match f.kind {
        Transition::Identity => (vec![0], "none (identity transitions)"),
        Transition::Scalar => (vec![f.batch, f.l], "batch x L (scalar)"),
        Transition::Diagonal => (vec![f.batch, f.l, f.n], "batch x L x N (diagonal)"),
        Transition::Dense => (vec![f.batch, f.l, f.n, f.n], "batch x L x N x N (dense)"),
    };
    let na = checked_size("A", &dims)?;
    if f.a.len() != na {
        return Err(Error::shape("A", format!("expected {what} = {na} values, got {}", f.a.len())));
    }
    check_finite("A", f.a)?;
    check_finite("B", f.b)?;
    check_finite("C", f.c)?;
    Ok(())
}

/// Tolerance- and/or entropy-ESS curves of a batch of state-space operators (see the
/// module docs for the convention). Returns curves of shape `(batch, n_positions)`.
pub fn ssm_ess<F: Scalar>(f: &SsmFactors<'_, F>, opts: &StructuredOptions) -> Result<EssCurves> {
    validate(f)?;
    let tol = Tolerance::new(opts.atol, opts.rtol, F::EPS)?;
    let l = f.l;
    let positions: Vec<usize> = match &opts.positions {
        Some(p) => {
            validate_positions(p, l)?;
            p.clone()
        }
        None => (0..l).collect(),
    };
    let np = positions.len();
    let out_len = checked_size("B", &[f.batch, np])?;
    // Per channel the backward factors at the requested splits are stored: refuse, before
    // anything is allocated, what the channels in flight (one per worker thread) cannot hold.
    let per_channel = checked_size("B", &[np, f.n, f.n + 1, 8])?;
    let in_flight = rayon::current_num_threads().min(f.batch).max(1) as u64;
    crate::mem::gate(
        "B",
        (per_channel as u64).checked_mul(in_flight),
        &format!(
            "the backward factors of {in_flight} channel(s) in flight ({np} splits of an N = {} state each; \
             fewer positions= or RAYON_NUM_THREADS reduce it)",
            f.n
        ),
    )?;
    let want_tol = opts.method.wants_tolerance();
    let want_ent = opts.method.wants_entropy();
    let mut tol_out = vec![0.0; if want_tol { out_len } else { 0 }];
    let mut ent_out = vec![0.0; if want_ent { out_len } else { 0 }];
    if np > 0 && f.batch > 0 {
        let mut rows: Vec<(usize, Option<&mut [f64]>, Option<&mut [f64]>)> = Vec::with_capacity(f.batch);
        let mut ti = if want_tol { Some(tol_out.chunks_mut(np)) } else { None };
        let mut ei = if want_ent { Some(ent_out.chunks_mut(np)) } else { None };
        for b in 0..f.batch {
            rows.push((b, ti.as_mut().and_then(|it| it.next()), ei.as_mut().and_then(|it| it.next())));
        }
        // Channels are independent small problems: one workspace per worker thread, reused across the
        // channels it takes (no allocation or page faults per channel or split).
        rows.into_par_iter().with_min_len(4).try_for_each_init(Workspace::default, |ws, (ch, tr, er)| {
            let res = one_channel(f, ch, &positions, &tol, want_tol, want_ent, ws)?;
            if let Some(tr) = tr {
                for (o, r) in tr.iter_mut().zip(&res) {
                    *o = r.0;
                }
            }
            if let Some(er) = er {
                for (o, r) in er.iter_mut().zip(&res) {
                    *o = r.1;
                }
            }
            Ok::<(), Error>(())
        })?;
    }
    Ok(EssCurves {
        batch: f.batch,
        n_positions: np,
        tolerance: want_tol.then_some(tol_out),
        entropy: want_ent.then_some(ent_out),
    })
}

/// `x * 2^e`, exact whenever the result is a normal number, never overflowing in between.
#[inline]
pub(crate) fn ldexp(mut x: f64, mut e: i64) -> f64 {
    while e > 1000 {
        x *= pow2(1000);
        e -= 1000;
        if x.is_infinite() || x == 0.0 {
            return x;
        }
    }
    while e < -1000 {
        x *= pow2(-1000);
        e += 1000;
        if x == 0.0 {
            return x;
        }
    }
    x * pow2(e)
}

/// `2^e` for `-1022 <= e <= 1023` (exact, by construction of the bits).
#[inline]
fn pow2(e: i64) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// Exponent `k` with `2^k <= |x| < 2^(k+1)` for finite nonzero `x`.
#[inline]
fn exponent(x: f64) -> i64 {
    let bits = x.abs().to_bits();
    let raw = ((bits >> 52) & 0x7ff) as i64;
    if raw == 0 {
        // subnormal
        let mant = bits & ((1u64 << 52) - 1);
        -1074 + (63 - mant.leading_zeros() as i64)
    } else {
        raw - 1023
    }
}

/// A lower-triangular `N x N` factor with per-row power-of-two exponents:
/// true factor `= diag(2^e) S`. Column-major storage (`s[j * n + i] = S[i, j]`).
#[derive(Clone)]
struct Factor {
    n: usize,
    s: Vec<f64>,
    e: Vec<i64>,
    /// Whether `S` is currently lower triangular (false after a dense transition).
    tri: bool,
}

impl Factor {
    fn zeros(n: usize) -> Self {
        Factor { n, s: vec![0.0; n * n], e: vec![0; n], tri: true }
    }

    #[inline]
    fn at(&self, i: usize, j: usize) -> f64 {
        self.s[j * self.n + i]
    }

    /// Columns of row `i` that may be nonzero.
    #[inline]
    fn row_cols(&self, i: usize) -> std::ops::Range<usize> {
        if self.tri {
            0..i + 1
        } else {
            0..self.n
        }
    }

    /// Rescale each row to max-norm in `[1, 2)` (zero rows get exponent 0).
    fn normalise(&mut self) {
        let n = self.n;
        for i in 0..n {
            let cols = self.row_cols(i);
            let mut m = 0.0f64;
            for j in cols.clone() {
                m = m.max(self.s[j * n + i].abs());
            }
            if m == 0.0 {
                self.e[i] = 0;
                continue;
            }
            let k = exponent(m);
            if k != 0 {
                for j in cols {
                    self.s[j * n + i] = ldexp(self.s[j * n + i], -k);
                }
                self.e[i] += k;
            }
        }
    }

    /// `S <- diag(a) S` (scalar `a` when `diag` has one entry).
    fn mul_diag(&mut self, a: &[f64]) {
        let n = self.n;
        for i in 0..n {
            let ai = if a.len() == 1 { a[0] } else { a[i] };
            let cols = self.row_cols(i);
            if ai == 0.0 {
                for j in cols {
                    self.s[j * n + i] = 0.0;
                }
                self.e[i] = 0;
            } else if ai != 1.0 {
                // |S| < 2, so the product stays finite (|ai| < 2^1023) until normalised,
                // except |ai| >= 2^1023, handled by splitting off the exponent.
                let k = exponent(ai);
                let am = ldexp(ai, -k);
                for j in cols {
                    self.s[j * n + i] *= am;
                }
                self.e[i] += k;
            }
        }
        self.normalise();
    }

    /// `S <- A S` (or `A^T S` when `transpose`), `A` row-major `n x n`; re-triangularised.
    fn mul_dense(&mut self, a: &[f64], transpose: bool) {
        let n = self.n;
        let emax = self
            .e
            .iter()
            .enumerate()
            .filter(|&(i, _)| self.row_cols(i).any(|j| self.at(i, j) != 0.0))
            .map(|(_, &e)| e)
            .max();
        let Some(emax) = emax else {
            return; // zero factor stays zero
        };
        // A = 2^ka A' with max|A'| in [1, 2): huge or tiny transitions cannot overflow the
        // accumulation below.
        let amax = a.iter().fold(0.0f64, |m, &x| m.max(x.abs()));
        if amax == 0.0 {
            self.s.iter_mut().for_each(|x| *x = 0.0);
            self.e.iter_mut().for_each(|x| *x = 0);
            self.tri = true;
            return;
        }
        let ka = exponent(amax);
        let a_s: Vec<f64> = a.iter().map(|&x| ldexp(x, -ka)).collect();
        // Column scale of A': 2^(e_k - emax) <= 1; the result carries exponent emax + ka.
        let cs: Vec<f64> = self.e.iter().map(|&e| ldexp(1.0, e - emax)).collect();
        let emax = emax + ka;
        let aij = |i: usize, k: usize| if transpose { a_s[k * n + i] } else { a_s[i * n + k] };
        // M^T (n x n) = (A' S)^T, built directly: MT[j, i] = sum_k A'[i, k] S[k, j].
        let mt = Mat::<f64>::from_fn(n, n, |j, i| {
            let mut acc = 0.0;
            let k0 = if self.tri { j } else { 0 };
            for k in k0..n {
                let skj = self.s[j * n + k];
                if skj != 0.0 {
                    acc += aij(i, k) * cs[k] * skj;
                }
            }
            acc
        });
        // Per-row (= per-column of M^T) normalisation before the QR, so that the QR only
        // sees O(1) columns; the exponents pass through it (column-scaling equivariance).
        let mut e_new = vec![emax; n];
        let mut mt = mt;
        for i in 0..n {
            let m = (0..n).fold(0.0f64, |m, j| m.max(mt[(j, i)].abs()));
            if m == 0.0 {
                e_new[i] = 0;
                continue;
            }
            let k = exponent(m);
            for j in 0..n {
                mt[(j, i)] = ldexp(mt[(j, i)], -k);
            }
            e_new[i] += k;
        }
        let r = mt.qr().thin_R().to_owned();
        for j in 0..n {
            for i in 0..n {
                // S_new = R^T: S_new[i, j] = R[j, i], lower triangular.
                self.s[j * n + i] = if i >= j { r[(j, i)] } else { 0.0 };
            }
        }
        self.e = e_new;
        self.tri = true;
        self.normalise();
    }

    /// Append the column `v` (true scale) and compress back to `N x N` lower triangular:
    /// `S S^T <- S S^T + v v^T`, by Givens rotations.
    fn append(&mut self, v: &[f64]) {
        debug_assert!(self.tri);
        let n = self.n;
        // Bring each row and v[i] to a common exponent.
        let mut w = vec![0.0; n];
        for i in 0..n {
            if v[i] == 0.0 {
                continue;
            }
            let ev = exponent(v[i]);
            let row_zero = (0..=i).all(|j| self.s[j * n + i] == 0.0);
            if row_zero {
                self.e[i] = ev;
            } else if ev > self.e[i] {
                let d = self.e[i] - ev;
                for j in 0..=i {
                    self.s[j * n + i] = ldexp(self.s[j * n + i], d);
                }
                self.e[i] = ev;
            }
            w[i] = ldexp(v[i], -self.e[i]);
        }
        for j in 0..n {
            if w[j] == 0.0 && w[j..].iter().all(|&x| x == 0.0) {
                break;
            }
            let x = self.s[j * n + j];
            let y = w[j];
            if y == 0.0 {
                continue;
            }
            let r = fast_hypot(x, y);
            let (c, s) = (x / r, y / r);
            self.s[j * n + j] = r;
            w[j] = 0.0;
            let col = &mut self.s[j * n + j + 1..(j + 1) * n];
            for (p, q) in col.iter_mut().zip(w[j + 1..].iter_mut()) {
                let (a, b) = (*p, *q);
                *p = c * a + s * b;
                *q = c * b - s * a;
            }
        }
        self.normalise();
    }
}

/// The transition of channel `ch` at time `t`, in f64.
enum Step<'v> {
    Identity,
    Diag(&'v [f64]),
    Dense(&'v [f64]),
}

struct Channel {
    kind: Transition,
    n: usize,
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
}

impl Channel {
    /// The factors of channel `ch` in f64, in buffers recycled from `old` (no allocation, hence no
    /// page faults, per channel).
    fn new<F: Scalar>(f: &SsmFactors<'_, F>, ch: usize, old: Option<Channel>) -> Self {
        let (l, n) = (f.l, f.n);
        let (mut a, mut b, mut c) = match old {
            Some(o) => (o.a, o.b, o.c),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        let conv = |dst: &mut Vec<f64>, x: &[F]| {
            dst.clear();
            dst.extend(x.iter().map(|&v| -> f64 { v.into() }));
        };
        match f.kind {
            Transition::Identity => a.clear(),
            Transition::Scalar => conv(&mut a, &f.a[ch * l..(ch + 1) * l]),
            Transition::Diagonal => conv(&mut a, &f.a[ch * l * n..(ch + 1) * l * n]),
            Transition::Dense => conv(&mut a, &f.a[ch * l * n * n..(ch + 1) * l * n * n]),
        }
        conv(&mut b, &f.b[ch * l * n..(ch + 1) * l * n]);
        conv(&mut c, &f.c[ch * l * n..(ch + 1) * l * n]);
        Channel { kind: f.kind, n, a, b, c }
    }
    fn step(&self, t: usize) -> Step<'_> {
        let n = self.n;
        match self.kind {
            Transition::Identity => Step::Identity,
            Transition::Scalar => Step::Diag(&self.a[t..t + 1]),
            Transition::Diagonal => Step::Diag(&self.a[t * n..(t + 1) * n]),
            Transition::Dense => Step::Dense(&self.a[t * n * n..(t + 1) * n * n]),
        }
    }
    fn apply(&self, fac: &mut Factor, t: usize, transpose: bool) {
        match self.step(t) {
            Step::Identity => {}
            Step::Diag(a) => fac.mul_diag(a),
            Step::Dense(a) => fac.mul_dense(a, transpose),
        }
    }
}

/// Buffers of one worker, reused across channels.
#[derive(Default)]
struct Workspace {
    st_s: Vec<f64>,
    st_e: Vec<i64>,
    st_tri: Vec<bool>,
    st_idx: Vec<usize>,
    lanes_a: Vec<f64>,
    svd: Option<BatchSvd>,
    chan: Option<Channel>,
}

fn one_channel<F: Scalar>(
    f: &SsmFactors<'_, F>,
    ch: usize,
    positions: &[usize],
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
    ws: &mut Workspace,
) -> Result<Vec<(f64, f64)>> {
    let (l, n) = (f.l, f.n);
    let chan = Channel::new(f, ch, ws.chan.take());
    let mut out = vec![(0.0, 0.0); positions.len()];
    // Requested splits with 1 <= t <= L-1 (t = 0 is 0 by convention).
    let mut slot = vec![usize::MAX; l];
    for (idx, &p) in positions.iter().enumerate() {
        if p >= 1 {
            slot[p] = idx;
        }
    }
    let Some(t_min) = (1..l).find(|&t| slot[t] != usize::MAX) else {
        return Ok(out);
    };
    // Backward: S_O(t) = tri(A_t^T [c_t, S_O(t+1)]), S_O(L) = 0. Stored at requested t, in one
    // flat buffer (no allocation per split).
    let n_slots = (t_min..l).filter(|&t| slot[t] != usize::MAX).count();
    let nn = n * n;
    let need = checked_size("B", &[n_slots, nn])?;
    let Workspace { st_s, st_e, st_tri, st_idx, lanes_a, svd, chan: chan_slot } = ws;
    st_s.resize(need, 0.0);
    st_e.resize(n_slots * n, 0);
    st_tri.resize(n_slots, true);
    st_idx.clear();
    st_idx.resize(l, usize::MAX);
    let mut so = Factor::zeros(n);
    {
        let mut k = 0usize;
        for t in (t_min..l).rev() {
            crate::interrupt::check()?;
            so.append(&chan.c[t * n..(t + 1) * n]);
            chan.apply(&mut so, t, true);
            if slot[t] != usize::MAX {
                st_s[k * nn..(k + 1) * nn].copy_from_slice(&so.s);
                st_e[k * n..(k + 1) * n].copy_from_slice(&so.e);
                st_tri[k] = so.tri;
                st_idx[t] = k;
                k += 1;
            }
        }
    }
    drop(so);
    // Forward: S_R(1) = [b_0], S_R(t+1) = tri([A_t S_R(t), b_t]).
    let mut sr = Factor::zeros(n);
    sr.append(&chan.b[0..n]);
    let t_max = (1..l).rev().find(|&t| slot[t] != usize::MAX).unwrap_or(t_min);
    if svd.as_ref().map_or(true, |s| s.n != n) {
        *svd = Some(BatchSvd::new(n));
    }
    let svd = svd.as_mut().expect("workspace SVD");
    let mut g: Vec<Option<i64>> = vec![None; n];
    lanes_a.clear();
    lanes_a.resize(LANES * nn, 0.0);
    let mut pending: Vec<(usize, i64)> = Vec::with_capacity(LANES);
    // Singular values of the pending lanes -> curves.
    let flush = |pending: &mut Vec<(usize, i64)>, lanes_a: &mut Vec<f64>, svd: &mut BatchSvd, out: &mut Vec<(f64, f64)>| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let sv = svd.values(lanes_a, pending.len())?;
        for (lane, &(t, gmax)) in pending.iter().enumerate() {
            let mut sigma = sv[lane].clone();
            // H_t is (L-t) x t: singular values beyond min(t, L-t) are exactly zero
            // (what the N x N product shows there is rounding).
            sigma.truncate(t.min(l - t));
            let smax = sigma.first().copied().unwrap_or(0.0);
            let tol_s = match tol.atol {
                Some(a) => Tolerance { atol: Some(ldexp(a, -gmax)), ..*tol },
                None => *tol,
            };
            let tau = tol_s.threshold(smax, l - t, t);
            out[slot[t]] = (
                if want_tol { tolerance_count(&sigma, tau) as f64 } else { 0.0 },
                if want_ent { entropy_ess(&sigma) } else { 0.0 },
            );
        }
        pending.clear();
        Ok(())
    };
    for t in 1..=t_max {
        crate::interrupt::check()?;
        if t > 1 {
            chan.apply(&mut sr, t - 1, false);
            sr.append(&chan.b[(t - 1) * n..t * n]);
        }
        if slot[t] == usize::MAX {
            continue;
        }
        let k = st_idx[t];
        let so_s = &st_s[k * nn..(k + 1) * nn];
        let so_e = &st_e[k * n..(k + 1) * n];
        let so_tri = st_tri[k];
        // Combined row exponents over rows that are nonzero in both factors.
        let so_cols = |r: usize| if so_tri { 0..r + 1 } else { 0..n };
        let mut gmax: Option<i64> = None;
        for r in 0..n {
            let nz_r = sr.row_cols(r).any(|j| sr.s[j * n + r] != 0.0);
            let nz_o = so_cols(r).any(|j| so_s[j * n + r] != 0.0);
            g[r] = (nz_r && nz_o).then(|| sr.e[r] + so_e[r]);
            if let Some(x) = g[r] {
                gmax = Some(gmax.map_or(x, |m: i64| m.max(x)));
            }
        }
        match gmax {
            None => {
                // a zero block: no singular value
                let sigma: [f64; 0] = [];
                let tau = tol.threshold(0.0, l - t, t);
                out[slot[t]] = (
                    if want_tol { tolerance_count(&sigma, tau) as f64 } else { 0.0 },
                    if want_ent { entropy_ess(&sigma) } else { 0.0 },
                );
            }
            Some(gmax) => {
                // W = S_O^T diag(2^(g - gmax)) S_R into the next lane of the batch.
                let lane = pending.len();
                let w = &mut lanes_a[lane * nn..(lane + 1) * nn];
                w.iter_mut().for_each(|x| *x = 0.0);
                for r in 0..n {
                    let Some(gr) = g[r] else { continue };
                    let sc = ldexp(1.0, gr - gmax);
                    if sc == 0.0 {
                        continue;
                    }
                    let ocols = so_cols(r);
                    for j in sr.row_cols(r) {
                        let srj = sr.s[j * n + r] * sc;
                        if srj == 0.0 {
                            continue;
                        }
                        let col = &mut w[j * n..(j + 1) * n];
                        for i in ocols.clone() {
                            col[i] += so_s[i * n + r] * srj;
                        }
                    }
                }
                pending.push((t, gmax));
                if pending.len() == LANES {
                    flush(&mut pending, lanes_a, svd, &mut out)?;
                }
            }
        }
    }
    flush(&mut pending, lanes_a, svd, &mut out)?;
    *chan_slot = Some(chan);
    Ok(out)
}

/// Singular values of a small square matrix held in `a` (column-major, `n x n`): a
/// Householder bidiagonalisation and implicit-shift QR on the bidiagonal (Golub-Reinsch, values
/// only), without allocation per call. Absolute accuracy about `eps * ||a||`, as the dense
/// kernel's SVD. Falls back to faer's SVD if the iteration does not converge or produces a
/// non-finite value (never observed; a safety net).
struct SmallSvd {
    n: usize,
    a: Vec<f64>,
    w: Vec<f64>,
    rv1: Vec<f64>,
    backup: Vec<f64>,
    mem: Option<MemBuffer>,
}

/// `sqrt(a^2 + b^2)` without over/underflow: the plain formula when it is safe, else [`pythag`].
#[inline(always)]
fn fast_hypot(a: f64, b: f64) -> f64 {
    let s = a * a + b * b;
    if s > 1e-290 && s < 1e290 {
        s.sqrt()
    } else {
        pythag(a, b)
    }
}

#[inline]
fn pythag(a: f64, b: f64) -> f64 {
    let (x, y) = (a.abs(), b.abs());
    if x > y {
        let r = y / x;
        x * (1.0 + r * r).sqrt()
    } else if y == 0.0 {
        0.0
    } else {
        let r = x / y;
        y * (1.0 + r * r).sqrt()
    }
}

impl SmallSvd {
    fn new(n: usize) -> Self {
        SmallSvd { n, a: vec![0.0; n * n], w: vec![0.0; n], rv1: vec![0.0; n], backup: vec![0.0; n * n], mem: None }
    }

    /// Singular values of `self.a` (destroyed), sorted decreasingly.
    fn values(&mut self) -> Result<Vec<f64>> {
        let n = self.n;
        if n == 0 {
            return Ok(Vec::new());
        }
        self.backup.copy_from_slice(&self.a);
        let ok = n <= SMALL_SVD_MAX && self.golub_reinsch();
        let mut v: Vec<f64> = if ok {
            self.w.iter().map(|x| x.abs()).collect()
        } else {
            let m = MatRef::from_column_major_slice(&self.backup, n, n);
            let mem = self.mem.get_or_insert_with(|| {
                MemBuffer::new(faer::linalg::svd::svd_scratch::<f64>(
                    n,
                    n,
                    faer::linalg::svd::ComputeSvdVectors::No,
                    faer::linalg::svd::ComputeSvdVectors::No,
                    Par::Seq,
                    Default::default(),
                ))
            });
            singular_values(m, mem)?
        };
        v.sort_by(|x, y| y.partial_cmp(x).unwrap_or(std::cmp::Ordering::Equal));
        Ok(v)
    }

    /// Golub-Reinsch on `a` (square, column-major), singular values (signed) into `w`.
    /// Returns false when the QR iteration did not converge or a value is not finite.
    fn golub_reinsch(&mut self) -> bool {
        let n = self.n;
        let a = &mut self.a;
        let w = &mut self.w;
        let rv1 = &mut self.rv1;
        // A[i][j] = a[j * n + i]
        let (mut g, mut scale, mut anorm) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..n {
            let l = i + 1;
            rv1[i] = scale * g;
            g = 0.0;
            scale = 0.0;
            let mut s;
            // Left Householder on column i, rows i..n (contiguous).
            {
                let ci = i * n;
                for k in i..n {
                    scale += a[ci + k].abs();
                }
                if scale != 0.0 {
                    s = 0.0;
                    let inv = 1.0 / scale;
                    for k in i..n {
                        a[ci + k] *= inv;
                        s += a[ci + k] * a[ci + k];
                    }
                    let f = a[ci + i];
                    g = -s.sqrt().copysign(f);
                    let h = f * g - s;
                    a[ci + i] = f - g;
                    for j in l..n {
                        let cj = j * n;
                        let mut sj = 0.0;
                        for k in i..n {
                            sj += a[ci + k] * a[cj + k];
                        }
                        let fj = sj / h;
                        for k in i..n {
                            a[cj + k] += fj * a[ci + k];
                        }
                    }
                    for k in i..n {
                        a[ci + k] *= scale;
                    }
                }
            }
            w[i] = scale * g;
            g = 0.0;
            scale = 0.0;
            // Right Householder on row i, columns l..n.
            if i + 1 != n {
                for k in l..n {
                    scale += a[k * n + i].abs();
                }
                if scale != 0.0 {
                    s = 0.0;
                    let inv = 1.0 / scale;
                    for k in l..n {
                        a[k * n + i] *= inv;
                        s += a[k * n + i] * a[k * n + i];
                    }
                    let f = a[l * n + i];
                    g = -s.sqrt().copysign(f);
                    let h = f * g - s;
                    a[l * n + i] = f - g;
                    for k in l..n {
                        rv1[k] = a[k * n + i] / h;
                    }
                    // rows j = l..n: A[j][l..] += (A[j][l..] . A[i][l..]) rv1[l..], done column-wise.
                    let mut dots = [0.0f64; SMALL_SVD_MAX];
                    for k in l..n {
                        let aik = a[k * n + i];
                        let ck = k * n;
                        for j in l..n {
                            dots[j] += a[ck + j] * aik;
                        }
                    }
                    for k in l..n {
                        let r = rv1[k];
                        let ck = k * n;
                        for j in l..n {
                            a[ck + j] += dots[j] * r;
                        }
                    }
                    for k in l..n {
                        a[k * n + i] *= scale;
                    }
                }
            }
            anorm = anorm.max(w[i].abs() + rv1[i].abs());
        }
        if !anorm.is_finite() {
            return false;
        }
        if anorm == 0.0 {
            return true;
        }
        // Diagonalisation of the bidiagonal (w: diagonal, rv1[1..]: superdiagonal).
        for k in (0..n).rev() {
            let mut its = 0;
            loop {
                let mut flag = true;
                let mut l = k;
                loop {
                    if l == 0 || rv1[l].abs() + anorm == anorm {
                        flag = false;
                        break;
                    }
                    if w[l - 1].abs() + anorm == anorm {
                        break;
                    }
                    l -= 1;
                }
                if flag {
                    // Cancel rv1[l] (w[l-1] is negligible).
                    let (mut c, mut s) = (0.0f64, 1.0f64);
                    for i in l..=k {
                        let f = s * rv1[i];
                        rv1[i] *= c;
                        if f.abs() + anorm == anorm {
                            break;
                        }
                        let gg = w[i];
                        let h = fast_hypot(f, gg);
                        w[i] = h;
                        let hi = 1.0 / h;
                        c = gg * hi;
                        s = -f * hi;
                    }
                }
                let z = w[k];
                if l == k {
                    if z < 0.0 {
                        w[k] = -z;
                    }
                    break;
                }
                its += 1;
                if its > 75 {
                    return false;
                }
                let mut x = w[l];
                let nm = k - 1;
                let mut y = w[nm];
                let mut gg = rv1[nm];
                let mut h = rv1[k];
                if x == 0.0 || h == 0.0 || y == 0.0 {
                    return false;
                }
                let mut f = ((y - z) * (y + z) + (gg - h) * (gg + h)) / (2.0 * h * y);
                gg = pythag(f, 1.0);
                f = ((x - z) * (x + z) + h * ((y / (f + gg.copysign(f))) - h)) / x;
                let (mut c, mut s) = (1.0f64, 1.0f64);
                for j in l..=nm {
                    let i = j + 1;
                    gg = rv1[i];
                    y = w[i];
                    h = s * gg;
                    gg *= c;
                    let mut zz = fast_hypot(f, h);
                    rv1[j] = zz;
                    if zz == 0.0 {
                        return false;
                    }
                    let iz = 1.0 / zz;
                    c = f * iz;
                    s = h * iz;
                    f = x * c + gg * s;
                    gg = gg * c - x * s;
                    h = y * s;
                    y *= c;
                    zz = fast_hypot(f, h);
                    w[j] = zz;
                    if zz != 0.0 {
                        zz = 1.0 / zz;
                        c = f * zz;
                        s = h * zz;
                    }
                    f = c * gg + s * y;
                    x = c * y - s * gg;
                }
                rv1[l] = 0.0;
                rv1[k] = f;
                w[k] = x;
                if !(f.is_finite() && x.is_finite()) {
                    return false;
                }
            }
        }
        w.iter().all(|x| x.is_finite())
    }
}


/// Splits whose singular values are computed together (interleaved, see [`BatchSvd`]).
const LANES: usize = 8;

/// Singular values of up to [`LANES`] small square matrices at once: the same Golub-Reinsch as
/// [`SmallSvd`], with the matrices interleaved lane-minor (`a[(j * n + i) * LANES + lane]`), so that
/// the bidiagonalisation runs in lockstep over the lanes (vectorised) and the QR chases of the
/// lanes, each a chain of dependent square roots and divisions, overlap in the processor. A lane
/// that does not converge falls back to [`SmallSvd`] (and faer).
struct BatchSvd {
    n: usize,
    /// `a[j * n + i][lane]` = `A[i][j]` of that lane.
    a: Vec<[f64; LANES]>,
    w: Vec<f64>,
    rv1: Vec<f64>,
    single: SmallSvd,
}

impl BatchSvd {
    fn new(n: usize) -> Self {
        BatchSvd {
            n,
            a: vec![[0.0; LANES]; n * n],
            w: vec![0.0; n * LANES],
            rv1: vec![0.0; n * LANES],
            single: SmallSvd::new(n),
        }
    }

    /// Singular values (decreasing) of the `m <= LANES` column-major matrices in `src` (lane `q` at
    /// `src[q * n * n..]`).
    fn values(&mut self, src: &[f64], m: usize) -> Result<Vec<Vec<f64>>> {
        let n = self.n;
        let nn = n * n;
        if n > SMALL_SVD_MAX {
            let mut out = Vec::with_capacity(m);
            for q in 0..m {
                self.single.a.copy_from_slice(&src[q * nn..(q + 1) * nn]);
                out.push(self.single.values()?);
            }
            return Ok(out);
        }
        const K: usize = LANES;
        for (e, x) in self.a[..nn].iter_mut().enumerate() {
            for (q, xq) in x.iter_mut().enumerate().take(K) {
                *xq = if q < m { src[q * nn + e] } else { 0.0 };
            }
        }
        let ok = self.bidiagonalise_and_chase();
        let mut out = Vec::with_capacity(m);
        for q in 0..m {
            if ok[q] {
                let mut v: Vec<f64> = (0..n).map(|i| self.w[i * K + q].abs()).collect();
                v.sort_by(|x, y| y.partial_cmp(x).unwrap_or(std::cmp::Ordering::Equal));
                out.push(v);
            } else {
                self.single.a.copy_from_slice(&src[q * nn..(q + 1) * nn]);
                out.push(self.single.values()?);
            }
        }
        Ok(out)
    }

    /// [`Self::body`], compiled for AVX2 + FMA when the processor has them (runtime dispatch; the
    /// package is built for the baseline instruction set).
    fn bidiagonalise_and_chase(&mut self) -> [bool; LANES] {
        #[cfg(target_arch = "x86_64")]
        {
            use std::sync::OnceLock;
            static HAS: OnceLock<bool> = OnceLock::new();
            if *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
                // SAFETY: the features were detected at run time.
                return unsafe { self.body_avx2() };
            }
        }
        self.body()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn body_avx2(&mut self) -> [bool; LANES] {
        self.body()
    }

    #[inline(always)]
    fn body(&mut self) -> [bool; LANES] {
        const K: usize = LANES;
        type V = [f64; LANES];
        let n = self.n;
        let a: &mut [V] = &mut self.a;
        let w = &mut self.w;
        let rv1 = &mut self.rv1;
        // Element-wise helpers on lane vectors: fixed-size loops that the compiler turns into
        // SIMD instructions (two AVX2 registers per lane vector).
        #[inline(always)]
        fn fma_into(acc: &mut V, x: &V, y: &V) {
            for q in 0..LANES {
                acc[q] += x[q] * y[q];
            }
        }
        #[inline(always)]
        fn axpy(y: &mut V, s: &V, x: &V) {
            for q in 0..LANES {
                y[q] += s[q] * x[q];
            }
        }
        #[inline(always)]
        fn scale_by(x: &mut V, s: &V) {
            for q in 0..LANES {
                x[q] *= s[q];
            }
        }
        #[inline(always)]
        fn abs_into(acc: &mut V, x: &V) {
            for q in 0..LANES {
                acc[q] += x[q].abs();
            }
        }
        #[inline(always)]
        fn recip_or_zero(x: &V) -> V {
            let mut r = [0.0; LANES];
            for q in 0..LANES {
                r[q] = if x[q] != 0.0 { 1.0 / x[q] } else { 0.0 };
            }
            r
        }
        let mut g = [0.0f64; K];
        let mut scale = [0.0f64; K];
        let mut anorm = [0.0f64; K];
        // dots[j]: per-row dot products of the right Householder step (n <= SMALL_SVD_MAX here).
        let mut dots = [[0.0f64; K]; SMALL_SVD_MAX];
        for i in 0..n {
            let l = i + 1;
            for q in 0..K {
                rv1[i * K + q] = scale[q] * g[q];
            }
            // Left Householder on column i (rows i..n, contiguous: A[k][i] = a[i * n + k]).
            let (before, rest) = a.split_at_mut((i + 1) * n);
            let coli = &mut before[i * n + i..];
            let mut sc = [0.0f64; K];
            for x in coli.iter() {
                abs_into(&mut sc, x);
            }
            let inv = recip_or_zero(&sc);
            let mut ss = [0.0f64; K];
            for x in coli.iter_mut() {
                scale_by(x, &inv);
                fma_into(&mut ss, x, x);
            }
            let mut hinv = [0.0f64; K];
            let mut gl = [0.0f64; K];
            {
                let x = &mut coli[0];
                for q in 0..K {
                    let f = x[q];
                    let gg = -ss[q].sqrt().copysign(f);
                    let h = f * gg - ss[q];
                    hinv[q] = if h != 0.0 { 1.0 / h } else { 0.0 };
                    x[q] = f - gg;
                    gl[q] = gg;
                }
            }
            for j in l..n {
                let colj = &mut rest[(j - l) * n + i..(j - l + 1) * n];
                let mut sj = [0.0f64; K];
                for (xi, xj) in coli.iter().zip(colj.iter()) {
                    fma_into(&mut sj, xi, xj);
                }
                scale_by(&mut sj, &hinv);
                for (xi, xj) in coli.iter().zip(colj.iter_mut()) {
                    axpy(xj, &sj, xi);
                }
            }
            for x in coli.iter_mut() {
                scale_by(x, &sc);
            }
            for q in 0..K {
                w[i * K + q] = sc[q] * gl[q];
            }
            g = [0.0; K];
            scale = [0.0; K];
            // Right Householder on row i, columns l..n (A[i][k] = a[k * n + i], stride n).
            if i + 1 != n {
                let mut sc = [0.0f64; K];
                for k in l..n {
                    abs_into(&mut sc, &a[k * n + i]);
                }
                let inv = recip_or_zero(&sc);
                let mut ss = [0.0f64; K];
                for k in l..n {
                    let x = &mut a[k * n + i];
                    scale_by(x, &inv);
                    fma_into(&mut ss, x, x);
                }
                let mut hinv = [0.0f64; K];
                {
                    let x = &mut a[l * n + i];
                    for q in 0..K {
                        let f = x[q];
                        let gg = -ss[q].sqrt().copysign(f);
                        let h = f * gg - ss[q];
                        hinv[q] = if h != 0.0 { 1.0 / h } else { 0.0 };
                        x[q] = f - gg;
                        g[q] = gg;
                    }
                }
                for k in l..n {
                    let x = &a[k * n + i];
                    for q in 0..K {
                        rv1[k * K + q] = x[q] * hinv[q];
                    }
                }
                // rows j > i: A[j][l..] += (A[j][l..] . A[i][l..]) rv1[l..], column by column
                // (columns are contiguous in j).
                for d in dots[l..n].iter_mut() {
                    *d = [0.0; K];
                }
                for k in l..n {
                    let col = &a[k * n..(k + 1) * n];
                    let aik = col[i];
                    for (d, x) in dots[l..n].iter_mut().zip(&col[l..n]) {
                        fma_into(d, x, &aik);
                    }
                }
                for k in l..n {
                    let mut r = [0.0f64; K];
                    r.copy_from_slice(&rv1[k * K..(k + 1) * K]);
                    let col = &mut a[k * n..(k + 1) * n];
                    for (x, d) in col[l..n].iter_mut().zip(&dots[l..n]) {
                        axpy(x, d, &r);
                    }
                }
                for k in l..n {
                    scale_by(&mut a[k * n + i], &sc);
                }
                scale = sc;
            }
            for q in 0..K {
                anorm[q] = anorm[q].max(w[i * K + q].abs() + rv1[i * K + q].abs());
            }
        }
        // QR on the bidiagonals; the chases of the lanes are interleaved step by step.
        let mut ok = [true; K];
        let mut kk = [0usize; K];
        let mut its = [0usize; K];
        let mut done = [false; K];
        for q in 0..K {
            if !anorm[q].is_finite() {
                ok[q] = false;
                done[q] = true;
            } else if anorm[q] == 0.0 {
                done[q] = true;
                for i in 0..n {
                    w[i * K + q] = 0.0;
                }
            }
            kk[q] = n - 1;
        }
        let wi = |i: usize, q: usize| i * K + q;
        let mut lo = [0usize; K];
        let mut cnt = [0usize; K]; // chase steps of this round (0: no sweep)
        let mut cc = [0.0f64; K];
        let mut sn = [0.0f64; K];
        let mut ff = [0.0f64; K];
        let mut xx = [0.0f64; K];
        while done.iter().any(|d| !d) {
            let mut maxcnt = 0usize;
            for q in 0..K {
                cnt[q] = 0;
                if done[q] {
                    continue;
                }
                let an = anorm[q];
                let k = kk[q];
                let mut flag = true;
                let mut l = k;
                loop {
                    if l == 0 || rv1[wi(l, q)].abs() + an == an {
                        flag = false;
                        break;
                    }
                    if w[wi(l - 1, q)].abs() + an == an {
                        break;
                    }
                    l -= 1;
                }
                if flag {
                    let (mut c, mut s) = (0.0f64, 1.0f64);
                    for i in l..=k {
                        let f = s * rv1[wi(i, q)];
                        rv1[wi(i, q)] *= c;
                        if f.abs() + an == an {
                            break;
                        }
                        let gg = w[wi(i, q)];
                        let h = fast_hypot(f, gg);
                        w[wi(i, q)] = h;
                        let hi = 1.0 / h;
                        c = gg * hi;
                        s = -f * hi;
                    }
                }
                let z = w[wi(k, q)];
                if l == k {
                    if z < 0.0 {
                        w[wi(k, q)] = -z;
                    }
                    its[q] = 0;
                    if k == 0 {
                        done[q] = true;
                    } else {
                        kk[q] = k - 1;
                    }
                    continue;
                }
                its[q] += 1;
                let x = w[wi(l, q)];
                let y = w[wi(k - 1, q)];
                let gq = rv1[wi(k - 1, q)];
                let h = rv1[wi(k, q)];
                if its[q] > 75 || x == 0.0 || h == 0.0 || y == 0.0 {
                    ok[q] = false;
                    done[q] = true;
                    continue;
                }
                let mut f = ((y - z) * (y + z) + (gq - h) * (gq + h)) / (2.0 * h * y);
                let g1 = pythag(f, 1.0);
                f = ((x - z) * (x + z) + h * ((y / (f + g1.copysign(f))) - h)) / x;
                lo[q] = l;
                cnt[q] = k - l; // steps j = l..k-1
                cc[q] = 1.0;
                sn[q] = 1.0;
                ff[q] = f;
                xx[q] = x;
                maxcnt = maxcnt.max(cnt[q]);
            }
            for step in 0..maxcnt {
                for q in 0..K {
                    if step >= cnt[q] {
                        continue;
                    }
                    let j = lo[q] + step;
                    let i = j + 1;
                    let (mut c, mut s, mut f, mut x) = (cc[q], sn[q], ff[q], xx[q]);
                    let mut gg = rv1[wi(i, q)];
                    let mut y = w[wi(i, q)];
                    let mut h = s * gg;
                    gg *= c;
                    let mut z = fast_hypot(f, h);
                    rv1[wi(j, q)] = z;
                    if z == 0.0 {
                        // cannot happen for a nonzero superdiagonal; the lane is redone by SmallSvd
                        ok[q] = false;
                        done[q] = true;
                        cnt[q] = 0;
                        continue;
                    }
                    let iz = 1.0 / z;
                    c = f * iz;
                    s = h * iz;
                    f = x * c + gg * s;
                    gg = gg * c - x * s;
                    h = y * s;
                    y *= c;
                    z = fast_hypot(f, h);
                    w[wi(j, q)] = z;
                    if z != 0.0 {
                        let iz = 1.0 / z;
                        c = f * iz;
                        s = h * iz;
                    }
                    f = c * gg + s * y;
                    x = c * y - s * gg;
                    cc[q] = c;
                    sn[q] = s;
                    ff[q] = f;
                    xx[q] = x;
                }
            }
            for q in 0..K {
                if cnt[q] == 0 || done[q] {
                    continue;
                }
                let (l, k) = (lo[q], kk[q]);
                rv1[wi(l, q)] = 0.0;
                rv1[wi(k, q)] = ff[q];
                w[wi(k, q)] = xx[q];
                if !(ff[q].is_finite() && xx[q].is_finite()) {
                    ok[q] = false;
                    done[q] = true;
                }
            }
        }
        for q in 0..K {
            if ok[q] && !(0..n).all(|i| w[wi(i, q)].is_finite()) {
                ok[q] = false;
            }
        }
        ok
    }
}

/// Largest state size handled by [`SmallSvd`]'s own Golub-Reinsch (faer above).
const SMALL_SVD_MAX: usize = 64;

/// Values-only SVD of a small square matrix, sequential (the caller is already parallel),
/// sorted decreasingly.
fn singular_values(m: MatRef<'_, f64>, mem: &mut MemBuffer) -> Result<Vec<f64>> {
    let n = m.nrows();
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut s = faer::diag::Diag::<f64>::zeros(n);
    faer::linalg::svd::svd(m, s.as_mut(), None, None, Par::Seq, MemStack::new(mem), Default::default())
        .map_err(|e| Error::Numerical(format!("SVD did not converge: {e:?}")))?;
    let mut v: Vec<f64> = s.column_vector().iter().map(|x| x.abs()).collect();
    v.sort_by(|x, y| y.partial_cmp(x).unwrap_or(std::cmp::Ordering::Equal));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
    }

    /// Materialise T densely (f64) from the factors of channel 0.
    fn materialise(kind: Transition, l: usize, n: usize, a: &[f64], b: &[f64], c: &[f64]) -> Vec<f64> {
        let mut t_op = vec![0.0; l * l];
        for s in 0..l {
            // x = b_s, then x <- A_r x for r = s+1..t.
            let mut x: Vec<f64> = b[s * n..(s + 1) * n].to_vec();
            for t in s..l {
                if t > s {
                    x = match kind {
                        Transition::Identity => x,
                        Transition::Scalar => x.iter().map(|v| v * a[t]).collect(),
                        Transition::Diagonal => (0..n).map(|i| x[i] * a[t * n + i]).collect(),
                        Transition::Dense => (0..n)
                            .map(|i| (0..n).map(|k| a[t * n * n + i * n + k] * x[k]).sum())
                            .collect(),
                    };
                }
                t_op[t * l + s] = (0..n).map(|i| c[t * n + i] * x[i]).sum();
            }
        }
        t_op
    }

    #[test]
    fn agrees_with_dense_kernel() {
        let mut seed = 5u64;
        for kind in [Transition::Identity, Transition::Scalar, Transition::Diagonal, Transition::Dense] {
            for (l, n) in [(2usize, 1usize), (5, 3), (12, 4), (30, 6)] {
                let na = match kind {
                    Transition::Identity => 0,
                    Transition::Scalar => l,
                    Transition::Diagonal => l * n,
                    Transition::Dense => l * n * n,
                };
                let a: Vec<f64> = (0..na).map(|_| 1.6 * lcg(&mut seed)).collect();
                let b: Vec<f64> = (0..l * n).map(|_| lcg(&mut seed)).collect();
                let c: Vec<f64> = (0..l * n).map(|_| lcg(&mut seed)).collect();
                let f = SsmFactors { batch: 1, l, n, kind, a: &a, b: &b, c: &c };
                let opts = StructuredOptions { rtol: Some(1e-9), ..Default::default() };
                let got = ssm_ess(&f, &opts).unwrap();
                let op = materialise(kind, l, n, &a, &b, &c);
                let dopts = super::super::DenseOptions { rtol: Some(1e-9), ..Default::default() };
                let want = super::super::dense_ess(&op, 1, l, &dopts).unwrap();
                assert_eq!(got.tolerance, want.tolerance, "{kind:?} L={l} N={n}");
                for (x, y) in got.entropy.unwrap().iter().zip(want.entropy.unwrap().iter()) {
                    assert!((x - y).abs() <= 1e-9 * y.max(1.0), "{kind:?} L={l} N={n}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn growth_does_not_overflow() {
        // a = 4 over 2000 steps: T entries up to 4^2000 (overflow in f64), curves still finite.
        let (l, n) = (2000usize, 2usize);
        let a = vec![4.0; l];
        let b = vec![1.0; l * n];
        let c: Vec<f64> = (0..l * n).map(|i| if i % 2 == 0 { 1.0 } else { -0.5 }).collect();
        let f = SsmFactors { batch: 1, l, n, kind: Transition::Scalar, a: &a, b: &b, c: &c };
        let got = ssm_ess(&f, &StructuredOptions::default()).unwrap();
        let tc = got.tolerance.unwrap();
        let en = got.entropy.unwrap();
        assert_eq!(tc[1000], 1.0);
        assert!((en[1000] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn huge_and_tiny_dense_transitions() {
        // Diagonal transitions of size 2^(+-900) given as dense matrices agree with the
        // diagonal path (T itself overflows / underflows float64 here).
        let (l, n) = (12usize, 3usize);
        let mut seed = 9u64;
        let d: Vec<f64> = (0..l * n).map(|_| 0.5 + lcg(&mut seed)).collect();
        let b: Vec<f64> = (0..l * n).map(|_| lcg(&mut seed)).collect();
        let c: Vec<f64> = (0..l * n).map(|_| lcg(&mut seed)).collect();
        let opts = StructuredOptions { rtol: Some(1e-10), ..Default::default() };
        for e in [-900i64, 900] {
            let ad: Vec<f64> = d.iter().map(|&x| ldexp(x, e)).collect();
            let mut a = vec![0.0; l * n * n];
            for t in 0..l {
                for i in 0..n {
                    a[t * n * n + i * n + i] = ad[t * n + i];
                }
            }
            let fd = SsmFactors { batch: 1, l, n, kind: Transition::Diagonal, a: &ad, b: &b, c: &c };
            let fm = SsmFactors { batch: 1, l, n, kind: Transition::Dense, a: &a, b: &b, c: &c };
            let want = ssm_ess(&fd, &opts).unwrap();
            let got = ssm_ess(&fm, &opts).unwrap();
            assert_eq!(got.tolerance, want.tolerance);
            assert!(want.tolerance.as_ref().unwrap()[l / 2] >= 1.0);
            for (x, y) in got.entropy.unwrap().iter().zip(want.entropy.as_ref().unwrap()) {
                assert!(x.is_finite() && (x - y).abs() <= 1e-10 * y.max(1.0), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn bad_input() {
        let f = SsmFactors::<f64> { batch: 1, l: 3, n: 0, kind: Transition::Identity, a: &[], b: &[], c: &[] };
        assert!(matches!(ssm_ess(&f, &Default::default()), Err(Error::Shape { .. })));
        let b = [1.0, f64::NAN, 0.0];
        let f = SsmFactors { batch: 1, l: 3, n: 1, kind: Transition::Identity, a: &[], b: &b, c: &[0.0; 3] };
        assert!(matches!(ssm_ess(&f, &Default::default()), Err(Error::NonFinite { .. })));
        let f = SsmFactors { batch: 1, l: 3, n: 1, kind: Transition::Scalar, a: &[1.0], b: &[0.0; 3], c: &[0.0; 3] };
        assert!(matches!(ssm_ess(&f, &Default::default()), Err(Error::Shape { .. })));
    }

    #[test]
    fn small_svd_agrees_with_faer() {
        let mut seed = 11u64;
        for n in [1usize, 2, 3, 5, 8, 16, 17, 33] {
            for case in 0..6 {
                let mut a: Vec<f64> = (0..n * n).map(|_| lcg(&mut seed)).collect();
                if case == 1 && n > 2 {
                    // rank deficient: last column = first column, a zero row
                    for i in 0..n {
                        a[(n - 1) * n + i] = a[i];
                    }
                    for j in 0..n {
                        a[j * n + 1] = 0.0;
                    }
                }
                if case == 2 {
                    // graded columns over 1e-12..1
                    for j in 0..n {
                        let sc = 10f64.powf(-12.0 * j as f64 / n.max(2) as f64);
                        for i in 0..n {
                            a[j * n + i] *= sc;
                        }
                    }
                }
                if case == 3 {
                    // lower triangular
                    for j in 0..n {
                        for i in 0..j {
                            a[j * n + i] = 0.0;
                        }
                    }
                }
                if case == 4 {
                    a.iter_mut().for_each(|x| *x = 0.0);
                }
                let mut s = SmallSvd::new(n);
                s.a.copy_from_slice(&a);
                let got = s.values().unwrap();
                let m = MatRef::from_column_major_slice(&a, n, n);
                let mut mem = MemBuffer::new(faer::linalg::svd::svd_scratch::<f64>(
                    n,
                    n,
                    faer::linalg::svd::ComputeSvdVectors::No,
                    faer::linalg::svd::ComputeSvdVectors::No,
                    Par::Seq,
                    Default::default(),
                ));
                let want = singular_values(m, &mut mem).unwrap();
                let s1 = want[0].max(1e-300);
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() <= 1e-13 * s1 * n as f64, "n={n} case={case}: {got:?} vs {want:?}");
                }
            }
        }
    }

    #[test]
    fn batch_svd_agrees_with_single() {
        let mut seed = 17u64;
        for n in [1usize, 2, 4, 16, 20] {
            let m = LANES - 1;
            let mut src: Vec<f64> = (0..LANES * n * n).map(|_| lcg(&mut seed)).collect();
            // lane 1: zero matrix; lane 2: rank one
            for e in 0..n * n {
                src[n * n + e] = 0.0;
            }
            if n > 1 {
                for j in 0..n {
                    for i in 0..n {
                        src[2 * n * n + j * n + i] = (i as f64 + 1.0) * (j as f64 - 0.5);
                    }
                }
            }
            let mut b = BatchSvd::new(n);
            let got = b.values(&src, m).unwrap();
            for q in 0..m {
                let mut s = SmallSvd::new(n);
                s.a.copy_from_slice(&src[q * n * n..(q + 1) * n * n]);
                let want = s.values().unwrap();
                let s1 = want[0].max(1e-300);
                for (x, y) in got[q].iter().zip(&want) {
                    assert!((x - y).abs() <= 1e-13 * s1 * n as f64, "n={n} lane={q}: {:?} vs {want:?}", got[q]);
                }
            }
        }
    }

    #[test]
    #[ignore]
    fn bench_small_svd() {
        let n = 16;
        let reps = 4000;
        let mut seed = 3u64;
        let src: Vec<f64> = (0..LANES * n * n).map(|_| lcg(&mut seed)).collect();
        let t0 = std::time::Instant::now();
        let mut acc = 0.0;
        for _ in 0..reps {
            let mut s = SmallSvd::new(n);
            for q in 0..LANES {
                s.a.copy_from_slice(&src[q * n * n..(q + 1) * n * n]);
                acc += s.values().unwrap()[0];
            }
        }
        let t1 = t0.elapsed();
        let mut b = BatchSvd::new(n);
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            acc += b.values(&src, LANES).unwrap()[0][0];
        }
        let t2 = t0.elapsed();
        let m = MatRef::from_column_major_slice(&src[..n * n], n, n);
        let mut mem = MemBuffer::new(faer::linalg::svd::svd_scratch::<f64>(n, n, faer::linalg::svd::ComputeSvdVectors::No, faer::linalg::svd::ComputeSvdVectors::No, Par::Seq, Default::default()));
        let t0 = std::time::Instant::now();
        for _ in 0..reps * LANES {
            acc += singular_values(m, &mut mem).unwrap()[0];
        }
        let t3 = t0.elapsed();
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / (reps * LANES) as f64;
        eprintln!("n=16 per matrix: single GR {:.2} us, batched GR {:.2} us, faer {:.2} us ({acc})", per(t1), per(t2), per(t3));
    }

    #[test]
    fn ldexp_and_exponent() {
        assert_eq!(exponent(1.0), 0);
        assert_eq!(exponent(3.0), 1);
        assert_eq!(exponent(0.25), -2);
        assert_eq!(exponent(f64::MIN_POSITIVE / 4.0), -1024);
        assert_eq!(ldexp(1.0, -1074), 5e-324);
        assert_eq!(ldexp(3.0, 2000), f64::INFINITY);
        assert_eq!(ldexp(ldexp(1.5, 900), -900), 1.5);
        assert_eq!(ldexp(1.5, -2000), 0.0);
    }
}
