//! Structured ESS: state-space realisations `T[t, s] = c_t^T A_t A_{t-1} ... A_{s+1} b_s`
//! (`s < t`) of a batch of channels, without forming `T`.
//!
//! # Conventions
//!
//! The recurrence is `h_t = A_t h_{t-1} + b_t u_t`, `y_t = c_t^T h_t (+ D u_t)`, 0-indexed,
//! state size `N`. For `s < t`, `T[t, s] = c_t^T Phi(t, s) b_s` with
//! `Phi(t, s) = A_t A_{t-1} ... A_{s+1}` (so `A_0` never enters any block). The diagonal
//! `T[t, t] = c_t^T b_t (+ D)` is in no block `H_t = T[t:, :t]` and is never used.
//! The usual layers in this form: gated linear attention
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
//! (`O(N^3)`). For `N <= 64` these small problems go, sixteen at a time, through an
//! allocation-free values-only Golub-Reinsch on lane vectors `[f64; 16]` (AVX2/FMA by runtime
//! dispatch): the Householder bidiagonalisation runs in lockstep over the lanes, and in the
//! implicit-shift QR iteration every lane advances on its own (a lane that ends its sweep tests
//! for convergence and sets up its next sweep while the others go on; one chase step of every
//! lane per vector step, with lane-parallel square roots and divisions; with AVX-512 the group
//! path chases two batches, 32 lanes, together, their sweeps in lockstep and the bookkeeping
//! between sweeps in vectors, `avx512::chase_lockstep`). For larger `N` each
//! matrix is reduced by the dense kernel's blocked bidiagonalisation (`dense::bidiag`), and the
//! QR iterations of the batch's bidiagonals then run together on the lanes in the same way (the
//! same values as the dense kernel's SVD, bit for bit); any lane that does not converge takes
//! the dense kernel's SVD, and faer's if that fails.
//!
//! For diagonal, scalar and identity transitions, sixteen channels run in lockstep (module
//! `lanes`): lane `q` of every vector belongs to channel `q` of the group, so the Givens
//! updates, normalisations and products of the group are vector operations, and the lanes of
//! the batched SVD are the group's channels at one split (with AVX-512 the splits go in pairs,
//! and the QR iterations of a pair's 32 bidiagonals run together). Otherwise (dense transitions, batches
//! of fewer than eight channels, or a group whose factors do not fit the budget below) the
//! channels go one by one, sixteen splits of a channel per batched SVD. Every lane performs
//! exactly the floating-point operations of the one-by-one path, in the same order, so the two
//! give the same curves bit for bit. Every worker thread keeps its buffers across the channels
//! it takes. Nothing is squared, so small singular values keep the accuracy of an SVD of
//! `S_O^T S_R`, i.e. about `eps * ||S_O|| ||S_R||` absolute.
//!
//! # Memory
//!
//! The backward factors are needed in the reverse order of their computation. When the factors
//! of all requested splits of a channel fit in a fixed budget (64 MiB, less when the system has
//! little memory available) they are stored; otherwise the first backward sweep keeps only a
//! checkpoint per block of about `sqrt(n_splits)` splits, and each block is recomputed from its
//! checkpoint when the forward sweep reaches it (one more backward sweep of work, about
//! `2 sqrt(n_splits)` factors held). The recomputation repeats the same operations, so the
//! results do not depend on the budget. A group of sixteen channels in lockstep stores the
//! factors of all its splits (packed lower triangles) when they fit in the same budget, and
//! otherwise leaves its channels to the one-by-one path. Per worker the kernel also holds the
//! channel's factors (`O(L N)` for diagonal transitions); [`mamba_ess`] forms them from the native Mamba
//! parameters per channel, so no `(D, L, N)` array exists anywhere.
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

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod chase;
mod lanes;

use super::dense::{mul_pow2, split_positions, EssCurves, Scalar};
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
    let (l, n) = (f.l, f.n);
    let fill = |ch: usize, chan: &mut Channel| -> Result<()> {
        let conv = |dst: &mut Vec<f64>, x: &[F]| {
            dst.clear();
            dst.extend(x.iter().map(|&v| -> f64 { v.into() }));
        };
        match f.kind {
            Transition::Identity => chan.a.clear(),
            Transition::Scalar => conv(&mut chan.a, &f.a[ch * l..(ch + 1) * l]),
            Transition::Diagonal => conv(&mut chan.a, &f.a[ch * l * n..(ch + 1) * l * n]),
            Transition::Dense => conv(&mut chan.a, &f.a[ch * l * n * n..(ch + 1) * l * n * n]),
        }
        conv(&mut chan.b, &f.b[ch * l * n..(ch + 1) * l * n]);
        conv(&mut chan.c, &f.c[ch * l * n..(ch + 1) * l * n]);
        Ok(())
    };
    run(f.batch, l, n, f.kind, F::EPS, &fill, opts)
}

/// A selective SSM (Mamba / S6) layer in its native parameterisation, all float64, row-major.
/// Channel `d` is the diagonal system `A_t = diag(exp(delta[t, d] A[d, :]))`,
/// `b_t = delta[t, d] B[t]`, `c_t = C[t]` (as in the Python `ess.structured.mamba_ess`); the
/// factors are formed per channel on the fly, never as `(D, L, N)` arrays.
#[derive(Clone, Copy, Debug)]
pub struct MambaFactors<'a> {
    /// Channels `D`.
    pub channels: usize,
    /// Sequence length `L`.
    pub l: usize,
    /// State size `N`.
    pub n: usize,
    /// `A`: `D x N`.
    pub a: &'a [f64],
    /// Step sizes `delta`: `L x D`.
    pub delta: &'a [f64],
    /// `B`: `L x N` (shared by all channels) or `L x D x N`.
    pub b: &'a [f64],
    /// `C`: `L x N` or `L x D x N`.
    pub c: &'a [f64],
    /// Round the formed factors to float32 and use the float32 `eps`, as a float32
    /// materialisation of the same factors would.
    pub single: bool,
}

/// [`ssm_ess`] of the channels of a Mamba layer given by [`MambaFactors`].
///
/// Errors: `Shape` for inconsistent lengths, `NonFinite` for a non-finite input or a factor
/// (`exp(delta A)`, `delta B`) that overflows the working precision.
pub fn mamba_ess(m: &MambaFactors<'_>, opts: &StructuredOptions) -> Result<EssCurves> {
    let (d, l, n) = (m.channels, m.l, m.n);
    if l == 0 {
        return Err(Error::shape("delta", "the sequence is empty (L = 0)"));
    }
    if n == 0 {
        return Err(Error::shape("A", "the state dimension is empty (N = 0)"));
    }
    let dn = checked_size("A", &[d, n])?;
    let ld = checked_size("delta", &[l, d])?;
    let ln = checked_size("B", &[l, n])?;
    let ldn = checked_size("B", &[l, d, n])?;
    if m.a.len() != dn {
        return Err(Error::shape("A", format!("expected D x N = {dn} values, got {}", m.a.len())));
    }
    if m.delta.len() != ld {
        return Err(Error::shape("delta", format!("expected L x D = {ld} values, got {}", m.delta.len())));
    }
    for (name, x) in [("B", m.b), ("C", m.c)] {
        if x.len() != ln && x.len() != ldn {
            return Err(Error::shape(
                name,
                format!("expected L x N = {ln} or L x D x N = {ldn} values, got {}", x.len()),
            ));
        }
    }
    check_finite("A", m.a)?;
    check_finite("delta", m.delta)?;
    check_finite("B", m.b)?;
    check_finite("C", m.c)?;
    // With D = 1 both layouts index alike.
    let (b_shared, c_shared) = (m.b.len() == ln, m.c.len() == ln);
    let round = |x: f64| if m.single { x as f32 as f64 } else { x };
    let fill = |ch: usize, chan: &mut Channel| -> Result<()> {
        chan.a.clear();
        chan.b.clear();
        chan.c.clear();
        let ach = &m.a[ch * n..(ch + 1) * n];
        // exp(delta a) of up to 64 states at a time (crate::exp: vectorised, the same bits anywhere)
        let (mut xa, mut ea) = ([0.0f64; 64], [0.0f64; 64]);
        for t in 0..l {
            let dt = m.delta[t * d + ch];
            let (bt, ct) = (
                if b_shared { &m.b[t * n..(t + 1) * n] } else { &m.b[(t * d + ch) * n..(t * d + ch + 1) * n] },
                if c_shared { &m.c[t * n..(t + 1) * n] } else { &m.c[(t * d + ch) * n..(t * d + ch + 1) * n] },
            );
            for k in 0..n {
                if k % 64 == 0 {
                    let m = (n - k).min(64);
                    for (x, &a) in xa[..m].iter_mut().zip(&ach[k..k + m]) {
                        *x = dt * a;
                    }
                    crate::exp::exp_into(&xa[..m], &mut ea[..m]);
                }
                let at = round(ea[k % 64]);
                let bk = round(dt * bt[k]);
                if !at.is_finite() {
                    return Err(Error::NonFinite {
                        arg: "delta, A (exp(delta * A))".into(),
                        index: (ch * l + t) * n + k,
                    });
                }
                if !bk.is_finite() {
                    return Err(Error::NonFinite { arg: "delta, B (delta * B)".into(), index: (ch * l + t) * n + k });
                }
                chan.a.push(at);
                chan.b.push(bk);
                chan.c.push(round(ct[k]));
            }
        }
        Ok(())
    };
    let eps = if m.single { f32::EPSILON as f64 } else { f64::EPSILON };
    run(d, l, n, Transition::Diagonal, eps, &fill, opts)
}

/// The curves of `batch` channels whose factors `fill` writes into a [`Channel`] (in f64).
fn run(
    batch: usize,
    l: usize,
    n: usize,
    kind: Transition,
    eps: f64,
    fill: &(dyn Fn(usize, &mut Channel) -> Result<()> + Sync),
    opts: &StructuredOptions,
) -> Result<EssCurves> {
    let tol = Tolerance::new(opts.atol, opts.rtol, eps)?;
    let positions = split_positions(&opts.positions, l)?;
    let np = positions.len();
    let out_len = checked_size("B", &[batch, np])?;
    let want_tol = opts.method.wants_tolerance();
    let want_ent = opts.method.wants_entropy();
    let mut tol_out = crate::mem::try_filled("B", if want_tol { out_len } else { 0 }, 0.0, "the tolerance curves")?;
    let mut ent_out = crate::mem::try_filled("B", if want_ent { out_len } else { 0 }, 0.0, "the entropy curves")?;
    if np > 0 && batch > 0 {
        // Per worker: the channel's factors (3 x L x N at most for diagonal transitions) and a
        // bounded window of backward factors (see `plan_window`).
        let a_len = match kind {
            Transition::Identity => 0,
            Transition::Scalar => l,
            Transition::Diagonal => checked_size("B", &[l, n])?,
            Transition::Dense => checked_size("A", &[l, n, n])?,
        };
        let threads = rayon::current_num_threads();
        let in_flight = threads.min(batch).max(1) as u64;
        let budget = window_budget(in_flight);
        // Groups of LANES channels in lockstep (see `lanes`) when the backward factors of every
        // split of a group fit in the window budget (that of one channel on the other path);
        // the same results bit for bit.
        let grouped = kind != Transition::Dense
            && n <= SMALL_SVD_MAX
            && batch >= GROUP_MIN_BATCH
            && !GROUP_PATH_OFF.load(std::sync::atomic::Ordering::Relaxed)
            && lanes::group_bytes(np, n) <= budget;
        let (per_worker, in_flight, unit) = if grouped {
            // LANES channels, their interleaved copy, and all splits' factors of the group.
            let per = checked_size("B", &[l, n, 2])?
                .checked_add(a_len)
                .and_then(|x| x.checked_mul(2 * LANES))
                .and_then(|x| x.checked_mul(8))
                .and_then(|x| x.checked_add(lanes::group_bytes(np, n)));
            (per, threads.min(batch.div_ceil(LANES)).max(1) as u64, format!("group(s) of {LANES} channels"))
        } else {
            let per = checked_size("B", &[l, n, 2])?
                .checked_add(a_len)
                .and_then(|x| x.checked_add(plan_window(np, n, budget).1))
                .and_then(|x| x.checked_mul(8));
            (per, in_flight, "channel(s)".to_string())
        };
        crate::mem::gate(
            "B",
            per_worker.and_then(|x| (x as u64).checked_mul(in_flight)),
            &format!("the working buffers of {in_flight} {unit} in flight (L = {l}, N = {n})"),
        )?;
        let mut rows: Vec<(usize, Option<&mut [f64]>, Option<&mut [f64]>)> = Vec::with_capacity(batch);
        let mut ti = if want_tol { Some(tol_out.chunks_mut(np)) } else { None };
        let mut ei = if want_ent { Some(ent_out.chunks_mut(np)) } else { None };
        for b in 0..batch {
            rows.push((b, ti.as_mut().and_then(|it| it.next()), ei.as_mut().and_then(|it| it.next())));
        }
        if grouped {
            // rayon calls the init once per piece of work it splits off, not once per thread: the
            // workspaces (tens of MB at long L) come from a pool so that they are allocated (and
            // their pages faulted in) once per worker.
            #[cfg(test)]
            GROUPED_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let pool = std::sync::Mutex::new(Vec::<lanes::GroupWorkspace>::new());
            let take = || {
                let ws = pool.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
                Pooled { ws: Some(ws), pool: &pool }
            };
            rows.par_chunks_mut(LANES).try_for_each_init(take, |pooled, grp| {
                let ws = pooled.ws.as_mut().expect("pooled workspace");
                crate::interrupt::check()?;
                if ws.chans.len() != LANES {
                    ws.chans =
                        (0..LANES).map(|_| Channel { kind, n, a: Vec::new(), b: Vec::new(), c: Vec::new() }).collect();
                }
                for (q, chan) in ws.chans.iter_mut().enumerate() {
                    chan.kind = kind;
                    chan.n = n;
                    // A short last group repeats its last channel in the spare lanes (discarded).
                    if q < grp.len() {
                        fill(grp[q].0, chan)?;
                    }
                }
                for q in grp.len()..LANES {
                    let (done, rest) = ws.chans.split_at_mut(q);
                    let (src, dst) = (&done[q - 1], &mut rest[0]);
                    dst.a.clone_from(&src.a);
                    dst.b.clone_from(&src.b);
                    dst.c.clone_from(&src.c);
                }
                ws.interleave(kind, l, n);
                let mut out = std::mem::take(&mut ws.out);
                out.resize_with(LANES, Vec::new);
                let res = lanes::group(ws, kind, l, n, &positions, &tol, want_tol, want_ent, &mut out);
                if res.is_ok() {
                    for ((_, tr, er), res) in grp.iter_mut().zip(&out) {
                        if let Some(tr) = tr {
                            for (o, r) in tr.iter_mut().zip(res) {
                                *o = r.0;
                            }
                        }
                        if let Some(er) = er {
                            for (o, r) in er.iter_mut().zip(res) {
                                *o = r.1;
                            }
                        }
                    }
                }
                ws.out = out;
                res
            })?;
            return Ok(EssCurves {
                batch,
                n_positions: np,
                tolerance: want_tol.then_some(tol_out),
                entropy: want_ent.then_some(ent_out),
            });
        }
        // Channels are independent small problems: one workspace per worker thread, reused across the
        // channels it takes (no allocation or page faults per channel or split).
        rows.into_par_iter().with_min_len(1).try_for_each_init(Workspace::default, |ws, (ch, tr, er)| {
            crate::interrupt::check()?;
            let mut chan = ws.chan.take().unwrap_or(Channel { kind, n, a: Vec::new(), b: Vec::new(), c: Vec::new() });
            chan.kind = kind;
            chan.n = n;
            fill(ch, &mut chan)?;
            let res = one_channel(&chan, l, &positions, &tol, want_tol, want_ent, budget, ws);
            ws.chan = Some(chan);
            let res = res?;
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
        batch,
        n_positions: np,
        tolerance: want_tol.then_some(tol_out),
        entropy: want_ent.then_some(ent_out),
    })
}

/// A workspace of the grouped path, returned to its pool when dropped.
struct Pooled<'p> {
    ws: Option<lanes::GroupWorkspace>,
    pool: &'p std::sync::Mutex<Vec<lanes::GroupWorkspace>>,
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(ws) = self.ws.take() {
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(ws);
        }
    }
}

/// Backward factors kept at once per channel: `(window, f64 values)`. All of them when they fit
/// in `budget` bytes; otherwise a window of about `sqrt(np)` splits, recomputed block by block
/// from checkpoints taken in one first backward sweep (about `2 sqrt(np)` factors in all, and
/// one more backward sweep of work).
fn plan_window(np: usize, n: usize, budget: usize) -> (usize, usize) {
    let per = n.saturating_mul(n + 2).max(1);
    let all = np.saturating_mul(per);
    if all.saturating_mul(8) <= budget {
        return (np.max(1), all);
    }
    let w = ((np as f64).sqrt().ceil() as usize).max(1);
    let ncp = np.div_ceil(w) + 1;
    (w, (w + ncp).saturating_mul(per))
}

/// Per-channel bytes of stored backward factors above which the sweep switches to checkpoints:
/// 64 MiB, or less when the system has little memory available for the workers in flight.
fn window_budget(in_flight: u64) -> usize {
    let o = WINDOW_BYTES_OVERRIDE.load(std::sync::atomic::Ordering::Relaxed);
    if o > 0 {
        return o;
    }
    let avail = crate::mem::available().map_or(u64::MAX, |a| a / 4 / in_flight.max(1));
    (64u64 << 20).min(avail) as usize
}

/// Smallest batch that takes the grouped path ([`lanes`]); smaller batches go channel by channel
/// (a group costs about as much as `LANES / 2` channels taken one by one).
const GROUP_MIN_BATCH: usize = LANES / 2;

/// Test counter of the calls that took the grouped path.
#[cfg(test)]
static GROUPED_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Test hook: `true` sends every batch through the per-channel path.
static GROUP_PATH_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Test hook: a nonzero value replaces [`window_budget`] (the results do not depend on it).
static WINDOW_BYTES_OVERRIDE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

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

/// `x * 2^-k` for a row scaling: one exact multiplication in the common range, [`ldexp`] beyond.
#[inline(always)]
fn scale_pow2(k: i64) -> Option<f64> {
    (-1000..=1000).contains(&k).then(|| pow2(-k))
}

/// A lower-triangular `N x N` factor with per-row power-of-two exponents:
/// true factor `= diag(2^e) S`. Column-major storage (`s[j * n + i] = S[i, j]`).
#[derive(Clone)]
struct Factor {
    n: usize,
    s: Vec<f64>,
    e: Vec<i64>,
    /// `rz[i]`: row `i` of `S` is zero (kept by [`Factor::normalise`], which every update ends with).
    rz: Vec<bool>,
    /// Whether `S` is currently lower triangular (false after a dense transition).
    tri: bool,
    /// Scratch of length `n`.
    buf: Vec<f64>,
}

impl Factor {
    fn zeros(n: usize) -> Self {
        Factor { n, s: vec![0.0; n * n], e: vec![0; n], rz: vec![true; n], tri: true, buf: vec![0.0; n] }
    }

    /// Becomes a copy of `o` (same `n`), without allocation.
    fn assign(&mut self, o: &Factor) {
        self.s.copy_from_slice(&o.s);
        self.e.copy_from_slice(&o.e);
        self.rz.copy_from_slice(&o.rz);
        self.tri = o.tri;
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

    /// First row of column `j` that may be nonzero.
    #[inline]
    fn col_start(&self, j: usize) -> usize {
        if self.tri {
            j
        } else {
            0
        }
    }

    /// `S[i, :] *= f[i]` for every row, column by column (contiguous).
    fn scale_rows(&mut self, f: &[f64]) {
        let n = self.n;
        for j in 0..n {
            let r0 = self.col_start(j);
            for (x, &fi) in self.s[j * n + r0..(j + 1) * n].iter_mut().zip(&f[r0..n]) {
                *x *= fi;
            }
        }
    }

    /// Rescale each row to max-norm in `[1, 2)` (zero rows get exponent 0).
    fn normalise(&mut self) {
        let n = self.n;
        let mut m = std::mem::take(&mut self.buf);
        m.iter_mut().for_each(|x| *x = 0.0);
        for j in 0..n {
            let r0 = self.col_start(j);
            for (mi, x) in m[r0..n].iter_mut().zip(&self.s[j * n + r0..(j + 1) * n]) {
                *mi = mi.max(x.abs());
            }
        }
        let mut any = false;
        for (i, mi) in m.iter_mut().enumerate() {
            if *mi == 0.0 {
                self.e[i] = 0;
                self.rz[i] = true;
                *mi = 1.0;
                continue;
            }
            self.rz[i] = false;
            let k = exponent(*mi);
            *mi = 1.0;
            if k == 0 {
                continue;
            }
            self.e[i] += k;
            match scale_pow2(k) {
                Some(f) => {
                    *mi = f;
                    any = true;
                }
                None => {
                    for j in self.row_cols(i) {
                        self.s[j * n + i] = ldexp(self.s[j * n + i], -k);
                    }
                }
            }
        }
        if any {
            self.scale_rows(&m);
        }
        self.buf = m;
    }

    /// `S <- diag(a) S` (scalar `a` when `diag` has one entry). Leaves rows of max-norm in
    /// `[1, 4)` rather than `[1, 2)`.
    fn mul_diag(&mut self, a: &[f64]) {
        let n = self.n;
        let mut f = std::mem::take(&mut self.buf);
        let mut any = false;
        for i in 0..n {
            let ai = if a.len() == 1 { a[0] } else { a[i] };
            f[i] = 1.0;
            if ai == 0.0 {
                f[i] = 0.0;
                self.e[i] = 0;
                self.rz[i] = true;
                any = true;
            } else if ai != 1.0 {
                // |S| < 2 and the mantissa of ai is in [1, 2): the product stays finite; the
                // exponent of ai goes to e (|ai| >= 2^1023 included).
                let k = exponent(ai);
                f[i] = ldexp(ai, -k);
                self.e[i] += k;
                any = true;
            }
        }
        if any {
            self.scale_rows(&f);
        }
        self.buf = f;
        // Not normalised: rows now have max-norm in [1, 4) (zero rows flagged above), which the
        // next append (every sweep alternates the two) takes as it is and normalises.
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
            self.rz.iter_mut().for_each(|x| *x = true);
            self.tri = true;
            return;
        }
        let ka = exponent(amax);
        let a_s: Vec<f64> = a.iter().map(|&x| ldexp(x, -ka)).collect();
        // Column scale of A': 2^(e_k - emax) <= 1; the result carries exponent emax + ka.
        let cs: Vec<f64> = self.e.iter().map(|&e| ldexp(1.0, e - emax)).collect();
        let emax = emax + ka;
        let aij = |i: usize, k: usize| {
            if transpose {
                a_s[k * n + i]
            } else {
                a_s[i * n + k]
            }
        };
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
        let mut w = std::mem::take(&mut self.buf);
        let mut first = None;
        for i in 0..n {
            w[i] = 0.0;
            if v[i] == 0.0 {
                continue;
            }
            first = first.or(Some(i));
            let ev = exponent(v[i]);
            if self.rz[i] {
                self.e[i] = ev;
            } else if ev > self.e[i] {
                let d = self.e[i] - ev;
                match scale_pow2(-d) {
                    Some(f) => {
                        for j in 0..=i {
                            self.s[j * n + i] *= f;
                        }
                    }
                    None => {
                        for j in 0..=i {
                            self.s[j * n + i] = ldexp(self.s[j * n + i], d);
                        }
                    }
                }
                self.e[i] = ev;
            }
            w[i] = match scale_pow2(self.e[i]) {
                Some(f) => v[i] * f,
                None => ldexp(v[i], -self.e[i]),
            };
        }
        // Rotations fill the entries of w below the first nonzero one: sweep from there to the end.
        if let Some(first) = first {
            for j in first..n {
                let y = w[j];
                if y == 0.0 {
                    continue;
                }
                let x = self.s[j * n + j];
                let r = fast_hypot(x, y);
                let (c, s) = (x / r, y / r);
                self.s[j * n + j] = r;
                w[j] = 0.0;
                let col = &mut self.s[j * n + j + 1..(j + 1) * n];
                for (p, q) in col.iter_mut().zip(w[j + 1..n].iter_mut()) {
                    let (a, b) = (*p, *q);
                    *p = c * a + s * b;
                    *q = c * b - s * a;
                }
            }
        }
        self.buf = w;
        self.normalise();
    }
}

/// The transition of channel `ch` at time `t`, in f64.
enum Step<'v> {
    Identity,
    Diag(&'v [f64]),
    Dense(&'v [f64]),
}

/// The factors of one channel in f64 (buffers reused across the channels of a worker).
struct Channel {
    kind: Transition,
    n: usize,
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
}

impl Channel {
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
    /// Stored backward factors, transposed (`st_s[k * nn + r * n + i] = S_O[r, i]`), their
    /// exponents and zero-row flags.
    st_s: Vec<f64>,
    st_e: Vec<i64>,
    st_rz: Vec<bool>,
    st_tri: Vec<bool>,
    /// Checkpoints of the backward sweep (only when the window does not hold every split).
    cps: Vec<Factor>,
    lanes_a: Vec<f64>,
    svd: Option<BatchSvd>,
    chan: Option<Channel>,
}

/// Store `so` in slot `k` of the window (transposed, see [`Workspace::st_s`]).
fn store(st_s: &mut [f64], st_e: &mut [i64], st_rz: &mut [bool], st_tri: &mut [bool], k: usize, so: &Factor) {
    let n = so.n;
    let nn = n * n;
    let dst = &mut st_s[k * nn..(k + 1) * nn];
    for j in 0..n {
        for i in 0..n {
            dst[i * n + j] = so.s[j * n + i];
        }
    }
    st_e[k * n..(k + 1) * n].copy_from_slice(&so.e);
    st_rz[k * n..(k + 1) * n].copy_from_slice(&so.rz);
    st_tri[k] = so.tri;
}

/// Backward sweep `S_O(t) = tri(A_t^T [c_t, S_O(t+1)])` for `t = hi, hi-1, ..., lo`, calling
/// `on(t, S_O(t))` after each step.
fn sweep_back(chan: &Channel, so: &mut Factor, hi: usize, lo: usize, mut on: impl FnMut(usize, &Factor)) -> Result<()> {
    let n = chan.n;
    for t in (lo..=hi).rev() {
        if (hi - t).is_multiple_of(64) {
            crate::interrupt::check()?;
        }
        so.append(&chan.c[t * n..(t + 1) * n]);
        chan.apply(so, t, true);
        on(t, so);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn one_channel(
    chan: &Channel,
    l: usize,
    positions: &[usize],
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
    budget: usize,
    ws: &mut Workspace,
) -> Result<Vec<(f64, f64)>> {
    let n = chan.n;
    let mut out = vec![(0.0, 0.0); positions.len()];
    // Requested splits with 1 <= t <= L-1 (t = 0 is 0 by convention), increasing; out index of each.
    let first = positions.partition_point(|&p| p < 1);
    let ts = &positions[first..];
    if ts.is_empty() {
        return Ok(out);
    }
    let (t_min, t_max) = (ts[0], ts[ts.len() - 1]);
    let nn = n * n;
    // The window: `w` consecutive requested splits whose backward factors are held at once.
    let (w, _) = plan_window(ts.len(), n, budget);
    let w = w.min(ts.len());
    let nblocks = ts.len().div_ceil(w);
    let Workspace { st_s, st_e, st_rz, st_tri, cps, lanes_a, svd, chan: _ } = ws;
    crate::mem::resize_advised(st_s, checked_size("B", &[w, nn])?, 0.0);
    st_e.resize(w * n, 0);
    st_rz.resize(w * n, true);
    st_tri.resize(w, true);
    // Backward from S_O(L) = 0. A single block is stored directly; otherwise the factor at the
    // last split of every block is kept as its checkpoint, and each block is recomputed from it
    // when the forward sweep reaches it.
    let mut so = Factor::zeros(n);
    if nblocks == 1 {
        let mut k = ts.len();
        sweep_back(chan, &mut so, l - 1, t_min, |t, f| {
            if k > 0 && ts[k - 1] == t {
                k -= 1;
                store(st_s, st_e, st_rz, st_tri, k, f);
            }
        })?;
    } else {
        if cps.len() < nblocks || cps.first().is_some_and(|c| c.n != n) {
            cps.clear();
            cps.resize_with(nblocks, || Factor::zeros(n));
        }
        let mut b = nblocks;
        sweep_back(chan, &mut so, l - 1, t_min, |t, f| {
            // block b-1 ends at ts[min(b * w, len) - 1]
            if b > 0 && ts[(b * w).min(ts.len()) - 1] == t {
                b -= 1;
                cps[b].assign(f);
            }
        })?;
    }
    // Forward: S_R(1) = [b_0], S_R(t+1) = tri([A_t S_R(t), b_t]).
    let mut sr = Factor::zeros(n);
    sr.append(&chan.b[0..n]);
    if svd.as_ref().is_none_or(|s| s.n != n) {
        *svd = Some(BatchSvd::new(n));
    }
    let svd = svd.as_mut().expect("workspace SVD");
    let mut g: Vec<Option<i64>> = vec![None; n];
    lanes_a.clear();
    lanes_a.resize(LANES * nn, 0.0);
    let mut pending: Vec<(usize, usize, i64)> = Vec::with_capacity(LANES);
    // Singular values of the pending lanes -> curves.
    let flush = |pending: &mut Vec<(usize, usize, i64)>,
                 lanes_a: &mut Vec<f64>,
                 svd: &mut BatchSvd,
                 out: &mut Vec<(f64, f64)>|
     -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut sv = svd.values(lanes_a, pending.len())?;
        for (lane, &(t, o, gmax)) in pending.iter().enumerate() {
            out[o] = split_result(&mut sv[lane], t, l, Some(gmax), tol, want_tol, want_ent);
        }
        pending.clear();
        Ok(())
    };
    let mut t = 1usize;
    for (idx, &tq) in ts.iter().enumerate() {
        let k = idx % w;
        if nblocks > 1 && k == 0 {
            // Recompute this block's backward factors from its checkpoint.
            let blk = idx / w;
            let hi_idx = ((blk + 1) * w).min(ts.len()) - 1;
            so.assign(&cps[blk]);
            store(st_s, st_e, st_rz, st_tri, hi_idx - idx, &so);
            let mut kk = hi_idx - idx;
            if ts[hi_idx] > tq {
                sweep_back(chan, &mut so, ts[hi_idx] - 1, tq, |t, f| {
                    if kk > 0 && ts[idx + kk - 1] == t {
                        kk -= 1;
                        store(st_s, st_e, st_rz, st_tri, kk, f);
                    }
                })?;
            }
        }
        while t < tq {
            if t.is_multiple_of(64) {
                crate::interrupt::check()?;
            }
            chan.apply(&mut sr, t, false);
            sr.append(&chan.b[t * n..(t + 1) * n]);
            t += 1;
        }
        let o = first + idx;
        let so_t = &st_s[k * nn..(k + 1) * nn];
        let so_e = &st_e[k * n..(k + 1) * n];
        let so_rz = &st_rz[k * n..(k + 1) * n];
        let so_tri = st_tri[k];
        // Combined row exponents over rows that are nonzero in both factors.
        let mut gmax: Option<i64> = None;
        for r in 0..n {
            g[r] = (!sr.rz[r] && !so_rz[r]).then(|| sr.e[r] + so_e[r]);
            if let Some(x) = g[r] {
                gmax = Some(gmax.map_or(x, |m: i64| m.max(x)));
            }
        }
        match gmax {
            None => {
                out[o] = split_result(&mut Vec::new(), tq, l, None, tol, want_tol, want_ent);
            }
            Some(gmax) => {
                // W = S_O^T diag(2^(g - gmax)) S_R into the next lane of the batch:
                // W[i, j] = sum_r S_O[r, i] 2^(g_r - gmax) S_R[r, j] (rows of S_O contiguous).
                let lane = pending.len();
                let wl = &mut lanes_a[lane * nn..(lane + 1) * nn];
                wl.iter_mut().for_each(|x| *x = 0.0);
                for r in 0..n {
                    let Some(gr) = g[r] else { continue };
                    let sc = ldexp(1.0, gr - gmax);
                    if sc == 0.0 {
                        continue;
                    }
                    let ocols = if so_tri { r + 1 } else { n };
                    let orow = &so_t[r * n..r * n + ocols];
                    for j in sr.row_cols(r) {
                        let srj = sr.s[j * n + r] * sc;
                        if srj == 0.0 {
                            continue;
                        }
                        for (x, &y) in wl[j * n..j * n + ocols].iter_mut().zip(orow) {
                            *x += y * srj;
                        }
                    }
                }
                pending.push((tq, o, gmax));
                if pending.len() == LANES {
                    flush(&mut pending, lanes_a, svd, &mut out)?;
                }
            }
        }
    }
    debug_assert!(t <= t_max);
    flush(&mut pending, lanes_a, svd, &mut out)?;
    Ok(out)
}

/// `(tolerance, entropy)` at split `t` from the singular values `sigma` (decreasing, `N` of them;
/// truncated here) of the scaled product `W`, `sigma(H_t) = 2^gmax sigma(W)`. `gmax = None`: a
/// zero block (no singular value; `sigma` is not read).
fn split_result(
    sigma: &mut Vec<f64>,
    t: usize,
    l: usize,
    gmax: Option<i64>,
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
) -> (f64, f64) {
    let Some(gmax) = gmax else {
        let sigma: [f64; 0] = [];
        let tau = tol.threshold(0.0, l - t, t);
        return (
            if want_tol { tolerance_count(&sigma, tau) as f64 } else { 0.0 },
            if want_ent { entropy_ess(&sigma) } else { 0.0 },
        );
    };
    // H_t is (L-t) x t: singular values beyond min(t, L-t) are exactly zero
    // (what the N x N product shows there is rounding).
    sigma.truncate(t.min(l - t));
    let smax = sigma.first().copied().unwrap_or(0.0);
    let tol_s = match tol.atol {
        Some(a) => Tolerance { atol: Some(ldexp(a, -gmax)), ..*tol },
        None => *tol,
    };
    let tau = tol_s.threshold(smax, l - t, t);
    (if want_tol { tolerance_count(sigma, tau) as f64 } else { 0.0 }, if want_ent { entropy_ess(sigma) } else { 0.0 })
}

/// Singular values of a small square matrix held in `a` (column-major, `n x n`): a
/// Householder bidiagonalisation and implicit-shift QR on the bidiagonal (Golub-Reinsch, values
/// only), without allocation per call. Absolute accuracy about `eps * ||a||`, as the dense
/// kernel's SVD. Above [`SMALL_SVD_MAX`] the dense kernel's blocked SVD (from [`OWN_SVD_MIN`])
/// or faer's; faer's also if the iteration does not converge or produces a non-finite value
/// (never observed; a safety net).
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

/// `out[q] = hypot(x[q], y[q])` for every lane: `sqrt(x^2 + y^2)` (vectorisable), redone with
/// [`fast_hypot`] for all lanes when any square sum leaves `(1e-290, 1e290)`.
#[inline(always)]
fn lane_hypot(x: &[f64; LANES], y: &[f64; LANES], out: &mut [f64; LANES]) {
    let mut risky = false;
    for q in 0..LANES {
        let sq = x[q] * x[q] + y[q] * y[q];
        out[q] = sq.sqrt();
        risky |= !(sq > 1e-290 && sq < 1e290);
    }
    if risky {
        for q in 0..LANES {
            out[q] = fast_hypot(x[q], y[q]);
        }
    }
}

/// [`pythag`]`(a, 1.0)` with the exact operations by `1.0` left out (the same value, bit for bit,
/// without a division on the chain of dependent operations).
#[inline(always)]
fn pythag_one(a: f64) -> f64 {
    let x = a.abs();
    if x > 1.0 {
        let r = 1.0 / x;
        x * (1.0 + r * r).sqrt()
    } else {
        (1.0 + x * x).sqrt()
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
        let own = if !ok && n >= OWN_SVD_MIN {
            // the dense kernel's blocked SVD (2.5x faer's at order 128); faer's answers if it
            // fails to converge (never seen)
            match crate::ess::dense::bidiag::singular_values(&mut self.a, n) {
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                r => r.ok(),
            }
        } else {
            None
        };
        let mut v: Vec<f64> = if ok {
            self.w.iter().map(|x| x.abs()).collect()
        } else if let Some(v) = own {
            v
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
        matches!(bidiagonal_qr(w, rv1, anorm, false), Ok(true))
    }
}

/// Singular values of an upper bidiagonal matrix by the implicit-shift QR iteration of
/// Golub and Reinsch (values only, `O(n^2)`): `w` its diagonal, `rv1[i]` (`i >= 1`) the
/// superdiagonal entry of rows `i - 1, i` (`rv1[0]` is not read), both overwritten; on success
/// `w` holds the singular values (non-negative, unsorted). `anorm` is the largest
/// `|w[i]| + |rv1[i]|`: entries below `eps * anorm` are taken as zero, so the values are those of
/// a matrix within a small multiple of `eps * anorm` of the input (normwise, as LAPACK's).
///
/// `Ok(false)` when the iteration stalls (an exactly zero entry where a shift divides by it, or
/// 75 iterations on one value) or a value is not finite: the caller then takes another route.
/// With `interruptible`, a pending interrupt is checked every 32 values.
pub(crate) fn bidiagonal_qr(w: &mut [f64], rv1: &mut [f64], anorm: f64, interruptible: bool) -> Result<bool> {
    let n = w.len();
    debug_assert!(rv1.len() >= n);
    for k in (0..n).rev() {
        if interruptible && k % 32 == 0 {
            crate::interrupt::check()?;
        }
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
                return Ok(false);
            }
            let mut x = w[l];
            let nm = k - 1;
            let mut y = w[nm];
            let mut gg = rv1[nm];
            let mut h = rv1[k];
            if x == 0.0 || h == 0.0 || y == 0.0 {
                return Ok(false);
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
                    return Ok(false);
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
                return Ok(false);
            }
        }
    }
    Ok(w.iter().all(|x| x.is_finite()))
}

/// Splits whose singular values are computed together (interleaved, see [`BatchSvd`]).
const LANES: usize = 16;

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
    /// Copy of the input of [`Self::values_interleaved`] (for a lane that falls back).
    backup: Vec<[f64; LANES]>,
    /// The bidiagonals of a pair of batches, 32 lanes ([`Self::values_pair`]; x86-64 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pair_w: Vec<f64>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pair_rv1: Vec<f64>,
}

impl BatchSvd {
    fn new(n: usize) -> Self {
        BatchSvd {
            n,
            a: vec![[0.0; LANES]; n * n],
            // (two spare rows for the AVX2 chase, see `chase`)
            w: vec![0.0; (n + 2) * LANES],
            rv1: vec![0.0; (n + 2) * LANES],
            single: SmallSvd::new(n),
            backup: Vec::new(),
            pair_w: Vec::new(),
            pair_rv1: Vec::new(),
        }
    }

    /// Singular values (decreasing) of the lanes `q < m` of the matrices already interleaved in
    /// `self.a` (destroyed) into `out[q]`; `n <= SMALL_SVD_MAX`.
    fn values_interleaved(&mut self, m: usize, out: &mut [Vec<f64>]) -> Result<()> {
        let n = self.n;
        let nn = n * n;
        debug_assert!(n <= SMALL_SVD_MAX && m <= LANES);
        self.backup.clear();
        self.backup.extend_from_slice(&self.a[..nn]);
        let ok = self.bidiagonalise_and_chase();
        self.finish_lanes(&ok, m, out)
    }

    /// The values of the lanes `q < m` after the chase (`ok[q]`: lane `q` converged, its values
    /// in `self.w`), sorted, into `out[q]`; a lane that did not converge is redone from
    /// `self.backup` by [`SmallSvd`].
    fn finish_lanes(&mut self, ok: &[bool; LANES], m: usize, out: &mut [Vec<f64>]) -> Result<()> {
        let n = self.n;
        for (q, o) in out.iter_mut().enumerate().take(m) {
            if ok[q] {
                o.clear();
                o.extend((0..n).map(|i| self.w[i * LANES + q].abs()));
                // (finite and nonnegative: values that compare equal have the same bits)
                o.sort_unstable_by(|x, y| y.partial_cmp(x).unwrap_or(std::cmp::Ordering::Equal));
            } else {
                for (d, x) in self.single.a.iter_mut().zip(&self.backup) {
                    *d = x[q];
                }
                *o = self.single.values()?;
            }
        }
        Ok(())
    }

    /// [`Self::values_interleaved`] of all lanes of `self` and of `other` (the same order) at
    /// once: both batches are bidiagonalised, and their QR iterations run together as one chase
    /// of 32 lanes with the sweeps in lockstep ([`avx512::chase_lockstep`]: twice the independent
    /// work in flight of a sixteen-lane chase, the bookkeeping between sweeps in vectors; the
    /// same values bit for bit). Needs AVX-512 (checked here; without it the two
    /// batches go one after the other).
    fn values_pair(&mut self, other: &mut BatchSvd, out: &mut [Vec<f64>], out2: &mut [Vec<f64>]) -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::has_avx512() && other.n == self.n && self.n <= SMALL_SVD_MAX {
            const K2: usize = 2 * LANES;
            let n = self.n;
            let nn = n * n;
            for b in [&mut *self, &mut *other] {
                b.backup.clear();
                b.backup.extend_from_slice(&b.a[..nn]);
            }
            let an1 = self.bidiagonalise();
            let an2 = other.bidiagonalise();
            let (mut ok1, mut ok2) = ([true; LANES], [true; LANES]);
            #[cfg(test)]
            let skip = SKIP_CHASE.with(|x| x.get());
            #[cfg(not(test))]
            let skip = false;
            if !skip {
                // (rows 0..n are copied in below; the two spare rows need no values)
                let (w, rv1) = (&mut self.pair_w, &mut self.pair_rv1);
                w.resize((n + 2) * K2, 0.0);
                rv1.resize((n + 2) * K2, 0.0);
                let mut an = [0.0; K2];
                an[..LANES].copy_from_slice(&an1);
                an[LANES..].copy_from_slice(&an2);
                for i in 0..n {
                    let (r, s) = (i * K2, i * LANES..(i + 1) * LANES);
                    w[r..r + LANES].copy_from_slice(&self.w[s.clone()]);
                    w[r + LANES..r + K2].copy_from_slice(&other.w[s.clone()]);
                    rv1[r..r + LANES].copy_from_slice(&self.rv1[s.clone()]);
                    rv1[r + LANES..r + K2].copy_from_slice(&other.rv1[s]);
                }
                // SAFETY: AVX-512 detected at run time; the buffers have their two spare rows.
                let ok = unsafe { avx512::chase_lockstep::<K2, 4>(n, w, rv1, &an) };
                ok1.copy_from_slice(&ok[..LANES]);
                ok2.copy_from_slice(&ok[LANES..]);
                for i in 0..n {
                    let (r, s) = (i * K2, i * LANES..(i + 1) * LANES);
                    self.w[s.clone()].copy_from_slice(&w[r..r + LANES]);
                    other.w[s].copy_from_slice(&w[r + LANES..r + K2]);
                }
            }
            self.finish_lanes(&ok1, LANES, out)?;
            return other.finish_lanes(&ok2, LANES, out2);
        }
        self.values_interleaved(LANES, out)?;
        other.values_interleaved(LANES, out2)
    }

    /// Singular values (decreasing) of the `m <= LANES` column-major matrices in `src` (lane `q` at
    /// `src[q * n * n..]`).
    fn values(&mut self, src: &[f64], m: usize) -> Result<Vec<Vec<f64>>> {
        let n = self.n;
        let nn = n * n;
        if n > WIDE_SVD_MAX {
            // One by one, with the dense kernel's interrupt checks inside each QR iteration.
            let mut out = Vec::with_capacity(m);
            for q in 0..m {
                self.single.a.copy_from_slice(&src[q * nn..(q + 1) * nn]);
                out.push(self.single.values()?);
            }
            return Ok(out);
        }
        if n > SMALL_SVD_MAX {
            return self.values_wide(src, m);
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

    /// [`Self::values`] for `n > SMALL_SVD_MAX`: each matrix is reduced to bidiagonal form by the
    /// dense kernel's blocked reduction (`dense::bidiag`), and the QR iterations of the
    /// bidiagonals then run together on the lanes ([`chase_lanes`]: the operations of
    /// [`bidiagonal_qr`], the same values bit for bit, with the latency-bound chases of the
    /// lanes overlapping). A matrix that is zero, not finite, or whose iteration does not
    /// converge takes [`SmallSvd`].
    fn values_wide(&mut self, src: &[f64], m: usize) -> Result<Vec<Vec<f64>>> {
        const K: usize = LANES;
        let n = self.n;
        let nn = n * n;
        let mut anorm = [0.0f64; K];
        let mut scale = [0i32; K];
        self.w.iter_mut().for_each(|v| *v = 0.0);
        self.rv1.iter_mut().for_each(|v| *v = 0.0);
        for q in 0..m {
            let a = &mut self.single.a;
            a.copy_from_slice(&src[q * nn..(q + 1) * nn]);
            // A zero or non-finite matrix is left to SmallSvd (anorm stays 0).
            let (d, e, e2) = match crate::ess::dense::bidiag::scaled_bidiagonal(a, n) {
                Ok(Some(f)) => f,
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                _ => continue,
            };
            let mut an = 0.0f64;
            for i in 0..n {
                let sup = if i > 0 { e[i - 1] } else { 0.0 };
                self.w[i * K + q] = d[i];
                self.rv1[i * K + q] = sup;
                an = an.max(d[i].abs() + sup.abs());
            }
            anorm[q] = an;
            scale[q] = e2;
        }
        crate::interrupt::check()?;
        let ok = chase_dispatch(n, &mut self.w, &mut self.rv1, &anorm);
        let mut out = Vec::with_capacity(m);
        for q in 0..m {
            if ok[q] && anorm[q] > 0.0 {
                let mut v: Vec<f64> = (0..n).map(|i| mul_pow2(self.w[i * K + q].abs(), -scale[q])).collect();
                v.sort_by(|x, y| y.total_cmp(x));
                out.push(v);
            } else {
                self.single.a.copy_from_slice(&src[q * nn..(q + 1) * nn]);
                out.push(self.single.values()?);
            }
        }
        Ok(out)
    }

    /// Bidiagonalisation of the lanes' matrices in `self.a` (destroyed), then the QR iterations
    /// on the bidiagonals; returns per lane whether it converged.
    fn bidiagonalise_and_chase(&mut self) -> [bool; LANES] {
        let anorm = self.bidiagonalise();
        #[cfg(test)]
        if SKIP_CHASE.with(|x| x.get()) {
            return [true; LANES];
        }
        // QR on the bidiagonals, the lanes advancing independently.
        chase_dispatch(self.n, &mut self.w, &mut self.rv1, &anorm)
    }

    /// [`Self::bidiagonalise_portable`] in its fastest form for the processor (runtime dispatch;
    /// the package is built for the baseline instruction set): written with AVX-512 intrinsics
    /// ([`avx512::bidiagonalise`]), or compiled for AVX2 + FMA. The same values bit for bit.
    fn bidiagonalise(&mut self) -> [f64; LANES] {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::cpu::has_avx512() {
                // SAFETY: the features were detected at run time.
                return unsafe { avx512::bidiagonalise(self.n, &mut self.a, &mut self.w, &mut self.rv1) };
            }
            if crate::cpu::has_avx2_fma() {
                // SAFETY: the features were detected at run time.
                return unsafe { self.bidiagonalise_avx2() };
            }
        }
        self.bidiagonalise_portable()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bidiagonalise_avx2(&mut self) -> [f64; LANES] {
        self.bidiagonalise_portable()
    }

    /// Householder bidiagonalisation of the `n x n` matrices of the lanes in `self.a`
    /// (destroyed), in lockstep: diagonal into `w`, superdiagonal into `rv1[1..]` (lane-minor);
    /// returns per lane the largest `|w[i]| + |rv1[i]|`.
    #[inline(always)]
    fn bidiagonalise_portable(&mut self) -> [f64; LANES] {
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
        anorm
    }
}

/// State of the QR iterations of the lanes of [`BatchSvd`]: the sweep in progress of lane `q`
/// runs from `lo[q]` to `kk[q]` (`cnt[q]` steps, the next one `pos[q]`) with the rotation
/// `(cc, sn)` and the bulge values `ff, xx` carried between steps.
struct Chase<const K: usize> {
    ok: [bool; K],
    done: [bool; K],
    kk: [usize; K],
    its: [usize; K],
    lo: [usize; K],
    pos: [usize; K],
    cnt: [usize; K],
    cc: [f64; K],
    sn: [f64; K],
    ff: [f64; K],
    xx: [f64; K],
}

impl<const K: usize> Chase<K> {
    /// The lanes' state before their first sweeps: a lane with a non-finite norm fails, a zero
    /// bidiagonal is done (its values zero), the others start their first sweep.
    #[inline(always)]
    fn begin(n: usize, w: &mut [f64], rv1: &mut [f64], anorm: &[f64; K]) -> Self {
        let mut ch = Self::begin_idle(n, w, anorm);
        for q in 0..K {
            if !ch.done[q] {
                ch.start(q, w, rv1, anorm[q]);
            }
        }
        ch.retire();
        ch
    }

    /// [`Self::begin`] without the first sweeps: a lane with a non-finite norm fails, a zero
    /// bidiagonal is done (its values zero); the others are left at `kk = n - 1` for a start.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    fn begin_idle(n: usize, w: &mut [f64], anorm: &[f64; K]) -> Self {
        let mut ch = Chase {
            ok: [true; K],
            done: [false; K],
            kk: [n - 1; K],
            its: [0; K],
            lo: [0; K],
            pos: [0; K],
            cnt: [0; K],
            cc: [0.0; K],
            sn: [0.0; K],
            ff: [0.0; K],
            xx: [0.0; K],
        };
        for q in 0..K {
            if !anorm[q].is_finite() {
                ch.ok[q] = false;
                ch.done[q] = true;
            } else if anorm[q] == 0.0 {
                ch.done[q] = true;
                for i in 0..n {
                    w[i * K + q] = 0.0;
                }
            }
        }
        ch
    }

    /// Per lane, whether it converged to finite values.
    #[inline(always)]
    fn finish(mut self, n: usize, w: &[f64]) -> [bool; K] {
        for q in 0..K {
            if self.ok[q] && !(0..n).all(|i| w[i * K + q].is_finite()) {
                self.ok[q] = false;
            }
        }
        self.ok
    }

    /// The flat indices (`row K + q`) of lane `q`'s next chase step and of its sweep's last step,
    /// for the vector chases; a lane that is done steps on the spare row `n + 1` and never ends.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    fn step_rows(&self, n: usize, q: usize) -> (i64, i64) {
        if self.done[q] {
            (((n + 1) * K + q) as i64, -1)
        } else {
            (((self.lo[q] + self.pos[q] + 1) * K + q) as i64, (self.kk[q] * K + q) as i64)
        }
    }

    /// Lane `q` after a vector chase stopped for it: it failed (a zero rotation norm `z1`), or it
    /// ended its sweep (`ended`; the sweep's last entries are written, then [`Self::start`]);
    /// a lane that is then done gets benign values.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    fn stop(&mut self, q: usize, failed: bool, ended: bool, w: &mut [f64], rv1: &mut [f64], an: f64) {
        if failed {
            // cannot happen for a nonzero superdiagonal; the lane is redone by SmallSvd
            self.ok[q] = false;
            self.done[q] = true;
        } else if ended {
            let (l, k) = (self.lo[q], self.kk[q]);
            rv1[l * K + q] = 0.0;
            rv1[k * K + q] = self.ff[q];
            w[k * K + q] = self.xx[q];
            if !(self.ff[q].is_finite() && self.xx[q].is_finite()) {
                self.ok[q] = false;
                self.done[q] = true;
            } else {
                self.start(q, w, rv1, an);
            }
        }
        if self.done[q] {
            self.cc[q] = 1.0;
            self.sn[q] = 0.0;
            self.ff[q] = 1.0;
            self.xx[q] = 1.0;
        }
    }

    /// Benign values for the lanes that are done (they keep computing with the others).
    #[inline(always)]
    fn retire(&mut self) {
        for q in 0..K {
            if self.done[q] {
                self.cc[q] = 1.0;
                self.sn[q] = 0.0;
                self.ff[q] = 1.0;
                self.xx[q] = 1.0;
            }
        }
    }

    /// Lane `q` between sweeps: deflate and test for convergence from `kk[q]` down (as
    /// [`SmallSvd::golub_reinsch`]), then set up the next sweep, or mark the lane done (`ok`
    /// false when the iteration fails).
    #[inline(always)]
    fn start(&mut self, q: usize, w: &mut [f64], rv1: &mut [f64], an: f64) {
        let wi = |i: usize| i * K + q;
        loop {
            let k = self.kk[q];
            let mut flag = true;
            let mut l = k;
            loop {
                if l == 0 || rv1[wi(l)].abs() + an == an {
                    flag = false;
                    break;
                }
                if w[wi(l - 1)].abs() + an == an {
                    break;
                }
                l -= 1;
            }
            if flag {
                let (mut c, mut s) = (0.0f64, 1.0f64);
                for i in l..=k {
                    let f = s * rv1[wi(i)];
                    rv1[wi(i)] *= c;
                    if f.abs() + an == an {
                        break;
                    }
                    let gg = w[wi(i)];
                    let h = fast_hypot(f, gg);
                    w[wi(i)] = h;
                    let hi = 1.0 / h;
                    c = gg * hi;
                    s = -f * hi;
                }
            }
            let z = w[wi(k)];
            if l == k {
                if z < 0.0 {
                    w[wi(k)] = -z;
                }
                self.its[q] = 0;
                if k == 0 {
                    self.done[q] = true;
                    return;
                }
                self.kk[q] = k - 1;
                continue;
            }
            self.its[q] += 1;
            let x = w[wi(l)];
            let y = w[wi(k - 1)];
            let gq = rv1[wi(k - 1)];
            let h = rv1[wi(k)];
            if self.its[q] > 75 || x == 0.0 || h == 0.0 || y == 0.0 {
                self.ok[q] = false;
                self.done[q] = true;
                return;
            }
            let mut f = ((y - z) * (y + z) + (gq - h) * (gq + h)) / (2.0 * h * y);
            let g1 = pythag_one(f);
            f = ((x - z) * (x + z) + h * ((y / (f + g1.copysign(f))) - h)) / x;
            self.lo[q] = l;
            self.pos[q] = 0;
            self.cnt[q] = k - l;
            self.cc[q] = 1.0;
            self.sn[q] = 1.0;
            self.ff[q] = f;
            self.xx[q] = x;
            return;
        }
    }
}

/// Singular values of up to [`LANES`] upper bidiagonals of any orders (diagonal `d`,
/// superdiagonal `e[..n-1]` each), by their QR iterations run together on the lanes
/// ([`chase_dispatch`]), the shorter ones padded with zeros to the longest order. A zero row
/// and column at the end of a bidiagonal leave its iteration unchanged (the padding deflates at
/// once, and nothing couples it to the rest), so each lane's values are those of
/// [`bidiagonal_qr`] alone, bit for bit. Per bidiagonal: its values (non-negative, unsorted),
/// or `None` where the iteration did not converge or the bidiagonal is zero (the caller then
/// takes another route).
pub(crate) fn bidiagonal_qr_lanes(items: &[(&[f64], &[f64])]) -> Vec<Option<Vec<f64>>> {
    const K: usize = LANES;
    let mut out = Vec::with_capacity(items.len());
    for group in items.chunks(K) {
        let n = group.iter().map(|(d, _)| d.len()).max().unwrap_or(0);
        if n == 0 {
            out.extend(group.iter().map(|_| None));
            continue;
        }
        let mut w = vec![0.0; (n + 2) * K];
        let mut rv1 = vec![0.0; (n + 2) * K];
        let mut anorm = [0.0f64; K];
        for (q, (d, e)) in group.iter().enumerate() {
            let mut an = 0.0f64;
            for (i, &di) in d.iter().enumerate() {
                let sup = if i > 0 { e[i - 1] } else { 0.0 };
                w[i * K + q] = di;
                rv1[i * K + q] = sup;
                an = an.max(di.abs() + sup.abs());
            }
            anorm[q] = an;
        }
        let ok = chase_dispatch(n, &mut w, &mut rv1, &anorm);
        for (q, (d, _)) in group.iter().enumerate() {
            out.push((ok[q] && anorm[q] > 0.0).then(|| (0..d.len()).map(|i| w[i * K + q].abs()).collect()));
        }
    }
    out
}

/// [`chase_lanes`]: its AVX2 form ([`chase::chase`], the same values bit for bit) when the processor
/// has AVX2 and the buffers their two spare rows, else the portable one.
#[inline(always)]
fn chase_dispatch(n: usize, w: &mut [f64], rv1: &mut [f64], anorm: &[f64; LANES]) -> [bool; LANES] {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::has_avx2_fma() && n >= 1 && w.len() >= (n + 2) * LANES && rv1.len() >= (n + 2) * LANES {
            // SAFETY: the features were detected at run time.
            return unsafe { chase::chase(n, w, rv1, anorm) };
        }
    }
    chase_lanes(n, w, rv1, anorm)
}

/// Implicit-shift QR on the [`LANES`] bidiagonals (`w`: diagonals, `rv1[1..]`: superdiagonals,
/// lane-minor), values only, into `w`. Every lane performs the operations of
/// [`SmallSvd::golub_reinsch`]'s iteration in the same order; the lanes advance independently
/// (a lane that ends its sweep tests for convergence and starts the next one while the others go
/// on), one chase step of every lane per vector step (lane-parallel square roots and divisions).
/// Returns per lane whether it converged to finite values.
#[inline(always)]
fn chase_lanes(n: usize, w: &mut [f64], rv1: &mut [f64], anorm: &[f64; LANES]) -> [bool; LANES] {
    const K: usize = LANES;
    let mut ch = Chase::begin(n, w, rv1, anorm);
    while ch.done.iter().any(|d| !d) {
        let mut act = [false; K];
        let mut gg = [0.0f64; K];
        let mut y = [0.0f64; K];
        for q in 0..K {
            act[q] = !ch.done[q];
            if act[q] {
                let i = ch.lo[q] + ch.pos[q] + 1;
                gg[q] = rv1[i * K + q];
                y[q] = w[i * K + q];
            }
        }
        // (A done lane computes on benign constants, see `retire`, which never look risky.)
        let (mut c, mut s, mut f, mut x) = (ch.cc, ch.sn, ch.ff, ch.xx);
        let mut h = [0.0f64; K];
        let mut z1 = [0.0f64; K];
        let mut z2 = [0.0f64; K];
        for q in 0..K {
            h[q] = s[q] * gg[q];
            gg[q] *= c[q];
        }
        lane_hypot(&f, &h, &mut z1);
        for q in 0..K {
            let iz = 1.0 / z1[q];
            c[q] = f[q] * iz;
            s[q] = h[q] * iz;
            f[q] = x[q] * c[q] + gg[q] * s[q];
            gg[q] = gg[q] * c[q] - x[q] * s[q];
            h[q] = y[q] * s[q];
            y[q] *= c[q];
        }
        lane_hypot(&f, &h, &mut z2);
        for q in 0..K {
            if z2[q] != 0.0 {
                let iz = 1.0 / z2[q];
                c[q] = f[q] * iz;
                s[q] = h[q] * iz;
            }
            f[q] = c[q] * gg[q] + s[q] * y[q];
            x[q] = c[q] * y[q] - s[q] * gg[q];
        }
        // Whether a lane ended its sweep (or failed) in this step.
        let mut ended = false;
        for q in 0..K {
            if !act[q] {
                continue;
            }
            if z1[q] == 0.0 {
                // cannot happen for a nonzero superdiagonal; the lane is redone by SmallSvd
                ch.ok[q] = false;
                ch.done[q] = true;
                ended = true;
                continue;
            }
            let j = ch.lo[q] + ch.pos[q];
            rv1[j * K + q] = z1[q];
            w[j * K + q] = z2[q];
            ch.cc[q] = c[q];
            ch.sn[q] = s[q];
            ch.ff[q] = f[q];
            ch.xx[q] = x[q];
            ch.pos[q] += 1;
            if ch.pos[q] == ch.cnt[q] {
                // End of the sweep.
                let (l, k) = (ch.lo[q], ch.kk[q]);
                rv1[l * K + q] = 0.0;
                rv1[k * K + q] = f[q];
                w[k * K + q] = x[q];
                if !(f[q].is_finite() && x[q].is_finite()) {
                    ch.ok[q] = false;
                    ch.done[q] = true;
                    ended = true;
                    continue;
                }
                ch.start(q, w, rv1, anorm[q]);
                ended = true;
            }
        }
        if ended {
            ch.retire();
        }
    }
    ch.finish(n, w)
}

#[cfg(test)]
thread_local! {
    /// Test hook of the timing test (this thread only): the bidiagonalisation alone, no QR
    /// iteration (the values are not used).
    static SKIP_CHASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Largest state size handled by [`SmallSvd`]'s own Golub-Reinsch (above: see [`OWN_SVD_MIN`]).
const SMALL_SVD_MAX: usize = 64;

/// Largest state size whose batches run their QR iterations together ([`BatchSvd::values_wide`],
/// no interrupt check inside: sixteen iterations of order 512 take tens of milliseconds).
const WIDE_SVD_MAX: usize = 512;

/// From this state size up, [`SmallSvd`] takes the dense kernel's blocked SVD
/// (`dense::bidiag`: 1.6x faer's at order 96, 2.5x at 128) instead of faer's.
const OWN_SVD_MIN: usize = SMALL_SVD_MAX + 1;

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
                        Transition::Dense => {
                            (0..n).map(|i| (0..n).map(|k| a[t * n * n + i * n + k] * x[k]).sum()).collect()
                        }
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
        for n in [1usize, 2, 3, 5, 8, 16, 17, 33, 65, 96, 128] {
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
    fn bidiagonals_of_several_orders_on_lanes_equal_each_alone() {
        // Zero padding to the longest order leaves each lane's iteration as it is alone.
        let mut seed = 41u64;
        for orders in [vec![1usize, 2, 3], vec![40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23]]
        {
            let mut mats: Vec<(Vec<f64>, Vec<f64>)> = orders
                .iter()
                .map(|&n| ((0..n).map(|_| lcg(&mut seed)).collect(), (0..n).map(|_| lcg(&mut seed)).collect()))
                .collect();
            // A graded one, one with an exactly zero diagonal entry, and a zero one.
            if mats.len() > 3 {
                for (i, v) in mats[1].0.iter_mut().enumerate() {
                    *v *= 10f64.powi(-(i as i32) * 8);
                }
                mats[2].0[3] = 0.0;
                let (d3, e3) = &mut mats[3];
                d3.iter_mut().chain(e3.iter_mut()).for_each(|v| *v = 0.0);
            }
            let items: Vec<(&[f64], &[f64])> = mats.iter().map(|(d, e)| (&d[..], &e[..])).collect();
            let got = bidiagonal_qr_lanes(&items);
            for (q, (d, e)) in mats.iter().enumerate() {
                let n = d.len();
                let mut w = d.clone();
                let mut rv1 = vec![0.0; n];
                rv1[1..].copy_from_slice(&e[..n - 1]);
                let anorm = (0..n).fold(0.0f64, |m, i| m.max(w[i].abs() + rv1[i].abs()));
                let alone = anorm > 0.0 && bidiagonal_qr(&mut w, &mut rv1, anorm, false).unwrap();
                match &got[q] {
                    Some(v) => {
                        assert!(alone, "order {n}: lanes converged, alone did not");
                        for (x, y) in v.iter().zip(&w) {
                            assert_eq!(x.to_bits(), y.abs().to_bits(), "order {n}: {x} vs {y}");
                        }
                    }
                    None => assert!(!alone, "order {n}: alone converged, lanes did not"),
                }
            }
        }
    }

    #[test]
    fn wide_batch_svd_equals_single_bit_for_bit() {
        // n > SMALL_SVD_MAX: the blocked reduction per matrix, then the lanes' QR iterations
        // together; the values must be those of SmallSvd (the same operations).
        let mut seed = 29u64;
        for (n, m) in [(65usize, LANES), (80, 5), (128, LANES)] {
            let mut src: Vec<f64> = (0..LANES * n * n).map(|_| lcg(&mut seed)).collect();
            // lane 1: zero; lane 2: rank two; lane 3: graded columns (1e-150 .. 1)
            for e in 0..n * n {
                src[n * n + e] = 0.0;
            }
            for j in 0..n {
                for i in 0..n {
                    src[2 * n * n + j * n + i] =
                        (i as f64 + 1.0) * (j as f64 - 0.5) + (i as f64).sin() * (j as f64).cos();
                    src[3 * n * n + j * n + i] *= 10f64.powf(-150.0 * j as f64 / n as f64);
                }
            }
            let mut b = BatchSvd::new(n);
            let got = b.values(&src, m).unwrap();
            assert_eq!(got.len(), m);
            for q in 0..m {
                let mut s = SmallSvd::new(n);
                s.a.copy_from_slice(&src[q * n * n..(q + 1) * n * n]);
                let want = s.values().unwrap();
                assert_eq!(got[q].len(), n);
                for (x, y) in got[q].iter().zip(&want) {
                    assert_eq!(x.to_bits(), y.to_bits(), "n={n} lane={q}: {x} vs {y}");
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
        let mut mem = MemBuffer::new(faer::linalg::svd::svd_scratch::<f64>(
            n,
            n,
            faer::linalg::svd::ComputeSvdVectors::No,
            faer::linalg::svd::ComputeSvdVectors::No,
            Par::Seq,
            Default::default(),
        ));
        let t0 = std::time::Instant::now();
        for _ in 0..reps * LANES {
            acc += singular_values(m, &mut mem).unwrap()[0];
        }
        let t3 = t0.elapsed();
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / (reps * LANES) as f64;
        eprintln!(
            "n=16 per matrix: single GR {:.2} us, batched GR {:.2} us, faer {:.2} us ({acc})",
            per(t1),
            per(t2),
            per(t3)
        );
    }

    /// Thread CPU time in seconds (the machine is shared: wall time is not the cost).
    #[cfg(target_os = "linux")]
    fn thread_cpu_s() -> f64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }

    /// CPU time of the batched 16 x 16 singular values alone, per matrix (`--ignored --nocapture`).
    #[cfg(target_os = "linux")]
    #[test]
    #[ignore]
    fn bench_batch_svd_cpu() {
        let n = 16;
        let mats = 64 * LANES;
        let reps = 200;
        let mut seed = 5u64;
        // products of two random triangular factors, as the kernel forms them
        let src: Vec<f64> = (0..mats)
            .flat_map(|_| {
                let lo: Vec<f64> = (0..n * n).map(|_| lcg(&mut seed)).collect();
                let up: Vec<f64> = (0..n * n).map(|_| lcg(&mut seed)).collect();
                let mut w = vec![0.0; n * n];
                for j in 0..n {
                    for i in 0..n {
                        w[j * n + i] = (i.max(j)..n).map(|r| up[r * n + i] * lo[j * n + r]).sum::<f64>();
                    }
                }
                w
            })
            .collect();
        let mut b = BatchSvd::new(n);
        let mut acc = 0.0;
        let c0 = thread_cpu_s();
        for _ in 0..reps {
            for blk in src.chunks(LANES * n * n) {
                acc += b.values(blk, LANES).unwrap()[0][0];
            }
        }
        let per = (thread_cpu_s() - c0) * 1e6 / (reps * mats) as f64;
        eprintln!("batched GR, n = 16, {LANES} lanes: {per:.2} us cpu per matrix ({acc})");
        SKIP_CHASE.with(|x| x.set(true));
        let c0 = thread_cpu_s();
        for _ in 0..reps {
            for blk in src.chunks(LANES * n * n) {
                acc += b.values(blk, LANES).unwrap()[0][0];
            }
        }
        let per = (thread_cpu_s() - c0) * 1e6 / (reps * mats) as f64;
        SKIP_CHASE.with(|x| x.set(false));
        eprintln!("of which the bidiagonalisation (and copies, sorting): {per:.2} us cpu per matrix ({acc})");
    }

    /// Serialises the tests that set the module's test hooks (the hooks are process-wide).
    static HOOKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Channels in lockstep (`lanes`) give the per-channel path's curves bit for bit: every
    /// transition kind the grouped path takes, a short last group, zero / unit / huge / tiny /
    /// subnormal transitions, zero inputs and outputs, `atol`, `rtol` and `positions`; with the
    /// AVX-512 kernels (splits in pairs) where the processor has them, and without.
    #[test]
    fn grouped_path_equals_per_channel() {
        let _hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
        for off in [false, true] {
            crate::cpu::AVX512_OFF_FOR_TESTS.store(off, std::sync::atomic::Ordering::Relaxed);
            grouped_equals_per_channel_once();
        }
        crate::cpu::AVX512_OFF_FOR_TESTS.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn grouped_equals_per_channel_once() {
        let mut seed = 23u64;
        let batch = LANES + 3;
        for kind in [Transition::Identity, Transition::Scalar, Transition::Diagonal] {
            for (l, n) in [(37usize, 5usize), (20, 1), (24, 17)] {
                let na = match kind {
                    Transition::Identity => 0,
                    Transition::Scalar => batch * l,
                    _ => batch * l * n,
                };
                let mut a: Vec<f64> = (0..na).map(|_| 0.6 + 0.8 * lcg(&mut seed)).collect();
                let mut b: Vec<f64> = (0..batch * l * n).map(|_| lcg(&mut seed)).collect();
                let mut c: Vec<f64> = (0..batch * l * n).map(|_| lcg(&mut seed)).collect();
                for (i, x) in a.iter_mut().enumerate() {
                    match i % 29 {
                        3 => *x = 0.0,
                        5 => *x = 1.0,
                        7 => *x = ldexp(*x, 700),
                        11 => *x = ldexp(*x, -700),
                        13 => *x = 3.0e-310,
                        17 => *x = -*x,
                        _ => {}
                    }
                }
                for (i, x) in b.iter_mut().enumerate() {
                    if i % 7 == 2 {
                        *x = 0.0;
                    } else if i % 31 == 4 {
                        *x = ldexp(*x, 900);
                    }
                }
                for (i, x) in c.iter_mut().enumerate() {
                    if i % 5 == 1 {
                        *x = 0.0;
                    } else if i % 37 == 8 {
                        *x = ldexp(*x, -900);
                    }
                }
                // a channel with all-zero inputs (zero blocks at every split)
                b[2 * l * n..3 * l * n].iter_mut().for_each(|x| *x = 0.0);
                let f = SsmFactors { batch, l, n, kind, a: &a, b: &b, c: &c };
                for (atol, rtol, positions) in [
                    (None, None, None),
                    (Some(1e-3), None, Some(vec![0usize, 1, 5, l / 2, l - 1])),
                    (Some(1e-200), Some(1e-9), Some((2..l).step_by(3).collect())),
                ] {
                    let opts = StructuredOptions {
                        method: super::super::Method::Both,
                        atol,
                        rtol,
                        positions: positions.clone(),
                    };
                    let runs = GROUPED_RUNS.load(std::sync::atomic::Ordering::Relaxed);
                    let grouped = ssm_ess(&f, &opts).unwrap();
                    assert!(GROUPED_RUNS.load(std::sync::atomic::Ordering::Relaxed) > runs, "grouped path not taken");
                    GROUP_PATH_OFF.store(true, std::sync::atomic::Ordering::Relaxed);
                    let single = ssm_ess(&f, &opts);
                    GROUP_PATH_OFF.store(false, std::sync::atomic::Ordering::Relaxed);
                    let single = single.unwrap();
                    let what = format!("{kind:?} L={l} N={n} atol={atol:?} rtol={rtol:?} positions={positions:?}");
                    assert_eq!(grouped.tolerance, single.tolerance, "{what}");
                    let (ge, se) = (grouped.entropy.unwrap(), single.entropy.unwrap());
                    for (x, y) in ge.iter().zip(&se) {
                        assert_eq!(x.to_bits(), y.to_bits(), "{what}: {x} vs {y}");
                    }
                    assert!(grouped.tolerance.unwrap().iter().any(|&x| x > 0.0), "{what}");
                }
            }
        }
    }

    /// The checkpointed backward sweep (a window smaller than the requested splits) gives the
    /// same curves, bit for bit, as storing every split; with and without `positions`.
    #[test]
    fn windowed_backward_factors_equal_stored() {
        let _hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
        let (batch, l, n) = (3usize, 150usize, 5usize);
        let mut seed = 11u64;
        let a: Vec<f64> = (0..batch * l * n).map(|_| 0.5 + 0.5 * lcg(&mut seed).abs()).collect();
        let b: Vec<f64> = (0..batch * l * n).map(|_| lcg(&mut seed)).collect();
        let c: Vec<f64> = (0..batch * l * n).map(|_| lcg(&mut seed)).collect();
        let f = SsmFactors { batch, l, n, kind: Transition::Diagonal, a: &a, b: &b, c: &c };
        for positions in [None, Some(vec![0usize, 1, 2, 7, 40, 41, 99, 149]), Some((3..l).step_by(3).collect())] {
            let opts = StructuredOptions { method: super::super::Method::Both, atol: None, rtol: None, positions };
            let full = ssm_ess(&f, &opts).unwrap();
            // one split's factor is n * (n + 2) * 8 bytes: a budget of three splits forces checkpoints
            WINDOW_BYTES_OVERRIDE.store(3 * n * (n + 2) * 8, std::sync::atomic::Ordering::Relaxed);
            let win = ssm_ess(&f, &opts);
            WINDOW_BYTES_OVERRIDE.store(0, std::sync::atomic::Ordering::Relaxed);
            let win = win.unwrap();
            assert_eq!(full.tolerance, win.tolerance);
            assert_eq!(full.entropy, win.entropy);
        }
        assert_eq!(plan_window(10_000, 16, 1 << 20).0, 100);
        assert_eq!(plan_window(100, 16, 64 << 20).0, 100);
    }

    /// `mamba_ess` forms the same factors as `ssm_ess` on materialised `(D, L, N)` arrays (the
    /// transitions by the crate's `exp`, as the kernel forms them).
    #[test]
    fn mamba_factors_agree_with_ssm() {
        let (d, l, n) = (3usize, 40usize, 4usize);
        let mut seed = 5u64;
        let a: Vec<f64> = (0..d * n).map(|_| -(0.5 + lcg(&mut seed).abs())).collect();
        let delta: Vec<f64> = (0..l * d).map(|_| 0.05 + 0.1 * lcg(&mut seed).abs()).collect();
        let b: Vec<f64> = (0..l * n).map(|_| lcg(&mut seed)).collect();
        let c: Vec<f64> = (0..l * d * n).map(|_| lcg(&mut seed)).collect();
        let m = MambaFactors { channels: d, l, n, a: &a, delta: &delta, b: &b, c: &c, single: false };
        let opts = StructuredOptions { method: super::super::Method::Both, atol: None, rtol: None, positions: None };
        let got = mamba_ess(&m, &opts).unwrap();
        let (mut at, mut bt, mut ct) = (vec![], vec![], vec![]);
        for ch in 0..d {
            for t in 0..l {
                for k in 0..n {
                    let dt = delta[t * d + ch];
                    at.push(crate::exp::exp(dt * a[ch * n + k]));
                    bt.push(dt * b[t * n + k]);
                    ct.push(c[(t * d + ch) * n + k]);
                }
            }
        }
        let f = SsmFactors { batch: d, l, n, kind: Transition::Diagonal, a: &at, b: &bt, c: &ct };
        let want = ssm_ess(&f, &opts).unwrap();
        assert_eq!(got.tolerance, want.tolerance);
        assert_eq!(got.entropy, want.entropy);
        let bad = MambaFactors { a: &[1e5; 12], ..m };
        assert!(matches!(mamba_ess(&bad, &opts), Err(Error::NonFinite { .. })));
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
