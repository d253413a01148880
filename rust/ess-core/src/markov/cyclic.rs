//! Streaming GTH for the stationary distribution of chains whose transitions stay inside a
//! narrow *cyclic* band: every positive off-diagonal `P[i, j]` has `|i - j| <= b` or
//! `|i - j| >= n - b` (rings and other periodic nearest-neighbour chains; ordinary banded
//! chains such as birth-death chains are the case without wrap-around).
//!
//! In the natural order, with the last `w = b` states set aside as a *border*, eliminating
//! state `k` only couples the states `k + 1 ..= k + b` and the border, so the censored
//! chain never needs more than a window of `b + 1` band rows (each with its `2b + 1` band
//! columns and `w` border columns), `w` border rows over the window's columns, and the
//! `w x w` border block. Rows enter the window straight from the CSR input (no reordering,
//! no intermediate copy) and leave it as `b + w` multipliers and one pivot each, which the
//! back-substitution reads in reverse. Work `O(n (b + w)^2)`, memory `O(n (b + w))`.
//!
//! The arithmetic is that of [`super::gth`]: each pivot is the sum of the remaining
//! off-diagonal entries of its row, and every update adds products of non-negative
//! numbers, so every weight carries a small relative error whatever the magnitudes.
//!
//! All pivots positive implies that every state reaches the last one, hence a single
//! closed class (containing it) and a unique stationary distribution, which GTH then
//! computes (zero on transient states). A zero pivot means this is not so, or that a
//! pivot underflowed; [`stationary`] then returns `None` and the caller takes the general
//! route (closed classes first).

use rayon::prelude::*;

use super::chain::{CsrRef, Index};
use crate::error::Result;

/// Widest cyclic band for which this engine is used (`(2 b)^2` updates per state).
pub const CYCLIC_MAX_B: usize = 24;

/// Cyclic bandwidth `max min(|i - j|, n - |i - j|)` over the positive off-diagonal
/// entries, or `None` when it exceeds `max_b`. Assumes a validated CSR.
pub fn bandwidth<I: Index>(c: &CsrRef<'_, I>, max_b: usize) -> Option<usize> {
    let n = c.n;
    let b = (0..n)
        .into_par_iter()
        .with_min_len(4096)
        .map(|i| {
            let (a, z) = (c.indptr[i].to_i64() as usize, c.indptr[i + 1].to_i64() as usize);
            let mut m = 0usize;
            for k in a..z {
                if c.data[k] > 0.0 {
                    let j = c.indices[k].to_i64() as usize;
                    let d = i.abs_diff(j);
                    m = m.max(d.min(n - d));
                }
            }
            m
        })
        .max()
        .unwrap_or(0);
    (b <= max_b).then_some(b)
}

/// Sum with four accumulators (a short dependency chain; every term is non-negative, so
/// the order does not matter for accuracy).
#[inline(always)]
fn pairwise_sum(x: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut chunks = x.chunks_exact(4);
    for c in &mut chunks {
        for q in 0..4 {
            acc[q] += c[q];
        }
    }
    for (q, &v) in chunks.remainder().iter().enumerate() {
        acc[q] += v;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// The elimination window (see the module docs); `b` is the band half-width and the
/// border width.
struct Window<'c, 'a, I: Index> {
    c: &'c CsrRef<'a, I>,
    b: usize,
    nb: usize,
    s: usize,
    rw: usize,
    /// `s` band rows (slot `i mod s`): offsets `-b..=b`, then `b` border columns.
    r: Vec<f64>,
    /// Border rows over the window's band columns (slot `j mod s`).
    br: Vec<f64>,
    /// Border block.
    bb: Vec<f64>,
    /// Border rows' band-column entries, sorted by column, and a cursor into each.
    bcols: Vec<Vec<(usize, f64)>>,
    bptr: Vec<usize>,
    /// Per eliminated state: its `2b` column entries (band rows, then border rows), each
    /// divided by its pivot.
    mult: Vec<f64>,
}

impl<I: Index> Window<'_, '_, I> {
    #[inline(always)]
    fn row(&self, i: usize) -> (&[I], &[f64]) {
        let (a, z) = (self.c.indptr[i].to_i64() as usize, self.c.indptr[i + 1].to_i64() as usize);
        (&self.c.indices[a..z], &self.c.data[a..z])
    }

    /// Row `i` (a band state) into window slot `slot` (= i mod s).
    #[inline(always)]
    fn load_row(&mut self, i: usize, slot: usize) {
        let (b, nb, rw) = (self.b, self.nb, self.rw);
        let (a, z) = (self.c.indptr[i].to_i64() as usize, self.c.indptr[i + 1].to_i64() as usize);
        let dst = &mut self.r[slot * rw..(slot + 1) * rw];
        dst.iter_mut().for_each(|x| *x = 0.0);
        for (&j, &v) in self.c.indices[a..z].iter().zip(&self.c.data[a..z]) {
            let j = j.to_i64() as usize;
            if j == i || v <= 0.0 {
                continue;
            }
            if j >= nb {
                dst[2 * b + 1 + (j - nb)] += v;
            } else {
                // |i - j| <= b between band states (guaranteed by `bandwidth`)
                dst[j + b - i] += v;
            }
        }
    }

    /// Band column `col` of the border rows into window slot `slot` (= col mod s).
    #[inline(always)]
    fn load_col(&mut self, col: usize, slot: usize) {
        for rb in 0..self.b {
            let mut x = 0.0;
            let list = &self.bcols[rb];
            let p = &mut self.bptr[rb];
            while *p < list.len() && list[*p].0 <= col {
                if list[*p].0 == col {
                    x += list[*p].1;
                }
                *p += 1;
            }
            self.br[rb * self.s + slot] = x;
        }
    }

    /// Eliminate the band states in order; `false` on a zero pivot. Written for a
    /// compile-time `b` at the call sites (inlined), so that the small loops unroll.
    #[inline(always)]
    fn eliminate(&mut self, b: usize) -> bool {
        debug_assert_eq!(b, self.b);
        let (nb, s, rw) = (self.nb, self.s, self.rw);
        let w = b;
        let per = b + w;
        let mut slot = [0usize; CYCLIC_MAX_B];
        let mut rv = [0.0f64; 2 * CYCLIC_MAX_B]; // row k: band k+1..=k+b, then border
        let mut cv = [0.0f64; 2 * CYCLIC_MAX_B]; // column k: same states
        let mut ks = 0usize; // k mod s
        for k in 0..nb {
            let base = ks * rw;
            let nband = b.min(nb - 1 - k); // band states after k still present
            for (t, sl) in slot[..b].iter_mut().enumerate() {
                let x = ks + 1 + t;
                *sl = if x >= s { x - s } else { x };
            }
            {
                let row = &self.r[base..base + rw];
                for t in 0..b {
                    let live = t < nband;
                    rv[t] = if live { row[b + 1 + t] } else { 0.0 };
                    cv[t] = if live { self.r[slot[t] * rw + b - 1 - t] } else { 0.0 };
                    // offset k - i = -(t + 1)
                }
                for rb in 0..w {
                    rv[b + rb] = row[2 * b + 1 + rb];
                    cv[b + rb] = self.br[rb * s + ks];
                }
            }
            // Pivot: the sum of the remaining off-diagonal entries (summed pairwise: a short
            // dependency chain; every term is non-negative, so any order is accurate).
            let d = pairwise_sum(&rv[..per]);
            if !(d > 0.0) || !d.is_finite() {
                return false;
            }
            // Multipliers Q[i, k] / d for the back-substitution pi_k = sum_i pi_i Q[i, k] / d.
            let inv = 1.0 / d;
            let mut fk = [0.0f64; 2 * CYCLIC_MAX_B];
            for (f, &x) in fk[..per].iter_mut().zip(&cv[..per]) {
                *f = x * inv;
            }
            self.mult.extend_from_slice(&fk[..per]);
            // Censor k out: Q[i, j] += Q[i, k] Q[k, j] / d for i != j (diagonals unused).
            for ti in 0..per {
                let f = fk[ti];
                if f == 0.0 {
                    continue;
                }
                if ti < b {
                    // band row i = k + 1 + ti; band column j = k + 1 + tj at offset j - i + b
                    // (tj == ti adds into row i's diagonal slot, which is never read: GTH
                    // pivots are sums of off-diagonal entries; no branch keeps this vectorised)
                    let rowi = &mut self.r[slot[ti] * rw..(slot[ti] + 1) * rw];
                    for (x, &y) in rowi[b - ti..2 * b - ti].iter_mut().zip(&rv[..b]) {
                        *x += f * y;
                    }
                    for (x, &y) in rowi[2 * b + 1..2 * b + 1 + w].iter_mut().zip(&rv[b..per]) {
                        *x += f * y;
                    }
                } else {
                    let ib = ti - b;
                    for tj in 0..b {
                        self.br[ib * s + slot[tj]] += f * rv[tj];
                    }
                    // (rb == ib: the border diagonal, never read)
                    for (x, &y) in self.bb[ib * w..(ib + 1) * w].iter_mut().zip(&rv[b..per]) {
                        *x += f * y;
                    }
                }
            }
            let next = k + s;
            if next < nb {
                self.load_row(next, ks);
                self.load_col(next, ks);
            }
            ks = if ks + 1 == s { 0 } else { ks + 1 };
        }
        true
    }
}

/// Unnormalised stationary weights of the chain `c` with cyclic bandwidth `b` (from
/// [`bandwidth`]), or `None` when the engine does not apply (tiny chains, a zero pivot).
pub fn stationary<I: Index>(c: &CsrRef<'_, I>, b: usize) -> Result<Option<Vec<f64>>> {
    let n = c.n;
    let b = b.max(1);
    if b > CYCLIC_MAX_B || n < 4 * b + 4 {
        return Ok(None);
    }
    let w = b;
    let nb = n - w; // band states 0..nb, border nb..n
    let s = b + 1; // window rows
    let rw = 2 * b + 1 + w; // band offsets -b..=b, then the border columns
    let mut win = Window {
        c,
        b,
        nb,
        s,
        rw,
        r: vec![0.0; s * rw],
        br: vec![0.0; w * s],
        bb: vec![0.0; w * w],
        bcols: Vec::with_capacity(w),
        bptr: vec![0; w],
        mult: crate::mem::with_capacity(nb * 2 * b)?,
    };
    // Border rows: border-column entries into bb; band-column entries as sorted lists,
    // consumed as the window passes (duplicates are summed).
    for rb in 0..w {
        let i = nb + rb;
        let mut list = Vec::new();
        let (ix, vs) = win.row(i);
        let mut into_bb = Vec::new();
        for (&j, &v) in ix.iter().zip(vs) {
            let j = j.to_i64() as usize;
            if j == i || v <= 0.0 {
                continue;
            }
            if j >= nb {
                into_bb.push((j - nb, v));
            } else {
                list.push((j, v));
            }
        }
        for (j, v) in into_bb {
            win.bb[rb * w + j] += v;
        }
        list.sort_unstable_by_key(|e| e.0);
        win.bcols.push(list);
    }
    for i in 0..s.min(nb) {
        win.load_row(i, i);
        win.load_col(i, i);
    }
    let ok = match b {
        1 => win.eliminate(1),
        2 => win.eliminate(2),
        3 => win.eliminate(3),
        4 => win.eliminate(4),
        5 => win.eliminate(5),
        6 => win.eliminate(6),
        8 => win.eliminate(8),
        _ => win.eliminate(b),
    };
    if !ok {
        return Ok(None);
    }
    let Window { mut bb, mult, .. } = win;
    let per = 2 * b;

    // The border block: dense GTH keeping its last state.
    let mut dpiv = vec![0.0f64; w];
    for p in 0..w.saturating_sub(1) {
        let d: f64 = bb[p * w + p + 1..(p + 1) * w].iter().sum();
        if !(d > 0.0) || !d.is_finite() {
            return Ok(None);
        }
        dpiv[p] = d;
        for i in p + 1..w {
            let f = bb[i * w + p] / d;
            if f == 0.0 {
                continue;
            }
            for j in p + 1..w {
                if j != i {
                    bb[i * w + j] += f * bb[p * w + j];
                }
            }
        }
    }
    let mut pi = vec![0.0f64; n];
    pi[n - 1] = 1.0;
    for p in (0..w.saturating_sub(1)).rev() {
        let mut acc = 0.0;
        for i in p + 1..w {
            acc += pi[nb + i] * bb[i * w + p];
        }
        pi[nb + p] = acc / dpiv[p];
    }
    // Back through the band, last pivot first.
    let (band, border) = pi.split_at_mut(nb);
    for k in (0..nb).rev() {
        let m = &mult[k * per..(k + 1) * per];
        let mut acc = 0.0;
        for t in 0..b.min(nb - 1 - k) {
            acc += band[k + 1 + t] * m[t];
        }
        for rb in 0..w {
            acc += border[rb] * m[b + rb];
        }
        band[k] = acc;
    }
    Ok(Some(pi))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense GTH stationary distribution (reference).
    fn dense_gth(p: &[f64], n: usize) -> Vec<f64> {
        let mut a = p.to_vec();
        let mut d = vec![0.0; n];
        for k in 0..n - 1 {
            d[k] = (k + 1..n).map(|j| a[k * n + j]).sum();
            for i in k + 1..n {
                let f = a[i * n + k] / d[k];
                for j in k + 1..n {
                    if j != i {
                        a[i * n + j] += f * a[k * n + j];
                    }
                }
            }
        }
        let mut pi = vec![0.0; n];
        pi[n - 1] = 1.0;
        for k in (0..n - 1).rev() {
            pi[k] = (k + 1..n).map(|i| pi[i] * a[i * n + k]).sum::<f64>() / d[k];
        }
        let t: f64 = pi.iter().sum();
        pi.iter().map(|x| x / t).collect()
    }

    fn to_csr(p: &[f64], n: usize) -> (Vec<i64>, Vec<i64>, Vec<f64>) {
        let (mut ip, mut ix, mut v) = (vec![0i64], Vec::new(), Vec::new());
        for i in 0..n {
            for j in 0..n {
                if p[i * n + j] != 0.0 {
                    ix.push(j as i64);
                    v.push(p[i * n + j]);
                }
            }
            ip.push(ix.len() as i64);
        }
        (ip, ix, v)
    }

    #[test]
    fn rings_match_dense_gth() {
        let mut seed = 12345u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for &(n, half, eps) in &[(20usize, 1usize, 1.0), (30, 2, 1e-9), (57, 3, 1.0), (64, 4, 1e-15), (40, 4, 1.0)] {
            let mut p = vec![0.0; n * n];
            for i in 0..n {
                for o in 1..=half {
                    let j = (i + o) % n;
                    let x = if i % 7 == 3 { eps } else { 0.2 + rnd() };
                    p[i * n + j] += x;
                    p[j * n + i] += 0.2 + rnd();
                }
                p[i * n + i] += rnd();
            }
            for i in 0..n {
                let t: f64 = p[i * n..(i + 1) * n].iter().sum();
                p[i * n..(i + 1) * n].iter_mut().for_each(|x| *x /= t);
            }
            let (ip, ix, v) = to_csr(&p, n);
            let c = CsrRef { n, indptr: &ip[..], indices: &ix[..], data: &v[..] };
            let b = bandwidth(&c, CYCLIC_MAX_B).unwrap();
            assert_eq!(b, half);
            let mut pi = stationary(&c, b).unwrap().unwrap();
            let t: f64 = pi.iter().sum();
            pi.iter_mut().for_each(|x| *x /= t);
            let r = dense_gth(&p, n);
            for i in 0..n {
                assert!((pi[i] - r[i]).abs() <= 1e-13 * r[i], "n={n} half={half} i={i}: {} vs {}", pi[i], r[i]);
            }
        }
    }

    #[test]
    fn zero_pivot_declines() {
        // Two disjoint rings: two closed classes, a zero pivot appears.
        let n = 40;
        let mut p = vec![0.0; n * n];
        for i in 0..n {
            let j = if i < 20 { (i + 1) % 20 } else { 20 + (i - 19) % 20 };
            p[i * n + j] = 1.0;
        }
        let (ip, ix, v) = to_csr(&p, n);
        let c = CsrRef { n, indptr: &ip[..], indices: &ix[..], data: &v[..] };
        if let Some(b) = bandwidth(&c, CYCLIC_MAX_B) {
            assert!(stationary(&c, b).unwrap().is_none());
        }
    }
}
