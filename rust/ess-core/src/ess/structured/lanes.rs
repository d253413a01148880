//! [`LANES`] (sixteen) channels of a diagonal, scalar or identity system in lockstep.
//!
//! The per-channel sweep of [`super::one_channel`] spends much of its time in short chains of
//! dependent square roots and divisions (one Givens rotation per state coordinate and step) and
//! in loops of length `N`. Here lane `q` of every vector `[f64; LANES]` belongs to channel `q` of
//! a group of [`LANES`] channels, and every update (transition, Givens append, row
//! normalisation, the product `S_O^T diag(2^g) S_R`) runs on all lanes at once. The product is
//! formed directly in the interleaved layout of [`BatchSvd`], whose lanes are then the
//! channels at one split.
//!
//! Every lane repeats exactly the floating-point operations of the per-channel path, in the same
//! order (a lane whose rotation the per-channel path skips keeps its values through a select;
//! power-of-two scalings are exact), so the two paths give the same curves bit for bit. The
//! group path is used when the backward factors of all requested splits of the group fit in
//! the window budget; otherwise the per-channel path with its checkpoints runs.

use super::{
    exponent, lane_hypot, ldexp, scale_pow2, split_result, BatchSvd, Channel, Transition, LANES, SMALL_SVD_MAX,
};
use crate::error::Result;
use crate::ess::Tolerance;

const K: usize = LANES;
type V = [f64; K];

/// Lane-wise `x * y` (by value: the loads happen before any store, which lets the compiler use
/// vector instructions).
#[inline(always)]
fn mul(x: V, y: V) -> V {
    let mut r = [0.0; K];
    for q in 0..K {
        r[q] = x[q] * y[q];
    }
    r
}

/// `x = m 2^k` with `|m|` in `[1, 2)` for a normal `x` (`None` for zero, subnormal, non-finite).
#[inline(always)]
fn split_normal(x: f64) -> Option<(i64, f64)> {
    let bits = x.to_bits();
    let raw = ((bits >> 52) & 0x7ff) as i64;
    if raw == 0 || raw == 0x7ff {
        None
    } else {
        Some((raw - 1023, f64::from_bits((bits & !(0x7ffu64 << 52)) | (1023u64 << 52))))
    }
}

/// [`super::Factor`] of [`LANES`] channels (always lower triangular): lane `q` of `s[j * n + i]` is
/// `S[i, j]` of channel `q`, with per-row exponents `e` and zero-row flags `rz`. Its updates run
/// as AVX-512 intrinsics ([`super::avx512`]) when the processor has them (`v512`), else as the
/// portable loops below; the two give the same values bit for bit.
pub(super) struct LaneFactor {
    pub(super) n: usize,
    pub(super) s: Vec<V>,
    pub(super) e: Vec<[i64; K]>,
    pub(super) rz: Vec<[bool; K]>,
    pub(super) w: Vec<V>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    v512: bool,
}

impl LaneFactor {
    fn zeros(n: usize) -> Self {
        LaneFactor {
            n,
            s: vec![[0.0; K]; n * n],
            e: vec![[0; K]; n],
            rz: vec![[true; K]; n],
            w: vec![[0.0; K]; n],
            v512: crate::cpu::has_avx512(),
        }
    }

    /// The same factor with the portable updates (`v512` false) or, where the processor has
    /// AVX-512, the vector ones (`v512` true); for tests.
    #[cfg(test)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn zeros_with(n: usize, v512: bool) -> Self {
        LaneFactor { v512: v512 && crate::cpu::avx512_available(), ..Self::zeros(n) }
    }

    fn reset(&mut self) {
        self.s.iter_mut().for_each(|x| *x = [0.0; K]);
        self.e.iter_mut().for_each(|x| *x = [0; K]);
        self.rz.iter_mut().for_each(|x| *x = [true; K]);
    }

    /// [`super::Factor::mul_diag`]: `S <- diag(a) S`, `a` one lane vector per row (or one for all
    /// rows).
    #[inline(always)]
    pub(super) fn mul_diag(&mut self, a: &[V]) {
        #[cfg(target_arch = "x86_64")]
        if self.v512 {
            // SAFETY: `v512` is set only when the processor has AVX-512 F, DQ and VL.
            return unsafe { super::avx512::mul_diag(self.n, &mut self.s, &mut self.e, &mut self.rz, a) };
        }
        let n = self.n;
        let mut f = [[1.0f64; K]; SMALL_SVD_MAX];
        for i in 0..n {
            let ai = if a.len() == 1 { &a[0] } else { &a[i] };
            f[i] = mul_diag_row(ai, &mut self.e[i], &mut self.rz[i]);
        }
        scale_rows(n, &mut self.s, &f[..n]);
    }

    /// [`super::Factor::append`]: `S S^T <- S S^T + v v^T` by Givens rotations, then
    /// [`Self::normalise`].
    #[inline(always)]
    pub(super) fn append(&mut self, v: &[V]) {
        #[cfg(target_arch = "x86_64")]
        if self.v512 {
            // SAFETY: as in `mul_diag`.
            return unsafe { super::avx512::append(self.n, &mut self.s, &mut self.e, &mut self.rz, &mut self.w, v) };
        }
        let n = self.n;
        let mut w = std::mem::take(&mut self.w);
        let mut first = n;
        for i in 0..n {
            if append_row(n, &mut self.s, i, &v[i], &mut self.e[i], &self.rz[i], &mut w[i]) {
                first = first.min(i);
            }
        }
        for j in first..n {
            let y = w[j];
            let mut act = [false; K];
            let mut anyact = false;
            for q in 0..K {
                act[q] = y[q] != 0.0;
                anyact |= act[q];
            }
            if !anyact {
                continue;
            }
            let x = self.s[j * n + j];
            let mut r = [0.0f64; K];
            lane_hypot(&x, &y, &mut r);
            let mut c = [0.0f64; K];
            let mut s = [0.0f64; K];
            for q in 0..K {
                c[q] = x[q] / r[q];
                s[q] = y[q] / r[q];
            }
            {
                let d = &mut self.s[j * n + j];
                for q in 0..K {
                    if act[q] {
                        d[q] = r[q];
                        w[j][q] = 0.0;
                    }
                }
            }
            let col = &mut self.s[j * n..(j + 1) * n];
            let wcol = &mut w[..n];
            for i in j + 1..n {
                let (a, b) = (col[i], wcol[i]);
                let mut na = [0.0f64; K];
                let mut nb = [0.0f64; K];
                for q in 0..K {
                    let pa = c[q] * a[q] + s[q] * b[q];
                    let pb = c[q] * b[q] - s[q] * a[q];
                    na[q] = if act[q] { pa } else { a[q] };
                    nb[q] = if act[q] { pb } else { b[q] };
                }
                col[i] = na;
                wcol[i] = nb;
            }
        }
        self.w = w;
        self.normalise();
    }

    /// [`super::Factor::normalise`]: rows to max-norm in `[1, 2)`, zero rows flagged.
    #[inline(always)]
    fn normalise(&mut self) {
        let n = self.n;
        let mut m = [[0.0f64; K]; SMALL_SVD_MAX];
        for j in 0..n {
            let col = &self.s[j * n..(j + 1) * n];
            for i in j..n {
                let (x, mut mi) = (col[i], m[i]);
                for q in 0..K {
                    mi[q] = mi[q].max(x[q].abs());
                }
                m[i] = mi;
            }
        }
        for (i, mi) in m[..n].iter_mut().enumerate() {
            normalise_row(n, &mut self.s, i, mi, &mut self.e[i], &mut self.rz[i]);
        }
        scale_rows(n, &mut self.s, &m[..n]);
    }
}

/// `S[i, :] *= f[i]` (lane-wise) for every row of the lower triangle `s` (`s[j * n + i]`).
#[inline(always)]
fn scale_rows(n: usize, s: &mut [V], f: &[V]) {
    for j in 0..n {
        let col = &mut s[j * n..(j + 1) * n];
        for i in j..n {
            col[i] = mul(col[i], f[i]);
        }
    }
}

/// Row `i` of [`LaneFactor::mul_diag`] by the entries `ai` of the lanes: the exponents `e` and
/// zero flags `rz` of the row updated; returns the factors the row is then scaled by.
#[inline(always)]
pub(super) fn mul_diag_row(ai: &V, e: &mut [i64; K], rz: &mut [bool; K]) -> V {
    let mut f = [1.0f64; K];
    for q in 0..K {
        let x = ai[q];
        match split_normal(x) {
            // x = 1 gives (0, 1): the per-channel path's "unchanged" case.
            Some((k, m)) => {
                f[q] = m;
                e[q] += k;
            }
            None => {
                if x == 0.0 {
                    f[q] = 0.0;
                    e[q] = 0;
                    rz[q] = true;
                } else {
                    let k = exponent(x);
                    f[q] = ldexp(x, -k);
                    e[q] += k;
                }
            }
        }
    }
    f
}

/// Row `i` of [`LaneFactor::append`] before its rotations: the new column's entries `vi` in the
/// row's scale into `wi` (the row's exponents `e` raised to those of `vi` where they are larger,
/// the row of `s` rescaled to match); returns whether any lane's entry is nonzero.
#[inline(always)]
pub(super) fn append_row(
    n: usize,
    s: &mut [V],
    i: usize,
    vi: &V,
    e: &mut [i64; K],
    rz: &[bool; K],
    wi: &mut V,
) -> bool {
    let mut fr = [1.0f64; K];
    let mut any = false;
    let mut nonzero = false;
    for q in 0..K {
        wi[q] = 0.0;
        let x = vi[q];
        if x == 0.0 {
            continue;
        }
        nonzero = true;
        let ev = exponent(x);
        if rz[q] {
            e[q] = ev;
        } else if ev > e[q] {
            let d = e[q] - ev;
            match scale_pow2(-d) {
                Some(f) => {
                    fr[q] = f;
                    any = true;
                }
                None => {
                    for j in 0..=i {
                        s[j * n + i][q] = ldexp(s[j * n + i][q], d);
                    }
                }
            }
            e[q] = ev;
        }
        wi[q] = match scale_pow2(e[q]) {
            Some(f) => x * f,
            None => ldexp(x, -e[q]),
        };
    }
    if any {
        for j in 0..=i {
            let x = &mut s[j * n + i];
            for q in 0..K {
                x[q] *= fr[q];
            }
        }
    }
    nonzero
}

/// Row `i` of [`LaneFactor::normalise`], whose largest magnitudes per lane are `mi`: the
/// exponents `e` and zero flags `rz` of the row updated, and `mi` replaced by the factors the
/// row is then scaled by (scalings beyond the common range are applied here, leaving `1`).
#[inline(always)]
pub(super) fn normalise_row(n: usize, s: &mut [V], i: usize, mi: &mut V, e: &mut [i64; K], rz: &mut [bool; K]) {
    for q in 0..K {
        if mi[q] == 0.0 {
            e[q] = 0;
            rz[q] = true;
            mi[q] = 1.0;
            continue;
        }
        rz[q] = false;
        let k = exponent(mi[q]);
        mi[q] = 1.0;
        if k == 0 {
            continue;
        }
        e[q] += k;
        match scale_pow2(k) {
            Some(f) => mi[q] = f,
            None => {
                for j in 0..=i {
                    s[j * n + i][q] = ldexp(s[j * n + i][q], -k);
                }
            }
        }
    }
}

/// Bytes of the stored backward factors of a group at `np` splits (saturating).
pub(super) fn group_bytes(np: usize, n: usize) -> usize {
    let per = (n * (n + 1) / 2 + n).saturating_mul(8 * K).saturating_add(n * K);
    np.saturating_mul(per)
}

/// Buffers of one worker of the group path, reused across groups.
#[derive(Default)]
pub(super) struct GroupWorkspace {
    pub(super) chans: Vec<Channel>,
    /// Interleaved factors of the group: `a` (`L` or `L N` vectors), `b`, `c` (`L N`).
    a: Vec<V>,
    b: Vec<V>,
    c: Vec<V>,
    /// Stored backward factors, transposed and packed: lane `q` of `st_s[k * nt + r (r + 1) / 2 + i]`
    /// is `S_O[r, i]` (`i <= r`, `nt = n (n + 1) / 2`).
    st_s: Vec<V>,
    st_e: Vec<[i64; K]>,
    st_rz: Vec<[bool; K]>,
    so: Option<LaneFactor>,
    sr: Option<LaneFactor>,
    svd: Option<BatchSvd>,
    sv: Vec<Vec<f64>>,
    /// The second batch of a pair of splits (see [`BatchSvd::values_pair`]) and its values.
    svd2: Option<BatchSvd>,
    sv2: Vec<Vec<f64>>,
    /// `2^(g_r - gmax) S_R[r, j]` of the current split, packed by rows as `st_s`.
    srs: Vec<V>,
    /// Curves of the lanes (moved out by the caller during [`group`]).
    pub(super) out: Vec<Vec<(f64, f64)>>,
}

impl GroupWorkspace {
    /// Interleave the factors of `chans[..LANES]` (already filled) into the lane buffers.
    pub(super) fn interleave(&mut self, kind: Transition, l: usize, n: usize) {
        let na = match kind {
            Transition::Identity => 0,
            Transition::Scalar => l,
            Transition::Diagonal => l * n,
            Transition::Dense => unreachable!("dense transitions take the per-channel path"),
        };
        let chans = &self.chans;
        let fill = |dst: &mut Vec<V>, len: usize, src: &dyn Fn(&Channel) -> &[f64]| {
            dst.clear();
            dst.resize(len, [0.0; K]);
            for (q, ch) in chans.iter().enumerate().take(K) {
                for (d, &x) in dst.iter_mut().zip(&src(ch)[..len]) {
                    d[q] = x;
                }
            }
        };
        fill(&mut self.a, na, &|c| &c.a);
        fill(&mut self.b, l * n, &|c| &c.b);
        fill(&mut self.c, l * n, &|c| &c.c);
    }
}

/// Curves of the group whose factors are in `ws` (see [`GroupWorkspace::interleave`]): `out[q]`
/// receives the `(tolerance, entropy)` of lane `q` at every position, as [`super::one_channel`].
#[allow(clippy::too_many_arguments)]
pub(super) fn group(
    ws: &mut GroupWorkspace,
    kind: Transition,
    l: usize,
    n: usize,
    positions: &[usize],
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
    out: &mut [Vec<(f64, f64)>],
) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::has_avx2_fma() {
            // SAFETY: the features were detected at run time.
            return unsafe { group_avx2(ws, kind, l, n, positions, tol, want_tol, want_ent, out) };
        }
    }
    group_body(ws, kind, l, n, positions, tol, want_tol, want_ent, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn group_avx2(
    ws: &mut GroupWorkspace,
    kind: Transition,
    l: usize,
    n: usize,
    positions: &[usize],
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
    out: &mut [Vec<(f64, f64)>],
) -> Result<()> {
    group_body(ws, kind, l, n, positions, tol, want_tol, want_ent, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn group_body(
    ws: &mut GroupWorkspace,
    kind: Transition,
    l: usize,
    n: usize,
    positions: &[usize],
    tol: &Tolerance,
    want_tol: bool,
    want_ent: bool,
    out: &mut [Vec<(f64, f64)>],
) -> Result<()> {
    debug_assert!(n <= SMALL_SVD_MAX && kind != Transition::Dense);
    for o in out.iter_mut() {
        o.clear();
        o.resize(positions.len(), (0.0, 0.0));
    }
    let first = positions.partition_point(|&p| p < 1);
    let ts = &positions[first..];
    if ts.is_empty() {
        return Ok(());
    }
    let nn = n * n;
    let nt = n * (n + 1) / 2;
    let GroupWorkspace { a, b, c, st_s, st_e, st_rz, so, sr, svd, sv, svd2, sv2, srs, .. } = ws;
    srs.clear();
    srs.resize(nt, [0.0; K]);
    crate::mem::resize_advised(st_s, ts.len() * nt, [0.0; K]);
    crate::mem::resize_advised(st_e, ts.len() * n, [0; K]);
    crate::mem::resize_advised(st_rz, ts.len() * n, [true; K]);
    if so.as_ref().is_none_or(|f| f.n != n) {
        *so = Some(LaneFactor::zeros(n));
        *sr = Some(LaneFactor::zeros(n));
    }
    let so = so.as_mut().expect("lane factor");
    let sr = sr.as_mut().expect("lane factor");
    so.reset();
    sr.reset();
    let step = |t: usize| -> &[V] {
        match kind {
            Transition::Scalar => &a[t..t + 1],
            Transition::Diagonal => &a[t * n..(t + 1) * n],
            _ => &[],
        }
    };
    let diag = kind != Transition::Identity;
    // Backward from S_O(L) = 0, storing the factor at every requested split.
    let mut k = ts.len();
    for t in (ts[0]..l).rev() {
        if (l - 1 - t).is_multiple_of(64) {
            crate::interrupt::check()?;
        }
        so.append(&c[t * n..(t + 1) * n]);
        if diag {
            so.mul_diag(step(t));
        }
        if k > 0 && ts[k - 1] == t {
            k -= 1;
            let dst = &mut st_s[k * nt..(k + 1) * nt];
            for r in 0..n {
                for i in 0..=r {
                    dst[r * (r + 1) / 2 + i] = so.s[i * n + r];
                }
            }
            st_e[k * n..(k + 1) * n].copy_from_slice(&so.e);
            st_rz[k * n..(k + 1) * n].copy_from_slice(&so.rz);
        }
    }
    // Forward: S_R(1) = [b_0], S_R(t+1) = tri([A_t S_R(t), b_t]).
    sr.append(&b[0..n]);
    if svd.as_ref().is_none_or(|s| s.n != n) {
        *svd = Some(BatchSvd::new(n));
    }
    let svd = svd.as_mut().expect("workspace SVD");
    sv.resize_with(K, Vec::new);
    // With AVX-512 the splits go in pairs: the product of the first waits in `svd` until the
    // second is in `svd2`, and the two batches are chased together (32 lanes).
    let pairs = crate::cpu::has_avx512();
    if pairs && svd2.as_ref().is_none_or(|s| s.n != n) {
        *svd2 = Some(BatchSvd::new(n));
    }
    sv2.resize_with(K, Vec::new);
    let mut held: Option<(usize, usize, [Option<i64>; K])> = None;
    let mut t = 1usize;
    for (idx, &tq) in ts.iter().enumerate() {
        while t < tq {
            if t.is_multiple_of(64) {
                crate::interrupt::check()?;
            }
            if diag {
                sr.mul_diag(step(t));
            }
            sr.append(&b[t * n..(t + 1) * n]);
            t += 1;
        }
        let so_t = &st_s[idx * nt..(idx + 1) * nt];
        #[cfg(target_arch = "x86_64")]
        if idx + 1 < ts.len() {
            // The next split's factor was written long ago (backward sweep): start loading it now.
            let next = &st_s[(idx + 1) * nt..(idx + 2) * nt];
            for x in next.iter() {
                // SAFETY: a prefetch hint on a valid address.
                unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(x.as_ptr().cast()) };
            }
        }
        let so_e = &st_e[idx * n..(idx + 1) * n];
        let so_rz = &st_rz[idx * n..(idx + 1) * n];
        // Combined row exponents over rows nonzero in both factors, per lane.
        let mut gmax: [Option<i64>; K] = [None; K];
        for r in 0..n {
            for q in 0..K {
                if !sr.rz[r][q] && !so_rz[r][q] {
                    let x = sr.e[r][q] + so_e[r][q];
                    gmax[q] = Some(gmax[q].map_or(x, |m: i64| m.max(x)));
                }
            }
        }
        // The rows of S_R scaled by 2^(g_r - gmax), for the split product.
        for r in 0..n {
            let mut sc = [0.0f64; K];
            for q in 0..K {
                if let Some(gm) = gmax[q] {
                    if !sr.rz[r][q] && !so_rz[r][q] {
                        sc[q] = ldexp(1.0, sr.e[r][q] + so_e[r][q] - gm);
                    }
                }
            }
            let base = r * (r + 1) / 2;
            for j in 0..=r {
                srs[base + j] = mul(sr.s[j * n + r], sc);
            }
        }
        let o = first + idx;
        let any = gmax.iter().any(|g| g.is_some());
        if pairs && any {
            if let Some((o0, t0, g0)) = held.take() {
                let svd2 = svd2.as_mut().expect("workspace SVD");
                split_product(n, so_t, &srs[..nt], &mut svd2.a[..nn]);
                svd.values_pair(svd2, sv, sv2)?;
                for q in 0..K {
                    out[q][o0] = split_result(&mut sv[q], t0, l, g0[q], tol, want_tol, want_ent);
                    out[q][o] = split_result(&mut sv2[q], tq, l, gmax[q], tol, want_tol, want_ent);
                }
            } else {
                split_product(n, so_t, &srs[..nt], &mut svd.a[..nn]);
                held = Some((o, tq, gmax));
            }
            continue;
        }
        if !any {
            // (no values needed: `split_result` reads none for a lane without `gmax`)
            for q in 0..K {
                out[q][o] = split_result(&mut Vec::new(), tq, l, None, tol, want_tol, want_ent);
            }
            continue;
        }
        split_product(n, so_t, &srs[..nt], &mut svd.a[..nn]);
        svd.values_interleaved(K, sv)?;
        for q in 0..K {
            out[q][o] = split_result(&mut sv[q], tq, l, gmax[q], tol, want_tol, want_ent);
        }
    }
    if let Some((o0, t0, g0)) = held {
        svd.values_interleaved(K, sv)?;
        for q in 0..K {
            out[q][o0] = split_result(&mut sv[q], t0, l, g0[q], tol, want_tol, want_ent);
        }
    }
    Ok(())
}

/// The split product `W = S_O^T diag(2^(g - gmax)) S_R` of every lane into the SVD's input:
/// `wa[j * n + i]` = sum over `r >= max(i, j)`, ascending (the per-channel path's order), of
/// `so[r (r + 1) / 2 + i] * sr[r (r + 1) / 2 + j]` (both packed by rows), accumulated in
/// registers. Lanes and rows that the per-channel path skips contribute exact zeros (which leave
/// the sums unchanged). Written with AVX-512 intrinsics when the processor has them
/// ([`super::avx512::split_product`], the same values bit for bit).
#[inline(always)]
fn split_product(n: usize, so_t: &[V], srs: &[V], wa: &mut [V]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512() {
        // SAFETY: the features were detected at run time.
        return unsafe { super::avx512::split_product(n, so_t, srs, wa) };
    }
    split_product_portable(n, so_t, srs, wa);
}

/// [`split_product`] as loops over lane arrays (compiled within the caller's features).
#[inline(always)]
pub(super) fn split_product_portable(n: usize, so_t: &[V], srs: &[V], wa: &mut [V]) {
    for j in 0..n {
        for i in 0..n {
            let r0 = i.max(j);
            let mut acc = [0.0f64; K];
            let mut base = r0 * (r0 + 1) / 2;
            for r in r0..n {
                let p = mul(so_t[base + i], srs[base + j]);
                for q in 0..K {
                    acc[q] += p[q];
                }
                base += r + 1;
            }
            wa[j * n + i] = acc;
        }
    }
}
