//! Markov chains: hitting times, committors, absorption probabilities, stationary
//! distributions, mean first-passage times, closed classes, and the context-conditioned
//! Markov chain (CCMC) of one-layer self-attention.
//!
//! Conventions (see the Python docstrings of `ess.markov` for the user-facing version):
//! * `P` is row-stochastic: `P[i, j]` is the probability of `i -> j`; rows sum to 1 within
//!   [`chain::ROW_SUM_TOL`]. The GTH paths read only the off-diagonal entries; the diagonal
//!   is implied as `1 - sum_{j != i} P[i, j]`.
//! * Hitting time of a set `A`: `h = 0` on `A`, `h = 1 + P h` elsewhere, `+inf` where `A`
//!   is reached with probability < 1.

// `!(x > 0.0)` is deliberate throughout: it is also true for NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod band;
pub mod ccmc;
pub mod chain;
pub mod cyclic;
pub mod gth;
pub mod lu;
pub mod mfpt;

use rayon::prelude::*;

pub use chain::{ChainRef, CsrRef, Graph, ROW_SUM_TOL};
use gth::Reduced;

use crate::error::{Error, Result};

/// Which linear-algebra path solves the reduced systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GTH state reduction (subtraction-free, entrywise accurate). Dense engine for dense
    /// input with more than 10% non-zeros; otherwise the banded engine when the pattern fits
    /// a narrow band (natural or reverse Cuthill–McKee order), else the sparse engine (AMD
    /// order, dense switch).
    Gth,
    /// faer sparse LU on `D - Q` (faster on large well-conditioned chains, not
    /// subtraction-free).
    Lu,
}

impl Method {
    pub fn parse(arg: &str, s: &str) -> Result<Method> {
        match s {
            "gth" | "auto" => Ok(Method::Gth),
            "lu" => Ok(Method::Lu),
            _ => Err(Error::invalid(arg, format!("unknown method {s:?}; expected 'auto', 'gth' or 'lu'"))),
        }
    }
}

fn use_dense(chain: &ChainRef<'_>, m: usize) -> bool {
    match chain {
        ChainRef::Dense { n, p } => {
            let nz = p.iter().filter(|&&v| v > 0.0).count();
            (nz as f64) > 0.1 * (*n as f64) * (*n as f64) || m <= 256
        }
        _ => false,
    }
}

fn check_ids(arg: &str, n: usize, ids: &[i64]) -> Result<Vec<usize>> {
    ids.iter()
        .map(|&t| {
            if t < 0 || t >= n as i64 {
                Err(Error::out_of_range(arg, format!("state {t} is outside [0, {n})")))
            } else {
                Ok(t as usize)
            }
        })
        .collect()
}

/// Reverse breadth-first search: states that can reach a seed, without passing through a
/// `blocked` state (blocked states are neither marked nor expanded unless they are seeds).
fn reach_back(rev: &Graph, seed: &[bool], blocked: &[bool]) -> Vec<bool> {
    let mut seen = seed.to_vec();
    let mut stack: Vec<usize> = (0..rev.n).filter(|&i| seed[i]).collect();
    while let Some(v) = stack.pop() {
        for &u in rev.succ(v) {
            if !seen[u] && !blocked[u] {
                seen[u] = true;
                stack.push(u);
            }
        }
    }
    seen
}

/// Build the reduced problem on `S = {i : loc[i] != MAX}`. Non-`S` states with
/// `class[j] = t + 1` feed right-hand-side column `t`; `ones` adds a column of ones first.
fn build_reduced(
    chain: &ChainRef<'_>,
    loc: &[usize],
    m: usize,
    class: Option<(&[usize], usize)>,
    ones: bool,
) -> Reduced {
    let n = chain.n();
    let nc = class.map(|c| c.1).unwrap_or(0);
    let c = nc + usize::from(ones);
    let mut ptr: Vec<usize> = Vec::with_capacity(m + 1);
    let cap = chain.nnz().min(n.saturating_mul(64));
    let mut idx: Vec<usize> = crate::mem::with_capacity(cap).unwrap_or_default();
    let mut val: Vec<f64> = crate::mem::with_capacity(cap).unwrap_or_default();
    let mut exit = vec![0.0; m];
    let mut rhs = vec![0.0; m * c];
    // mark[lj]: position of column lj in `idx` if it is in the current row (>= start)
    let mut mark = vec![usize::MAX; m];
    ptr.push(0);
    for i in 0..n {
        let li = loc[i];
        if li == usize::MAX {
            continue;
        }
        debug_assert_eq!(li + 1, ptr.len(), "loc must number S in increasing order");
        let start = idx.len();
        if ones {
            rhs[li * c] = 1.0;
        }
        chain.for_row(i, |j, v| {
            if j == i {
                return;
            }
            let lj = loc[j];
            if lj != usize::MAX {
                let p = mark[lj];
                if p != usize::MAX && p >= start {
                    val[p] += v;
                } else {
                    mark[lj] = idx.len();
                    idx.push(lj);
                    val.push(v);
                }
            } else {
                exit[li] += v;
                if let Some((cls, _)) = class {
                    let t = cls[j];
                    if t != 0 {
                        rhs[li * c + usize::from(ones) + t - 1] += v;
                    }
                }
            }
        });
        ptr.push(idx.len());
    }
    Reduced { m, ptr, idx, val, exit, rhs, c }
}

fn run(chain: &ChainRef<'_>, red: Reduced, method: Method) -> Result<Vec<f64>> {
    let x = match method {
        Method::Lu => lu::solve(red)?,
        Method::Gth => {
            let dense = use_dense(chain, red.m);
            gth::solve(red, dense)?
        }
    };
    // Every unknown of a reduced system is finite in exact arithmetic; inf or NaN means the
    // answer itself lies beyond the float64 range (times of order 1 / p for transition
    // probabilities p near the underflow threshold), which must not be returned as a number.
    if x.iter().any(|v| !v.is_finite()) {
        return Err(Error::Numerical(
            "the result exceeds the float64 range (about 1.8e308): transition probabilities this small \
             make expected times overflow; rescale the chain or merge its rare states"
                .into(),
        ));
    }
    Ok(x)
}

/// Refuse a NaN in a result (an overflowed intermediate), naming what was computed.
fn no_nan(what: &str, x: Vec<f64>) -> Result<Vec<f64>> {
    if x.iter().any(|v| v.is_nan()) {
        return Err(Error::Numerical(format!(
            "{what} exceed the float64 range (about 1.8e308) somewhere: transition probabilities this small make \
             expected times overflow; rescale the chain or merge its rare states"
        )));
    }
    Ok(x)
}

/// Expected hitting times of `target` from every state (`0` on the target, `inf` where the
/// target is reached with probability < 1). Validates `chain`.
pub fn hitting_times(chain: &ChainRef<'_>, target: &[i64], method: Method) -> Result<Vec<f64>> {
    chain.validate("P")?;
    hitting_times_validated(chain, target, method, None)
}

fn hitting_times_validated(
    chain: &ChainRef<'_>,
    target: &[i64],
    method: Method,
    graphs: Option<(&Graph, &Graph)>,
) -> Result<Vec<f64>> {
    let n = chain.n();
    if target.is_empty() {
        return Err(Error::invalid("target", "the target set is empty"));
    }
    let tgt = check_ids("target", n, target)?;
    let mut is_t = vec![false; n];
    for &t in &tgt {
        is_t[t] = true;
    }
    let owned;
    let (g, rev) = match graphs {
        Some(x) => x,
        None => {
            let g = chain.graph();
            let rev = g.reverse();
            owned = (g, rev);
            (&owned.0, &owned.1)
        }
    };
    let _ = g;
    let none = vec![false; n];
    let reach_a = reach_back(rev, &is_t, &none);
    let bad_seed: Vec<bool> = reach_a.iter().map(|&r| !r).collect();
    // states that can get (without passing through the target) to a state that cannot
    // reach the target: positive probability of never hitting it
    let bad = reach_back(rev, &bad_seed, &is_t);
    let mut loc = vec![usize::MAX; n];
    let mut m = 0;
    for i in 0..n {
        if !is_t[i] && !bad[i] {
            loc[i] = m;
            m += 1;
        }
    }
    let red = build_reduced(chain, &loc, m, None, true);
    let x = run(chain, red, method)?;
    let mut h = vec![0.0; n];
    for i in 0..n {
        if is_t[i] {
            h[i] = 0.0;
        } else if loc[i] != usize::MAX {
            h[i] = x[loc[i]];
        } else {
            h[i] = f64::INFINITY;
        }
    }
    Ok(h)
}

/// Absorption probabilities: `labels[i] = s` puts state `i` in set `s` (`-1`: in no set).
/// Returns `n x nsets` row-major: probability that the first set entered is `s`.
/// Rows of states in a set are unit vectors; rows may sum to less than one where the chain
/// can avoid every set forever.
pub fn absorption_probabilities(
    chain: &ChainRef<'_>,
    labels: &[i64],
    nsets: usize,
    method: Method,
) -> Result<Vec<f64>> {
    chain.validate("P")?;
    absorption_validated(chain, labels, nsets, method)
}

fn absorption_validated(chain: &ChainRef<'_>, labels: &[i64], nsets: usize, method: Method) -> Result<Vec<f64>> {
    let n = chain.n();
    if labels.len() != n {
        return Err(Error::shape("sets", format!("labels must have length n = {n}, got {}", labels.len())));
    }
    // the n x nsets result and the per-set bookkeeping
    crate::mem::gate(
        "sets",
        (n as u64).checked_add(1).and_then(|r| r.checked_mul(nsets as u64)).and_then(|c| c.checked_mul(8)),
        &format!("absorption probabilities into {nsets} target sets of {n} states"),
    )?;
    let mut class = vec![0usize; n];
    let mut count = vec![0usize; nsets];
    for (i, &l) in labels.iter().enumerate() {
        if l >= 0 {
            if l as usize >= nsets {
                return Err(Error::out_of_range("sets", format!("label {l} outside [0, {nsets})")));
            }
            class[i] = l as usize + 1;
            count[l as usize] += 1;
        }
    }
    if let Some(s) = count.iter().position(|&c| c == 0) {
        return Err(Error::invalid("sets", format!("set {s} is empty")));
    }
    let is_t: Vec<bool> = class.iter().map(|&c| c != 0).collect();
    let rev = chain.graph().reverse();
    let none = vec![false; n];
    let reach = reach_back(&rev, &is_t, &none);
    let mut loc = vec![usize::MAX; n];
    let mut m = 0;
    for i in 0..n {
        if !is_t[i] && reach[i] {
            loc[i] = m;
            m += 1;
        }
    }
    let red = build_reduced(chain, &loc, m, Some((&class, nsets)), false);
    let x = run(chain, red, method)?;
    let mut out = vec![0.0; n * nsets];
    for i in 0..n {
        if class[i] != 0 {
            out[i * nsets + class[i] - 1] = 1.0;
        } else if loc[i] != usize::MAX {
            out[i * nsets..(i + 1) * nsets].copy_from_slice(&x[loc[i] * nsets..(loc[i] + 1) * nsets]);
        }
    }
    Ok(out)
}

/// Forward committor `q+[i] = P(hit B before A | X_0 = i)` (0 on `A`, 1 on `B`).
pub fn committor_forward(chain: &ChainRef<'_>, a: &[i64], b: &[i64], method: Method) -> Result<Vec<f64>> {
    chain.validate("P")?;
    committor_validated(chain, a, b, method)
}

fn committor_validated(chain: &ChainRef<'_>, a: &[i64], b: &[i64], method: Method) -> Result<Vec<f64>> {
    let n = chain.n();
    if a.is_empty() {
        return Err(Error::invalid("A", "the set A is empty"));
    }
    if b.is_empty() {
        return Err(Error::invalid("B", "the set B is empty"));
    }
    let a = check_ids("A", n, a)?;
    let b = check_ids("B", n, b)?;
    let mut labels = vec![-1i64; n];
    for &i in &a {
        labels[i] = 0;
    }
    for &i in &b {
        if labels[i] == 0 {
            return Err(Error::invalid("B", format!("state {i} is in both A and B")));
        }
        labels[i] = 1;
    }
    let p = absorption_validated(chain, &labels, 2, method)?;
    Ok((0..n).map(|i| p[i * 2 + 1]).collect())
}

/// SCC labels of the graph with edges `P[i, j] > threshold` (`i != j`), whether each
/// component is closed (no such edge leaving it), and the component count.
pub fn classes(chain: &ChainRef<'_>, threshold: f64) -> Result<(Vec<usize>, Vec<bool>, usize)> {
    chain.validate("P")?;
    if !(threshold >= 0.0) || !threshold.is_finite() {
        return Err(Error::invalid("threshold", format!("must be finite and >= 0, got {threshold}")));
    }
    let g = if threshold == 0.0 { chain.graph() } else { thresholded_graph(chain, threshold) };
    let (lab, k) = g.scc()?;
    let closed = closed_flags(&g, &lab, k);
    Ok((lab, closed, k))
}

fn thresholded_graph(chain: &ChainRef<'_>, threshold: f64) -> Graph {
    let n = chain.n();
    let mut indptr = vec![0usize];
    let mut indices = Vec::new();
    let mut mark = vec![usize::MAX; n];
    for i in 0..n {
        chain.for_row(i, |j, v| {
            if j != i && v > threshold && mark[j] != i {
                mark[j] = i;
                indices.push(j);
            }
        });
        indptr.push(indices.len());
    }
    Graph { n, indptr, indices }
}

fn closed_flags(g: &Graph, lab: &[usize], k: usize) -> Vec<bool> {
    let mut closed = vec![true; k];
    for i in 0..g.n {
        for &j in g.succ(i) {
            if lab[j] != lab[i] {
                closed[lab[i]] = false;
            }
        }
    }
    closed
}

/// Stationary distribution (GTH). Requires exactly one closed class; transient states
/// get 0. Entrywise accurate (relative), even across many decades.
pub fn stationary_distribution(chain: &ChainRef<'_>) -> Result<Vec<f64>> {
    chain.validate("P")?;
    stationary_validated(chain)
}

fn stationary_validated(chain: &ChainRef<'_>) -> Result<Vec<f64>> {
    let n = chain.n();
    // Narrow cyclic band (rings, banded chains): streaming GTH straight from the CSR; it
    // declines (None) unless every pivot is positive, i.e. unless there is one closed class.
    let fast = match chain {
        ChainRef::Csr32(c) => cyclic::bandwidth(c, cyclic::CYCLIC_MAX_B).map(|b| cyclic::stationary(c, b)),
        ChainRef::Csr64(c) => cyclic::bandwidth(c, cyclic::CYCLIC_MAX_B).map(|b| cyclic::stationary(c, b)),
        ChainRef::Dense { .. } => None,
    };
    if let Some(pi) = fast.transpose()?.flatten() {
        return gth::normalise(pi);
    }
    let g = chain.graph();
    let (lab, k) = g.scc()?;
    let closed = closed_flags(&g, &lab, k);
    let nclosed = closed.iter().filter(|&&c| c).count();
    if nclosed != 1 {
        return Err(Error::invalid(
            "P",
            format!(
                "the chain has {nclosed} closed classes, so its stationary distribution is not unique; \
                 analyse each closed class separately (ess.markov.closed_classes)"
            ),
        ));
    }
    let cls = closed.iter().position(|&c| c).unwrap_or(0);
    let mut loc = vec![usize::MAX; n];
    let mut m = 0;
    for i in 0..n {
        if lab[i] == cls {
            loc[i] = m;
            m += 1;
        }
    }
    let red = build_reduced(chain, &loc, m, None, false);
    let pi_c = gth::stationary(red, use_dense(chain, m))?;
    let mut pi = vec![0.0; n];
    for i in 0..n {
        if loc[i] != usize::MAX {
            pi[i] = pi_c[loc[i]];
        }
    }
    Ok(pi)
}

/// Largest chain accepted by the dense all-pairs routines.
pub const MFPT_MAX_N: usize = 20_000;

/// All-pairs mean first-passage times, `n x n` row-major, `M[i, i] = 0`, `inf` where `j` is
/// not reached with probability one. Irreducible chains: recursive censoring, `O(n^3)`;
/// otherwise one GTH solve per target (in parallel).
pub fn mean_first_passage_times(chain: &ChainRef<'_>) -> Result<Vec<f64>> {
    chain.validate("P")?;
    let n = chain.n();
    if n > MFPT_MAX_N {
        return Err(Error::too_large("P", format!("all-pairs first-passage times are dense n x n; n = {n} exceeds {MFPT_MAX_N}; use hitting_times per target")));
    }
    let g = chain.graph();
    let (_, k) = g.scc()?;
    if k == 1 {
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            chain.for_row(i, |j, v| {
                if j != i {
                    a[j * n + i] += v;
                }
            });
        }
        let b = vec![1.0; n];
        return no_nan("mean first-passage times", mfpt::all_pairs(&a, &b, n)?);
    }
    let rev = g.reverse();
    let cols: Vec<Result<Vec<f64>>> = (0..n)
        .into_par_iter()
        .map(|j| hitting_times_validated(chain, &[j as i64], Method::Gth, Some((&g, &rev))))
        .collect();
    let mut out = vec![0.0; n * n];
    for (j, c) in cols.into_iter().enumerate() {
        let c = c?;
        for i in 0..n {
            out[i * n + j] = c[i];
        }
    }
    Ok(out)
}

/// Kemeny constant `K = sum_j pi_j M[i, j]` (the same for every `i`) of an irreducible
/// chain, from the all-pairs first-passage times (row `i = 0`).
pub fn kemeny_constant(chain: &ChainRef<'_>) -> Result<f64> {
    chain.validate("P")?;
    let n = chain.n();
    if n > MFPT_MAX_N {
        return Err(Error::too_large(
            "P",
            format!("the Kemeny constant uses dense n x n first-passage times; n = {n} exceeds {MFPT_MAX_N}"),
        ));
    }
    // irreducibility first (cheap), so reducible chains fail before the O(n^3) work
    let pi = stationary_validated(chain)?;
    if pi.contains(&0.0) {
        return Err(Error::invalid(
            "P",
            "the Kemeny constant needs an irreducible chain (this one has transient states)",
        ));
    }
    let m = mean_first_passage_times(chain)?;
    let mut k = 0.0;
    for j in 0..n {
        k += pi[j] * m[j];
    }
    if !k.is_finite() {
        return Err(Error::Numerical(
            "the Kemeny constant exceeds the float64 range (about 1.8e308): transition probabilities this small \
             make expected times overflow"
                .into(),
        ));
    }
    Ok(k)
}

/// Time-reversed chain `R[i, j] = pi_j P[j, i] / pi_i` as CSR (`indptr`, `indices`, `data`).
/// Requires `pi > 0` everywhere (an irreducible chain).
pub fn reversed(chain: &ChainRef<'_>, pi: &[f64]) -> Result<(Vec<usize>, Vec<usize>, Vec<f64>)> {
    let n = chain.n();
    if let Some(i) = pi.iter().position(|&p| !(p > 0.0)) {
        return Err(Error::invalid("P", format!("the time-reversed chain needs an irreducible chain (pi[{i}] = 0)")));
    }
    let mut cnt = vec![0usize; n + 1];
    for i in 0..n {
        chain.for_row(i, |j, _| cnt[j + 1] += 1);
    }
    for i in 0..n {
        cnt[i + 1] += cnt[i];
    }
    let mut pos = cnt.clone();
    let mut idx = vec![0usize; cnt[n]];
    let mut dat = vec![0.0; cnt[n]];
    for i in 0..n {
        chain.for_row(i, |j, v| {
            idx[pos[j]] = i;
            dat[pos[j]] = pi[i] * v / pi[j];
            pos[j] += 1;
        });
    }
    Ok((cnt, idx, dat))
}

/// Backward committor `q-[i] = P(last in A rather than B | X_0 = i)` of the stationary
/// process: the forward committor `B -> A` of the time-reversed chain.
pub fn committor_backward(chain: &ChainRef<'_>, a: &[i64], b: &[i64], method: Method) -> Result<Vec<f64>> {
    chain.validate("P")?;
    let pi = stationary_validated(chain)?;
    let (ip, ix, d) = reversed(chain, &pi)?;
    let ip: Vec<i64> = ip.into_iter().map(|x| x as i64).collect();
    let ix: Vec<i64> = ix.into_iter().map(|x| x as i64).collect();
    let rc = ChainRef::Csr64(CsrRef { n: chain.n(), indptr: &ip, indices: &ix, data: &d });
    committor_validated(&rc, b, a, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(n: usize) -> Vec<f64> {
        let mut p = vec![0.0; n * n];
        for i in 0..n {
            p[i * n + (i + 1) % n] += 0.5;
            p[i * n + (i + n - 1) % n] += 0.5;
        }
        p
    }

    #[test]
    fn cycle_hitting_times_dense_sparse_lu() {
        let n = 300; // > 2 * NB: exercises AMD, the sparse engine and the dense switch
        let p = cycle(n);
        let dense = ChainRef::Dense { n, p: &p };
        let mut ip = vec![0i64];
        let mut ix = Vec::new();
        let mut d = Vec::new();
        for i in 0..n {
            for j in 0..n {
                if p[i * n + j] > 0.0 {
                    ix.push(j as i64);
                    d.push(p[i * n + j]);
                }
            }
            ip.push(ix.len() as i64);
        }
        let csr = ChainRef::Csr64(CsrRef { n, indptr: &ip, indices: &ix, data: &d });
        for (c, m) in [(&dense, Method::Gth), (&csr, Method::Gth), (&csr, Method::Lu)] {
            let h = hitting_times(c, &[0], m).unwrap();
            for k in 0..n {
                let want = (k * (n - k)) as f64;
                assert!((h[k] - want).abs() <= 1e-10 * want.max(1.0), "k={k} got {} want {want}", h[k]);
            }
        }
        let pi = stationary_distribution(&csr).unwrap();
        for v in pi {
            assert!((v * n as f64 - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn mfpt_two_state_and_errors() {
        let p = [0.7, 0.3, 1e-12, 1.0 - 1e-12];
        let c = ChainRef::Dense { n: 2, p: &p };
        let m = mean_first_passage_times(&c).unwrap();
        assert_eq!(m[0], 0.0);
        assert!((m[1] - 1.0 / 0.3).abs() < 1e-14 / 0.3);
        assert!((m[2] - 1e12).abs() < 1e-3);
        assert!(matches!(hitting_times(&c, &[], Method::Gth), Err(Error::InvalidArgument { .. })));
        assert!(matches!(hitting_times(&c, &[2], Method::Gth), Err(Error::OutOfRange { .. })));
        let bad = [0.5, 0.6, 0.5, 0.5];
        let c = ChainRef::Dense { n: 2, p: &bad };
        assert!(matches!(hitting_times(&c, &[0], Method::Gth), Err(Error::NotStochastic { .. })));
    }

    #[test]
    fn scc_iterative_long_path() {
        // a 200000-state path with a back edge: one SCC, no recursion depth issues
        let n = 200_000;
        let mut indptr = vec![0usize];
        let mut indices = Vec::new();
        for i in 0..n {
            indices.push((i + 1) % n);
            indptr.push(indices.len());
        }
        let g = Graph { n, indptr, indices };
        let (lab, k) = g.scc().unwrap();
        assert_eq!(k, 1);
        assert!(lab.iter().all(|&l| l == 0));
    }
}
