//! Banded GTH: the state reduction of [`super::gth`] for chains whose states can be
//! ordered so that every transition `i -> j` stays within a narrow band, `-bl <= pos(j) -
//! pos(i) <= bu` (rings, paths, birth-death and other nearest-neighbour chains, thin grids).
//!
//! Eliminating the states in band order creates fill only inside the band, so the band is
//! stored densely (`m x (bl + 1 + bu)`, row-major) and eliminated in place: `O(m bl bu)`
//! operations with no ordering of the fill, no dynamic structure and no allocation per
//! step. The arithmetic is exactly that of [`super::gth`]: the pivot of state `k` is the
//! sum of its remaining off-diagonal entries (those after it, inside the band) plus its exit
//! mass, and every update adds products of non-negative numbers.
//!
//! The order is the natural one when that is already narrow, otherwise reverse
//! Cuthill–McKee on the pattern of `Q + Q^T` (per connected component, from a
//! pseudo-peripheral state); [`plan`] accepts it when `bl * bu <= BAND_MAX_WORK` and the
//! band takes at most `BAND_MAX_FILL` times the memory of the input.

use super::gth::Reduced;
use crate::error::{Error, Result};

/// Largest `bl * bu` (multiply-adds per eliminated state) for which the band engine is
/// chosen over the sparse one.
pub const BAND_MAX_WORK: usize = 40 * 40;
/// Largest band storage `m (bl + 1 + bu)` relative to the input entries `nnz + m`.
pub const BAND_MAX_FILL: usize = 16;

/// A band order: `order[p]` is the state at position `p`; `None` means the natural order.
pub struct Plan {
    pub order: Option<Vec<usize>>,
    pub bl: usize,
    pub bu: usize,
}

/// Lower and upper bandwidth of the pattern of `red` under the position map `pos`
/// (`None`: identity).
fn bandwidth(red: &Reduced, pos: Option<&[usize]>) -> (usize, usize) {
    let (mut bl, mut bu) = (0usize, 0usize);
    for i in 0..red.m {
        let pi = pos.map_or(i, |p| p[i]);
        let (ix, _) = red.row(i);
        for &j in ix {
            let pj = pos.map_or(j, |p| p[j]);
            if pj > pi {
                bu = bu.max(pj - pi);
            } else {
                bl = bl.max(pi - pj);
            }
        }
    }
    (bl, bu)
}

fn acceptable(red: &Reduced, bl: usize, bu: usize) -> bool {
    let m = red.m;
    bl.saturating_mul(bu) <= BAND_MAX_WORK && m.saturating_mul(bl + bu + 1) <= BAND_MAX_FILL * (red.nnz() + m) + 4096
}

/// Choose a band order for `red`, or `None` when no cheap band is found.
pub fn plan(red: &Reduced) -> Option<Plan> {
    let m = red.m;
    if m == 0 {
        return None;
    }
    let (bl0, bu0) = bandwidth(red, None);
    if bl0.max(bu0) <= 8 {
        return Some(Plan { order: None, bl: bl0, bu: bu0 });
    }
    let order = rcm(red).ok()?;
    let mut pos = vec![0usize; m];
    for (p, &s) in order.iter().enumerate() {
        pos[s] = p;
    }
    let (bl1, bu1) = bandwidth(red, Some(&pos));
    let natural = acceptable(red, bl0, bu0);
    let rcm_ok = acceptable(red, bl1, bu1);
    if rcm_ok && (!natural || bl1 * bu1 < bl0 * bu0) {
        Some(Plan { order: Some(order), bl: bl1, bu: bu1 })
    } else if natural {
        Some(Plan { order: None, bl: bl0, bu: bu0 })
    } else {
        None
    }
}

/// Symmetric pattern of `Q + Q^T` without the diagonal, deduplicated, as CSR.
fn symmetric_pattern(red: &Reduced) -> Result<(Vec<usize>, Vec<usize>)> {
    let m = red.m;
    let mut cnt = vec![0usize; m + 1];
    for i in 0..m {
        let (ix, _) = red.row(i);
        for &j in ix {
            if j != i {
                cnt[i + 1] += 1;
                cnt[j + 1] += 1;
            }
        }
    }
    for i in 0..m {
        cnt[i + 1] += cnt[i];
    }
    let mut fill = cnt.clone();
    let mut adj = crate::mem::filled(cnt[m], 0usize)?;
    for i in 0..m {
        let (ix, _) = red.row(i);
        for &j in ix {
            if j != i {
                adj[fill[i]] = j;
                fill[i] += 1;
                adj[fill[j]] = i;
                fill[j] += 1;
            }
        }
    }
    // deduplicate in place, row by row
    let mut mark = vec![usize::MAX; m];
    let mut ptr = Vec::with_capacity(m + 1);
    ptr.push(0);
    let mut w = 0;
    for i in 0..m {
        for t in cnt[i]..cnt[i + 1] {
            let j = adj[t];
            if mark[j] != i {
                mark[j] = i;
                adj[w] = j;
                w += 1;
            }
        }
        ptr.push(w);
    }
    adj.truncate(w);
    Ok((ptr, adj))
}

/// Breadth-first search from `start` over unnumbered states (`done[v] == false`); the
/// visited states are left in `queue` in BFS order. Returns the eccentricity of `start` and
/// the index in `queue` where its last level begins.
fn bfs(
    ptr: &[usize],
    adj: &[usize],
    start: usize,
    done: &[bool],
    stamp: &mut [u32],
    tag: u32,
    queue: &mut Vec<usize>,
) -> (usize, usize) {
    queue.clear();
    queue.push(start);
    stamp[start] = tag;
    let (mut head, mut ecc, mut last) = (0usize, 0usize, 0usize);
    loop {
        let end = queue.len();
        while head < end {
            let v = queue[head];
            head += 1;
            for &u in &adj[ptr[v]..ptr[v + 1]] {
                if stamp[u] != tag && !done[u] {
                    stamp[u] = tag;
                    queue.push(u);
                }
            }
        }
        if queue.len() == end {
            return (ecc, last);
        }
        ecc += 1;
        last = end;
    }
}

/// Reverse Cuthill–McKee order (`order[p]` = state at position `p`) of the pattern of
/// `Q + Q^T`, component by component, each started from a pseudo-peripheral state
/// (George–Liu).
pub fn rcm(red: &Reduced) -> Result<Vec<usize>> {
    let m = red.m;
    let (ptr, adj) = symmetric_pattern(red)?;
    let deg = |v: usize| ptr[v + 1] - ptr[v];
    let mut done = vec![false; m];
    let mut stamp = vec![0u32; m];
    let mut tag = 0u32;
    let mut queue: Vec<usize> = Vec::new();
    let mut order: Vec<usize> = Vec::with_capacity(m);
    let mut nbr: Vec<usize> = Vec::new();
    for seed in 0..m {
        if done[seed] {
            continue;
        }
        // pseudo-peripheral start: move to a least-degree state of the last BFS level
        // while that increases the eccentricity
        let mut r = seed;
        tag += 1;
        let (mut ecc, mut last) = bfs(&ptr, &adj, r, &done, &mut stamp, tag, &mut queue);
        for _ in 0..8 {
            let x = *queue[last..].iter().min_by_key(|&&v| deg(v)).expect("non-empty level");
            tag += 1;
            let (e, l) = bfs(&ptr, &adj, x, &done, &mut stamp, tag, &mut queue);
            if e <= ecc {
                // keep r; queue now holds x's BFS, which is fine for the component set
                break;
            }
            r = x;
            ecc = e;
            last = l;
        }
        // Cuthill–McKee from r: BFS, neighbours by increasing degree
        let base = order.len();
        order.push(r);
        done[r] = true;
        let mut head = base;
        while head < order.len() {
            let v = order[head];
            head += 1;
            nbr.clear();
            for &u in &adj[ptr[v]..ptr[v + 1]] {
                if !done[u] {
                    done[u] = true;
                    nbr.push(u);
                }
            }
            nbr.sort_unstable_by_key(|&u| (deg(u), u));
            order.extend_from_slice(&nbr);
        }
    }
    order.reverse();
    Ok(order)
}

/// The band on positions `0..m`: `a[p * w + (q + bl - p)]` holds `Q` from position `p` to
/// position `q`, `w = bl + 1 + bu`; exit and right-hand sides permuted alongside.
struct Band {
    m: usize,
    bl: usize,
    bu: usize,
    w: usize,
    a: Vec<f64>,
    exit: Vec<f64>,
    rhs: Vec<f64>,
    c: usize,
}

fn build(red: &Reduced, plan: &Plan, pos: Option<&[usize]>) -> Result<Band> {
    let m = red.m;
    let c = red.c;
    let (bl, bu) = (plan.bl, plan.bu);
    let w = bl + 1 + bu;
    let size = m.checked_mul(w).ok_or_else(|| Error::too_large("P", "band too large"))?;
    let mut a = crate::mem::filled(size, 0.0)
        .map_err(|_| Error::too_large("P", "not enough memory for the band elimination"))?;
    let mut exit = vec![0.0; m];
    let mut rhs = vec![0.0; m * c];
    for s in 0..m {
        let p = pos.map_or(s, |q| q[s]);
        let (ix, vs) = red.row(s);
        let rowp = &mut a[p * w..(p + 1) * w];
        for (&j, &v) in ix.iter().zip(vs) {
            let q = pos.map_or(j, |q| q[j]);
            rowp[q + bl - p] += v;
        }
        exit[p] = red.exit[s];
        rhs[p * c..(p + 1) * c].copy_from_slice(&red.rhs[s * c..(s + 1) * c]);
    }
    Ok(Band { m, bl, bu, w, a, exit, rhs, c })
}

/// Eliminate the first `npiv` positions in place; returns the pivots. Row `p` then holds
/// its multipliers `Q_pk / d_k` left of the diagonal (`k < p`) and its row at elimination
/// time right of it; exit masses and right-hand sides are updated (forward substitution).
fn eliminate(b: &mut Band, npiv: usize) -> Result<Vec<f64>> {
    let (m, bl, bu, w, c) = (b.m, b.bl, b.bu, b.w, b.c);
    let mut d = Vec::with_capacity(npiv);
    for k in 0..npiv {
        if k % 1024 == 0 {
            crate::interrupt::check()?;
        }
        let (head, tail) = b.a.split_at_mut((k + 1) * w);
        let rowk = &head[k * w..];
        let upper = &rowk[bl + 1..];
        let mut s = b.exit[k];
        for &v in upper {
            s += v;
        }
        if !(s > 0.0) || !s.is_finite() {
            return Err(Error::Numerical(format!(
                "zero pivot in state reduction at a state with no path out of the reduced set (pivot {s:e})"
            )));
        }
        d.push(s);
        let inv = 1.0 / s;
        let ek = b.exit[k];
        let iend = (k + bl).min(m - 1);
        for i in k + 1..=iend {
            let rowi = &mut tail[(i - k - 1) * w..(i - k) * w];
            let off = k + bl - i;
            let q = rowi[off];
            if q == 0.0 {
                continue;
            }
            let l = q * inv;
            rowi[off] = l;
            // columns k+1 ..= k+bu of row i (the diagonal slot collects the dropped
            // self-loop and is never read)
            let dst = &mut rowi[off + 1..off + 1 + bu];
            for (x, &u) in dst.iter_mut().zip(upper) {
                *x += l * u;
            }
            b.exit[i] += l * ek;
            for t in 0..c {
                let add = l * b.rhs[k * c + t];
                b.rhs[i * c + t] += add;
            }
        }
    }
    Ok(d)
}

fn positions(order: &[usize]) -> Vec<usize> {
    let mut pos = vec![0usize; order.len()];
    for (p, &s) in order.iter().enumerate() {
        pos[s] = p;
    }
    pos
}

/// Solve the reduced system by banded GTH (all states pivoted): `x`, `m x c` row-major.
pub fn solve(red: &Reduced, plan: &Plan) -> Result<Vec<f64>> {
    let m = red.m;
    let c = red.c;
    let pos = plan.order.as_deref().map(positions);
    let mut b = build(red, plan, pos.as_deref())?;
    let d = eliminate(&mut b, m)?;
    let (bl, bu, w) = (b.bl, b.bu, b.w);
    // back substitution on positions, in place in b.rhs
    for p in (0..m).rev() {
        let jend = (p + bu).min(m - 1);
        let row = &b.a[p * w..(p + 1) * w];
        for t in 0..c {
            let mut s = b.rhs[p * c + t];
            for j in p + 1..=jend {
                s += row[j + bl - p] * b.rhs[j * c + t];
            }
            b.rhs[p * c + t] = s / d[p];
        }
    }
    match plan.order.as_deref() {
        None => Ok(b.rhs),
        Some(order) => {
            let mut x = vec![0.0; m * c];
            for (p, &s) in order.iter().enumerate() {
                x[s * c..(s + 1) * c].copy_from_slice(&b.rhs[p * c..(p + 1) * c]);
            }
            Ok(x)
        }
    }
}

/// Unnormalised stationary weights of an irreducible chain (no exits) by banded GTH with
/// the last position kept: `pi_last = 1`, `pi_p = sum_{i > p} pi_i Q_ip / d_p`.
pub fn stationary_weights(red: &Reduced, plan: &Plan) -> Result<Vec<f64>> {
    let m = red.m;
    let pos = plan.order.as_deref().map(positions);
    let mut b = build(red, plan, pos.as_deref())?;
    eliminate(&mut b, m - 1)?;
    let (bl, w) = (b.bl, b.w);
    let mut pi = vec![0.0; m];
    pi[m - 1] = 1.0;
    for p in (0..m - 1).rev() {
        let iend = (p + bl).min(m - 1);
        let mut s = 0.0;
        for i in p + 1..=iend {
            s += pi[i] * b.a[i * w + p + bl - i];
        }
        pi[p] = s;
    }
    match plan.order.as_deref() {
        None => Ok(pi),
        Some(order) => {
            let mut out = vec![0.0; m];
            for (p, &s) in order.iter().enumerate() {
                out[s] = pi[p];
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gth;
    use super::*;

    /// Deterministic pseudo-random numbers in (0, 1).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
    }

    /// Ring on `m` states, each linked to `i +- 1..=half` (mod m) with random weights (some
    /// rare, down to `rare`), plus exit mass `exit` on every `every`-th state.
    fn ring(m: usize, half: usize, rare: f64, exit: f64, every: usize, seed: u64) -> Reduced {
        let mut g = Lcg(seed);
        let mut rows = vec![Vec::<(usize, f64)>::new(); m];
        for (i, row) in rows.iter_mut().enumerate() {
            for d in 1..=half {
                for j in [(i + d) % m, (i + m - d % m) % m] {
                    if j == i || row.iter().any(|e| e.0 == j) {
                        continue;
                    }
                    let v = if g.next() < 0.2 { rare * g.next() } else { g.next() };
                    row.push((j, v));
                }
            }
        }
        let ex: Vec<f64> = (0..m).map(|i| if every > 0 && i % every == 0 { exit } else { 0.0 }).collect();
        let rhs: Vec<f64> = (0..2 * m).map(|_| g.next()).collect();
        Reduced::from_rows(rows, ex, rhs, 2)
    }

    fn close(a: &[f64], b: &[f64], rtol: f64) {
        assert_eq!(a.len(), b.len());
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= rtol * y.abs(), "entry {k}: {x:e} vs {y:e} (rel {:e})", (x - y).abs() / y.abs());
        }
    }

    #[test]
    fn rings_match_dense_gth() {
        for m in [1usize, 2, 3, 4, 5, 9, 17, 40, 300] {
            for half in [1usize, 2, 4] {
                for (rare, seed) in [(1.0, 1u64), (1e-15, 2)] {
                    let red = ring(m, half, rare, 1e-3, 7, seed + m as u64);
                    let pl = plan(&red).expect("a ring has a narrow band");
                    assert!(m <= 16 || pl.bl.max(pl.bu) <= 4 * half, "m {m} half {half}");
                    let x = solve(&red, &pl).unwrap();
                    let y = gth::solve(ring(m, half, rare, 1e-3, 7, seed + m as u64), true).unwrap();
                    close(&x, &y, 1e-12);
                    if m > 1 {
                        let mut red = ring(m, half, rare, 0.0, 0, seed + m as u64);
                        red.c = 0;
                        red.rhs.clear();
                        let pl = plan(&red).unwrap();
                        let p = stationary_weights(&red, &pl).unwrap();
                        let s: f64 = p.iter().sum();
                        let p: Vec<f64> = p.iter().map(|v| v / s).collect();
                        let mut red2 = ring(m, half, rare, 0.0, 0, seed + m as u64);
                        red2.c = 0;
                        red2.rhs.clear();
                        let q = gth::stationary(red2, true).unwrap();
                        close(&p, &q, 1e-12);
                    }
                }
            }
        }
    }

    #[test]
    fn natural_band_and_components() {
        // a path (natural order is already banded) split in two components by the exits
        let m = 50;
        let mut rows = vec![Vec::new(); m];
        for (i, row) in rows.iter_mut().enumerate() {
            if i > 0 && i != 25 {
                row.push((i - 1, 0.3));
            }
            if i + 1 < m && i != 24 {
                row.push((i + 1, 0.6));
            }
        }
        let exit: Vec<f64> = (0..m).map(|i| if i % 10 == 3 { 0.1 } else { 0.0 }).collect();
        let red = Reduced::from_rows(rows.clone(), exit.clone(), vec![1.0; m], 1);
        let pl = plan(&red).unwrap();
        assert!(pl.order.is_none() && pl.bl == 1 && pl.bu == 1);
        let x = solve(&red, &pl).unwrap();
        let y = gth::solve(Reduced::from_rows(rows, exit, vec![1.0; m], 1), true).unwrap();
        close(&x, &y, 1e-13);
    }

    #[test]
    fn wide_pattern_is_refused_and_zero_pivot_is_an_error() {
        // a complete graph: no narrow band
        let m = 200;
        let rows: Vec<Vec<(usize, f64)>> =
            (0..m).map(|i| (0..m).filter(|&j| j != i).map(|j| (j, 1.0)).collect()).collect();
        let red = Reduced::from_rows(rows, vec![0.0; m], vec![], 0);
        assert!(plan(&red).is_none());
        // a state with no way out of the reduced set
        let rows = vec![vec![(1, 1.0)], vec![]];
        let red = Reduced::from_rows(rows, vec![0.0, 0.0], vec![1.0, 1.0], 1);
        let pl = plan(&red).unwrap();
        assert!(matches!(solve(&red, &pl), Err(Error::Numerical(_))));
    }
}
