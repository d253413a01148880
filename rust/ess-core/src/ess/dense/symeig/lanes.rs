//! The root-free tridiagonal QL iteration of [`super::tridiagonal_ql`] on several problems at
//! once, one problem per vector lane.
//!
//! A sweep of the root-free iteration is a chain of dependent steps, each with a division: one
//! problem at a time, the processor waits on that chain (about 35 cycles per step here, of which
//! only a few are arithmetic). With [`LANES`] independent problems interleaved lane-minor
//! (`d[i * LANES + q]`), every vector step advances each lane's sweep by one step (each at its
//! own position), so that the lanes' chains overlap and their divisions share one instruction.
//! A lane that ends its sweep deflates, picks its next block and shift (scalar code) and starts
//! the next sweep while the others go on, as the structured kernel's batched QR chase does.
//!
//! Every lane performs exactly the floating-point operations of [`super::tridiagonal_ql`] in the
//! same order, so the eigenvalues are the same bit for bit (tested).

use super::{eig2, finish_root_free, prepare_root_free, pythag};
use crate::error::{Error, Result};

/// Problems per batch: two AVX2 registers of four per vector step, so that the division
/// chains of eight problems are in flight together.
pub(crate) const LANES: usize = 8;

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
type V = [f64; LANES];

/// Eigenvalues of the symmetric tridiagonal problems `(d, e)` (diagonal `d`, subdiagonal
/// `e[..n-1]`, each its own order), as [`super::tridiagonal_ql`] computes them (bit for bit), in
/// batches of [`LANES`]: each `d` is overwritten with its (unordered) eigenvalues, each `e` is
/// destroyed. One result per problem, with the errors of [`super::tridiagonal_ql`].
pub(crate) fn tridiagonal_ql_batch(ds: &mut [Vec<f64>], es: &mut [Vec<f64>]) -> Vec<Result<()>> {
    assert_eq!(ds.len(), es.len());
    // The interleaved arrays are kept by the thread between calls (the kernel calls this once per
    // eight splits; at order 2048 and above a fresh pair would page-fault every time).
    thread_local! {
        static BUF: std::cell::RefCell<(Vec<f64>, Vec<f64>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    let (mut d_lanes, mut e_lanes) = BUF.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let mut out = Vec::with_capacity(ds.len());
    for (dc, ec) in ds.chunks_mut(LANES).zip(es.chunks_mut(LANES)) {
        out.extend(batch(dc, ec, &mut d_lanes, &mut e_lanes));
    }
    BUF.with(|c| *c.borrow_mut() = (d_lanes, e_lanes));
    out
}

/// One batch of at most [`LANES`] problems.
fn batch(ds: &mut [Vec<f64>], es: &mut [Vec<f64>], d_lanes: &mut Vec<f64>, e_lanes: &mut Vec<f64>) -> Vec<Result<()>> {
    let m = ds.len();
    if !crate::cpu::has_avx2_fma() || m == 1 {
        // One by one: the same operations, so the same values.
        return ds.iter_mut().zip(es.iter_mut()).map(|(d, e)| super::tridiagonal_ql(d, e)).collect();
    }
    debug_assert!(m <= LANES);
    let mut res: Vec<Result<()>> = (0..m).map(|_| Ok(())).collect();
    let mut blocks: Vec<Vec<(usize, usize, i32)>> = vec![Vec::new(); m];
    let mut order = [0usize; LANES];
    for q in 0..m {
        match prepare_root_free(&mut ds[q], &mut es[q]) {
            Ok(Some(b)) => {
                blocks[q] = b;
                order[q] = ds[q].len();
            }
            Ok(None) => {}
            Err(err) => res[q] = Err(err),
        }
    }
    let nmax = order.iter().copied().max().unwrap_or(0);
    if nmax == 0 {
        return res;
    }
    d_lanes.clear();
    d_lanes.resize((nmax + 2) * LANES, 0.0);
    e_lanes.clear();
    e_lanes.resize((nmax + 2) * LANES, 0.0);
    for q in 0..m {
        let n = order[q];
        for i in 0..n {
            d_lanes[i * LANES + q] = ds[q][i];
        }
        for i in 0..n.saturating_sub(1) {
            e_lanes[i * LANES + q] = es[q][i];
        }
    }
    let failed = run_lanes(d_lanes, e_lanes, &order);
    for q in 0..m {
        let n = order[q];
        if n == 0 {
            continue;
        }
        if failed[q] {
            res[q] = Err(Error::Numerical("symmetric tridiagonal QL iteration did not converge".into()));
            continue;
        }
        for i in 0..n {
            ds[q][i] = d_lanes[i * LANES + q];
        }
        res[q] = finish_root_free(&mut ds[q], &blocks[q]);
    }
    res
}

#[cfg(target_arch = "x86_64")]
fn run_lanes(d: &mut [f64], e2: &mut [f64], order: &[usize; LANES]) -> [bool; LANES] {
    // SAFETY: `batch` comes here only when AVX2 and FMA were detected at run time.
    unsafe { avx2::run(d, e2, order) }
}

#[cfg(not(target_arch = "x86_64"))]
fn run_lanes(_d: &mut [f64], _e2: &mut [f64], _order: &[usize; LANES]) -> [bool; LANES] {
    // Not reached: `batch` takes the problems one by one without AVX2.
    [true; LANES]
}

/// The iteration on the interleaved, prepared problems (`order[q]` rows in lane `q`, then two
/// spare rows: row `nmax` is read by lanes that are done, row `nmax + 1` takes their writes and
/// the writes a step skips); returns per lane whether it failed to converge.
///
/// Between events the lanes' state stays in vector registers: gathers of each lane's entry,
/// the step of all lanes in two AVX2 registers (plain multiplies, adds and one division, no
/// fused multiply-add, so every lane rounds as the scalar step does), and scalar stores of the
/// results. The deflation scan that `ql_root_free` runs from `l` after each sweep is folded
/// into the sweep: each step tests the entry whose values it has just finalised, so the scan's
/// answers (from `l`, and from `l + 1`) are known when the sweep ends; the tests are the scan's
/// own, on the same values. A step that finds such an entry, or ends a lane's sweep, is an
/// event: the lanes' state goes back to [`State`] and the lane's bookkeeping runs in scalar code.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::{RP_MAX, RP_MIN};
    use super::{State, LANES};
    use std::arch::x86_64::*;

    const K: usize = LANES;
    const H: usize = LANES / 4;

    use crate::cpu::lanes::{load, load_i, store, store_i};

    #[inline(always)]
    unsafe fn ld(a: &[f64; K]) -> [__m256d; H] {
        load(a)
    }

    #[inline(always)]
    unsafe fn st(v: [__m256d; H], a: &mut [f64; K]) {
        store(&v, a)
    }

    #[inline(always)]
    unsafe fn ldi(a: &[usize; K]) -> [__m256i; H] {
        load_i(a)
    }

    #[inline(always)]
    unsafe fn sti(v: [__m256i; H], a: &mut [usize; K]) {
        store_i(&v, a)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run(d: &mut [f64], e2: &mut [f64], order: &[usize; K]) -> [bool; K] {
        let nmax = order.iter().copied().max().unwrap_or(0);
        let (read, trash) = (nmax * K, (nmax + 1) * K);
        // Every index below is < (nmax + 2) K: rows of a lane's problem, or the spare rows.
        assert!(d.len() >= (nmax + 2) * K && e2.len() >= (nmax + 2) * K);
        for q in 0..K {
            d[read + q] = 0.0;
            e2[read + q] = 1.0;
        }
        let mut sta = State::new(order, read);
        for q in 0..K {
            sta.start(q, d, e2, [(usize::MAX, 0); 2]);
        }
        let eps2 = f64::EPSILON * f64::EPSILON;
        let (one, zero) = (_mm256_set1_pd(1.0), _mm256_setzero_pd());
        let (rpmin, rpmax) = (_mm256_set1_pd(RP_MIN), _mm256_set1_pd(RP_MAX));
        let eps2v = _mm256_set1_pd(eps2);
        let absmask = _mm256_castsi256_pd(_mm256_set1_epi64x(i64::MAX));
        let kv = _mm256_set1_epi64x(K as i64);
        let mut trashv = [_mm256_setzero_si256(); H];
        for (h, v) in trashv.iter_mut().enumerate() {
            let t0 = (trash + 4 * h) as i64;
            *v = _mm256_setr_epi64x(t0, t0 + 1, t0 + 2, t0 + 3);
        }
        let (dp, ep) = (d.as_mut_ptr(), e2.as_mut_ptr());
        while sta.done.iter().any(|x| !x) {
            let (mut c, mut s, mut gamma, mut p) = (ld(&sta.c), ld(&sta.s), ld(&sta.gamma), ld(&sta.p));
            let (sigma, mut dprev) = (ld(&sta.sigma), ld(&sta.dprev));
            let (mut pos, l, m) = (ldi(&sta.pos), ldi(&sta.l), ldi(&sta.m));
            let mut donei = [0usize; K];
            for q in 0..K {
                donei[q] = if sta.done[q] { usize::MAX } else { 0 };
            }
            let donem = ldi(&donei);
            let mut done = [_mm256_setzero_pd(); H];
            for h in 0..H {
                done[h] = _mm256_castsi256_pd(donem[h]);
            }
            let mut small = [0usize; K];
            let mut ended = [0usize; K];
            let mut below = [0usize; K];
            loop {
                let mut bb = [zero; H];
                let mut alpha = [zero; H];
                let mut r = [zero; H];
                let mut se = [zero; H];
                let mut inv = [zero; H];
                let mut rinv = [zero; H];
                let mut num = [zero; H];
                let mut bad = 0;
                for h in 0..H {
                    bb[h] = _mm256_i64gather_pd::<8>(ep, pos[h]);
                    alpha[h] = _mm256_i64gather_pd::<8>(dp, pos[h]);
                    r[h] = _mm256_add_pd(p[h], bb[h]);
                    se[h] = _mm256_mul_pd(s[h], r[h]);
                    let rp = _mm256_mul_pd(r[h], p[h]);
                    inv[h] = _mm256_div_pd(one, rp);
                    rinv[h] = _mm256_mul_pd(p[h], inv[h]);
                    num[h] = _mm256_sub_pd(
                        _mm256_mul_pd(p[h], _mm256_sub_pd(alpha[h], sigma[h])),
                        _mm256_mul_pd(bb[h], gamma[h]),
                    );
                    let ok =
                        _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(rp, rpmin), _mm256_cmp_pd::<_CMP_LT_OQ>(rp, rpmax));
                    bad |= _mm256_movemask_pd(_mm256_andnot_pd(
                        _mm256_or_pd(ok, done[h]),
                        _mm256_castsi256_pd(_mm256_set1_epi64x(-1)),
                    )) << (4 * h);
                }
                let mut cn = [zero; H];
                let mut sn = [zero; H];
                let mut gn = [zero; H];
                let mut pn = [zero; H];
                for h in 0..H {
                    cn[h] = _mm256_mul_pd(p[h], rinv[h]);
                    sn[h] = _mm256_mul_pd(bb[h], rinv[h]);
                    gn[h] = _mm256_mul_pd(num[h], rinv[h]);
                    pn[h] = _mm256_mul_pd(_mm256_mul_pd(num[h], num[h]), inv[h]);
                }
                if bad != 0 {
                    // The step one quotient at a time, as `ql_root_free` takes it where `r p`
                    // is not of moderate size.
                    let (mut a_c, mut a_s, mut a_g, mut a_p) = ([0.0; K], [0.0; K], [0.0; K], [0.0; K]);
                    let (mut a_c0, mut a_g0, mut a_p0, mut a_bb, mut a_al, mut a_sg, mut a_r) =
                        ([0.0; K], [0.0; K], [0.0; K], [0.0; K], [0.0; K], [0.0; K], [0.0; K]);
                    st(cn, &mut a_c);
                    st(sn, &mut a_s);
                    st(gn, &mut a_g);
                    st(pn, &mut a_p);
                    st(c, &mut a_c0);
                    st(gamma, &mut a_g0);
                    st(p, &mut a_p0);
                    st(bb, &mut a_bb);
                    st(alpha, &mut a_al);
                    st(sigma, &mut a_sg);
                    st(r, &mut a_r);
                    for q in 0..K {
                        if bad & (1 << q) != 0 {
                            let cq = a_p0[q] / a_r[q];
                            let sq = a_bb[q] / a_r[q];
                            let gq = cq * (a_al[q] - a_sg[q]) - sq * a_g0[q];
                            a_c[q] = cq;
                            a_s[q] = sq;
                            a_g[q] = gq;
                            a_p[q] = if cq != 0.0 { gq * gq / cq } else { a_c0[q] * a_bb[q] };
                        }
                    }
                    cn = ld(&a_c);
                    sn = ld(&a_s);
                    gn = ld(&a_g);
                    pn = ld(&a_p);
                }
                let mut ev = 0;
                let mut smallm = [_mm256_setzero_si256(); H];
                let mut endm = [_mm256_setzero_si256(); H];
                let mut belowv = [_mm256_setzero_si256(); H];
                for h in 0..H {
                    let dn = _mm256_add_pd(gamma[h], _mm256_sub_pd(alpha[h], gn[h]));
                    let thr = _mm256_mul_pd(eps2v, _mm256_and_pd(_mm256_mul_pd(dn, dprev[h]), absmask));
                    let sm = _mm256_castpd_si256(_mm256_cmp_pd::<_CMP_NGT_UQ>(se[h], thr));
                    let bl = _mm256_add_epi64(pos[h], kv);
                    let tail = _mm256_cmpeq_epi64(bl, m[h]);
                    let en = _mm256_cmpeq_epi64(pos[h], l[h]);
                    let act = _mm256_andnot_si256(_mm256_castpd_si256(done[h]), _mm256_set1_epi64x(-1));
                    let smx = _mm256_andnot_si256(tail, sm);
                    ev |= _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_and_si256(_mm256_or_si256(smx, en), act)))
                        << (4 * h);
                    smallm[h] = smx;
                    endm[h] = en;
                    belowv[h] = bl;
                    // Scatter: e2 below the step (or the spare row at the block's end), d below.
                    let eidx = _mm256_blendv_epi8(bl, trashv[h], tail);
                    let (mut ei, mut di) = ([0i64; 4], [0i64; 4]);
                    let (mut sev, mut dnv) = ([0.0f64; 4], [0.0f64; 4]);
                    _mm256_storeu_si256(ei.as_mut_ptr() as *mut __m256i, eidx);
                    _mm256_storeu_si256(di.as_mut_ptr() as *mut __m256i, bl);
                    _mm256_storeu_pd(sev.as_mut_ptr(), se[h]);
                    _mm256_storeu_pd(dnv.as_mut_ptr(), dn);
                    for j in 0..4 {
                        *ep.add(ei[j] as usize) = sev[j];
                        *dp.add(di[j] as usize) = dnv[j];
                    }
                    c[h] = _mm256_blendv_pd(cn[h], one, done[h]);
                    s[h] = _mm256_blendv_pd(sn[h], zero, done[h]);
                    gamma[h] = _mm256_blendv_pd(gn[h], zero, done[h]);
                    p[h] = _mm256_blendv_pd(pn[h], one, done[h]);
                    dprev[h] = dn;
                    // Active lanes whose sweep goes on move up one row.
                    let step = _mm256_andnot_si256(_mm256_or_si256(en, _mm256_castpd_si256(done[h])), kv);
                    pos[h] = _mm256_sub_epi64(pos[h], step);
                }
                if ev != 0 {
                    sti(smallm, &mut small);
                    sti(endm, &mut ended);
                    sti(belowv, &mut below);
                    break;
                }
            }
            st(c, &mut sta.c);
            st(s, &mut sta.s);
            st(gamma, &mut sta.gamma);
            st(p, &mut sta.p);
            st(dprev, &mut sta.dprev);
            sti(pos, &mut sta.pos);
            for q in 0..K {
                if sta.done[q] {
                    continue;
                }
                if small[q] != 0 {
                    sta.jmin[q] = below[q];
                }
                if ended[q] != 0 {
                    // End of the sweep: its last entries, the scan's answers from l and l + 1,
                    // and the next sweep (or the lane is done).
                    let l = sta.l[q];
                    let (sp, dl) = (sta.s[q] * sta.p[q], sta.sigma[q] + sta.gamma[q]);
                    e2[l] = sp;
                    d[l] = dl;
                    let (lr, jr) = (l / K, sta.jmin[q] / K);
                    // (not greater: also when NaN, as the scan's `>` test stops there)
                    let thr = eps2 * (dl * d[l + K]).abs();
                    let small_l = sp.partial_cmp(&thr) != Some(std::cmp::Ordering::Greater);
                    let hints = if small_l { [(lr, lr), (lr + 1, jr)] } else { [(lr, jr), (usize::MAX, 0)] };
                    sta.start(q, d, e2, hints);
                }
            }
        }
        sta.failed
    }
}

/// Per-lane state of the iteration: the integer state of `ql_root_free` (rows as flat indices
/// `row * LANES + lane`) and the floating-point state of each lane's sweep (used by the AVX2
/// iteration only).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct State {
    /// Order of each lane's problem (0: no problem).
    n: [usize; LANES],
    /// First and last entry of the active block.
    l: [usize; LANES],
    m: [usize; LANES],
    /// The entry of the next step of the current sweep (from `m - 1` down to `l`).
    pos: [usize; LANES],
    /// The lowest entry below `l + 1` found negligible by the current sweep (`m` if none).
    jmin: [usize; LANES],
    sweeps: [usize; LANES],
    done: [bool; LANES],
    failed: [bool; LANES],
    c: V,
    s: V,
    gamma: V,
    p: V,
    sigma: V,
    /// The diagonal entry the previous step wrote (row `i + 2` of the current step).
    dprev: V,
    /// The spare row read by a lane that is done.
    read: usize,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl State {
    fn new(order: &[usize; LANES], read: usize) -> Self {
        const K: usize = LANES;
        State {
            n: *order,
            l: [0; K],
            m: [0; K],
            pos: [0; K],
            jmin: [0; K],
            sweeps: [0; K],
            done: [false; K],
            failed: [false; K],
            c: [1.0; K],
            s: [0.0; K],
            gamma: [0.0; K],
            p: [1.0; K],
            sigma: [0.0; K],
            dprev: [0.0; K],
            read,
        }
    }

    /// Lane `q` from row `l` on: deflation, `2 x 2` blocks and the shift of the next sweep, as
    /// the head of `ql_root_free`'s loop; marks the lane done when its problem is solved (or
    /// failed, past `30 n` sweeps). `hints` are known answers `(from, to)` of the scan (rows).
    #[inline(always)]
    fn start(&mut self, q: usize, d: &mut [f64], e2: &mut [f64], hints: [(usize, usize); 2]) {
        const K: usize = LANES;
        let n = self.n[q];
        let eps2 = f64::EPSILON * f64::EPSILON;
        let mut l = self.l[q] / K;
        while l < n {
            let mut m = l;
            if let Some(&(_, to)) = hints.iter().find(|h| h.0 == l) {
                m = to;
            } else {
                while m + 1 < n && e2[m * K + q] > eps2 * (d[m * K + q] * d[(m + 1) * K + q]).abs() {
                    m += 1;
                }
            }
            if m + 1 < n {
                e2[m * K + q] = 0.0;
            }
            if m == l {
                l += 1;
                continue;
            }
            if m == l + 1 {
                (d[l * K + q], d[(l + 1) * K + q]) = eig2(d[l * K + q], e2[l * K + q].sqrt(), d[(l + 1) * K + q]);
                e2[l * K + q] = 0.0;
                l += 2;
                continue;
            }
            self.sweeps[q] += 1;
            if self.sweeps[q] > 30 * n {
                self.failed[q] = true;
                break;
            }
            let (dl, dl1) = (d[l * K + q], d[(l + 1) * K + q]);
            let rte = e2[l * K + q].sqrt();
            let g = (dl1 - dl) / (2.0 * rte);
            let sigma = dl - rte / (g + pythag(g, 1.0).copysign(g));
            let gamma = d[m * K + q] - sigma;
            self.l[q] = l * K + q;
            self.m[q] = m * K + q;
            self.pos[q] = (m - 1) * K + q;
            self.jmin[q] = m * K + q;
            self.c[q] = 1.0;
            self.s[q] = 0.0;
            self.gamma[q] = gamma;
            self.p[q] = gamma * gamma;
            self.sigma[q] = sigma;
            self.dprev[q] = d[m * K + q];
            return;
        }
        self.done[q] = true;
        self.pos[q] = self.read + q;
        self.l[q] = usize::MAX;
        self.m[q] = usize::MAX;
        // Benign constants for the steps a done lane still computes (never kept).
        self.c[q] = 1.0;
        self.s[q] = 0.0;
        self.gamma[q] = 0.0;
        self.p[q] = 1.0;
        self.sigma[q] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gram_tridiagonal, lcg};
    use super::super::tridiagonal_ql;
    use super::*;

    /// The problems one by one through the scalar routine, and as batches: the same values bit
    /// for bit, and the same errors.
    fn check_same(problems: Vec<(Vec<f64>, Vec<f64>)>) {
        let (mut ds, mut es): (Vec<_>, Vec<_>) = problems.iter().cloned().unzip();
        let got = tridiagonal_ql_batch(&mut ds, &mut es);
        assert_eq!(got.len(), problems.len());
        for (j, (d0, e0)) in problems.into_iter().enumerate() {
            let (mut d, mut e) = (d0.clone(), e0.clone());
            let want = tridiagonal_ql(&mut d, &mut e);
            match (&want, &got[j]) {
                (Ok(()), Ok(())) => {
                    for (i, (x, y)) in d.iter().zip(&ds[j]).enumerate() {
                        assert_eq!(x.to_bits(), y.to_bits(), "problem {j} (n = {}), value {i}: {x} vs {y}", d.len());
                    }
                }
                (Err(_), Err(_)) => {}
                _ => panic!("problem {j}: scalar {want:?}, batch {:?}", got[j]),
            }
        }
    }

    fn random(n: usize, seed: &mut u64) -> (Vec<f64>, Vec<f64>) {
        ((0..n).map(|_| lcg(seed)).collect(), (0..n).map(|_| lcg(seed)).collect())
    }

    #[test]
    fn random_problems_of_every_small_order() {
        let mut seed = 11u64;
        // Orders 0..=100 in one call: batches of mixed orders, the last one partly empty.
        let problems: Vec<_> = (0..=100).map(|n| random(n, &mut seed)).collect();
        check_same(problems);
        // Equal orders (the kernel's case: consecutive splits).
        for n in [2usize, 3, 17, 64, 200] {
            check_same((0..LANES + 3).map(|_| random(n, &mut seed)).collect());
        }
    }

    #[test]
    fn graded_split_huge_tiny_and_zero_problems() {
        let mut seed = 5u64;
        let mut problems = Vec::new();
        for n in [5usize, 40, 120] {
            // Graded over 300 decades.
            let d: Vec<f64> =
                (0..n).map(|i| 10f64.powf(150.0 - 300.0 * i as f64 / n as f64) * (1.0 + lcg(&mut seed))).collect();
            let e: Vec<f64> =
                (0..n).map(|i| 10f64.powf(150.0 - 300.0 * i as f64 / n as f64) * lcg(&mut seed)).collect();
            problems.push((d, e));
            // Split into blocks by exact zeros, one block huge, one tiny (rescaled).
            let (mut d, mut e) = random(n, &mut seed);
            for i in 0..n {
                let f = if i < n / 3 {
                    1e200
                } else if i < 2 * n / 3 {
                    1e-200
                } else {
                    1.0
                };
                d[i] *= f;
                e[i] *= f;
                if i % 7 == 3 || i == n / 3 || i == 2 * n / 3 {
                    e[i] = 0.0;
                }
            }
            problems.push((d, e));
            // Zero, constant, rank-one-like and subnormal problems.
            problems.push((vec![0.0; n], vec![0.0; n]));
            problems.push((vec![1.0; n], vec![1.0; n]));
            problems.push(((0..n).map(|_| 5e-324 * (lcg(&mut seed) * 1e3).round()).collect(), vec![5e-324; n]));
            problems
                .push(((0..n).map(|i| if i == 0 { 1.0 } else { 1e-30 * lcg(&mut seed) }).collect(), vec![1e-16; n]));
        }
        check_same(problems);
    }

    #[test]
    fn errors_stay_in_their_lane() {
        let mut seed = 9u64;
        let mut problems: Vec<_> = (0..LANES).map(|_| random(30, &mut seed)).collect();
        problems[2].0[4] = f64::NAN;
        problems[5].1[7] = f64::INFINITY;
        problems[6].1.truncate(10); // too few off-diagonal entries
        let (mut ds, mut es): (Vec<_>, Vec<_>) = problems.iter().cloned().unzip();
        let got = tridiagonal_ql_batch(&mut ds, &mut es);
        for (q, r) in got.iter().enumerate() {
            assert_eq!(r.is_err(), [2, 5, 6].contains(&q), "lane {q}: {r:?}");
        }
        check_same(problems);
    }

    /// `cargo test --profile fastrelease -p ess-core --lib ql_batch_speed -- --ignored --nocapture`:
    /// the tridiagonal forms of Gram matrices (as the dense kernel sees them) and random
    /// tridiagonals, one by one against batches of `LANES`.
    #[test]
    #[ignore]
    fn ql_batch_speed() {
        use faer::Mat;
        let mut seed = 3u64;
        for n in [32usize, 128, 512] {
            for what in ["random", "gram"] {
                let problems: Vec<(Vec<f64>, Vec<f64>)> = (0..LANES)
                    .map(|_| {
                        if what == "random" {
                            random(n, &mut seed)
                        } else {
                            gram_tridiagonal(&Mat::<f64>::from_fn(n, n / 2, |_, _| lcg(&mut seed)))
                        }
                    })
                    .collect();
                let reps = (4_000_000 / (n * n)).max(3);
                let (mut t1, mut tb) = (f64::INFINITY, f64::INFINITY);
                for _ in 0..reps {
                    let mut pr = problems.clone();
                    let t0 = std::time::Instant::now();
                    for (d, e) in pr.iter_mut() {
                        tridiagonal_ql(d, e).unwrap();
                    }
                    t1 = t1.min(t0.elapsed().as_secs_f64());
                    let (mut ds, mut es): (Vec<_>, Vec<_>) = problems.iter().cloned().unzip();
                    let t0 = std::time::Instant::now();
                    let r = tridiagonal_ql_batch(&mut ds, &mut es);
                    tb = tb.min(t0.elapsed().as_secs_f64());
                    assert!(r.iter().all(|x| x.is_ok()));
                }
                println!(
                    "{what:6} n = {n:4}: one by one {:8.3} ms, batch of {LANES} {:8.3} ms: {:.2}x",
                    t1 * 1e3,
                    tb * 1e3,
                    t1 / tb
                );
            }
        }
    }
}
