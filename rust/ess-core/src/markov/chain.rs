//! Transition matrices as the core sees them: borrowed dense (row-major) or CSR arrays,
//! validated once, then read row by row. Nothing is copied at the boundary.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Absolute tolerance on row sums: `|sum_j P[i, j] - 1| <= ROW_SUM_TOL` for every row.
pub const ROW_SUM_TOL: f64 = 1e-9;

/// Index types of CSR arrays (scipy uses int32 or int64).
pub trait Index: Copy + Send + Sync + 'static {
    fn to_i64(self) -> i64;
}
impl Index for i32 {
    #[inline]
    fn to_i64(self) -> i64 {
        self as i64
    }
}
impl Index for i64 {
    #[inline]
    fn to_i64(self) -> i64 {
        self
    }
}

/// A borrowed CSR matrix (`indptr`, `indices`, `data`), as in `scipy.sparse.csr_array`.
#[derive(Clone, Copy)]
pub struct CsrRef<'a, I: Index> {
    pub n: usize,
    pub indptr: &'a [I],
    pub indices: &'a [I],
    pub data: &'a [f64],
}

/// A transition matrix: dense row-major `n x n`, or CSR with 32- or 64-bit indices.
#[derive(Clone, Copy)]
pub enum ChainRef<'a> {
    Dense { n: usize, p: &'a [f64] },
    Csr32(CsrRef<'a, i32>),
    Csr64(CsrRef<'a, i64>),
}

impl<'a> ChainRef<'a> {
    pub fn n(&self) -> usize {
        match self {
            ChainRef::Dense { n, .. } => *n,
            ChainRef::Csr32(c) => c.n,
            ChainRef::Csr64(c) => c.n,
        }
    }

    pub fn is_dense(&self) -> bool {
        matches!(self, ChainRef::Dense { .. })
    }

    /// Number of stored entries (dense: `n^2`).
    pub fn nnz(&self) -> usize {
        match self {
            ChainRef::Dense { n, .. } => n * n,
            ChainRef::Csr32(c) => c.data.len(),
            ChainRef::Csr64(c) => c.data.len(),
        }
    }

    /// Call `f(j, p)` for every stored entry of row `i` with `p > 0` (explicit zeros skipped;
    /// duplicates in CSR are passed as they are and must be summed by the caller).
    /// Only valid after [`ChainRef::validate`].
    #[inline]
    pub fn for_row(&self, i: usize, mut f: impl FnMut(usize, f64)) {
        match self {
            ChainRef::Dense { n, p } => {
                for (j, &v) in p[i * n..(i + 1) * n].iter().enumerate() {
                    if v > 0.0 {
                        f(j, v)
                    }
                }
            }
            ChainRef::Csr32(c) => csr_row(c, i, f),
            ChainRef::Csr64(c) => csr_row(c, i, f),
        }
    }

    /// Check shape, finiteness, non-negativity and row sums; `arg` names the matrix.
    pub fn validate(&self, arg: &str) -> Result<()> {
        let n = self.n();
        if n == 0 {
            return Err(Error::shape(arg, "the chain has no states (n = 0)"));
        }
        match self {
            ChainRef::Dense { n, p } => {
                if p.len() != n * n {
                    return Err(Error::shape(arg, format!("expected {n} x {n} = {} entries, got {}", n * n, p.len())));
                }
                for i in 0..*n {
                    let row = &p[i * n..(i + 1) * n];
                    let mut s = 0.0;
                    for (j, &v) in row.iter().enumerate() {
                        check_entry(arg, i, j, v, i * n + j)?;
                        s += v;
                    }
                    check_row_sum(arg, i, s, *n)?;
                }
                Ok(())
            }
            ChainRef::Csr32(c) => validate_csr(arg, c),
            ChainRef::Csr64(c) => validate_csr(arg, c),
        }
    }

    /// Adjacency (positive off-diagonal entries, deduplicated) as CSR of `usize`.
    pub fn graph(&self) -> Graph {
        let n = self.n();
        let mut indptr = Vec::with_capacity(n + 1);
        indptr.push(0usize);
        let mut indices: Vec<usize> =
            crate::mem::with_capacity(self.nnz().min(n.saturating_mul(64))).unwrap_or_default();
        let mut mark = vec![usize::MAX; n];
        for i in 0..n {
            self.for_row(i, |j, _| {
                if j != i && mark[j] != i {
                    mark[j] = i;
                    indices.push(j);
                }
            });
            indptr.push(indices.len());
        }
        Graph { n, indptr, indices }
    }
}

#[inline]
fn csr_row<I: Index>(c: &CsrRef<'_, I>, i: usize, mut f: impl FnMut(usize, f64)) {
    let (a, b) = (c.indptr[i].to_i64() as usize, c.indptr[i + 1].to_i64() as usize);
    for k in a..b {
        let v = c.data[k];
        if v > 0.0 {
            f(c.indices[k].to_i64() as usize, v)
        }
    }
}

#[inline(always)]
fn check_entry(arg: &str, i: usize, j: usize, v: f64, flat: usize) -> Result<()> {
    if !v.is_finite() {
        return Err(Error::NonFinite { arg: arg.to_string(), index: flat });
    }
    if v < 0.0 {
        return Err(Error::not_stochastic(arg, format!("negative transition probability P[{i}, {j}] = {v:e}")));
    }
    Ok(())
}

fn check_row_sum(arg: &str, i: usize, s: f64, _n: usize) -> Result<()> {
    if (s - 1.0).abs() > ROW_SUM_TOL {
        if s == 0.0 {
            return Err(Error::not_stochastic(
                arg,
                format!(
                    "row {i} has no outgoing transitions (sum 0); an absorbing state needs an explicit P[{i}, {i}] = 1"
                ),
            ));
        }
        return Err(Error::not_stochastic(
            arg,
            format!("row {i} sums to {s:.17} (must be 1 within {ROW_SUM_TOL:e}; renormalise the rows)"),
        ));
    }
    Ok(())
}

fn validate_csr<I: Index>(arg: &str, c: &CsrRef<'_, I>) -> Result<()> {
    let n = c.n;
    if c.indptr.len() != n + 1 {
        return Err(Error::shape(arg, format!("indptr must have n + 1 = {} entries, got {}", n + 1, c.indptr.len())));
    }
    if c.indices.len() != c.data.len() {
        return Err(Error::shape(
            arg,
            format!("indices ({}) and data ({}) must have the same length", c.indices.len(), c.data.len()),
        ));
    }
    if c.indptr[0].to_i64() != 0 || c.indptr[n].to_i64() != c.data.len() as i64 {
        return Err(Error::invalid(arg, "indptr must start at 0 and end at len(data) (not a valid CSR matrix)"));
    }
    // The structure first (a decreasing indptr makes every later row meaningless, so it must
    // not be reported as a bad row sum), then the entries; rows are checked in parallel and
    // the error reported is that of the first bad row.
    let len = c.data.len() as i64;
    let bad_ptr = (0..n).into_par_iter().with_min_len(4096).find_first(|&i| {
        let (a, b) = (c.indptr[i].to_i64(), c.indptr[i + 1].to_i64());
        b < a || a < 0 || b > len
    });
    if let Some(i) = bad_ptr {
        return Err(Error::invalid(
            arg,
            format!(
                "indptr is decreasing or out of range at row {i} (indptr[{i}] = {}, indptr[{}] = {}; not a valid CSR matrix)",
                c.indptr[i].to_i64(),
                i + 1,
                c.indptr[i + 1].to_i64()
            ),
        ));
    }
    let check_row = |i: usize| -> Result<()> {
        let (a, b) = (c.indptr[i].to_i64(), c.indptr[i + 1].to_i64());
        let mut s = 0.0;
        for k in a as usize..b as usize {
            let j = c.indices[k].to_i64();
            if j < 0 || j >= n as i64 {
                return Err(Error::out_of_range(arg, format!("column index {j} in row {i} is outside [0, {n})")));
            }
            check_entry(arg, i, j as usize, c.data[k], k)?;
            s += c.data[k];
        }
        check_row_sum(arg, i, s, n)
    };
    match (0..n).into_par_iter().with_min_len(1024).map(check_row).find_first(|r| r.is_err()) {
        Some(e) => e,
        None => Ok(()),
    }
}

/// Directed graph in CSR form (no weights).
pub struct Graph {
    pub n: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<usize>,
}

impl Graph {
    #[inline]
    pub fn succ(&self, i: usize) -> &[usize] {
        &self.indices[self.indptr[i]..self.indptr[i + 1]]
    }

    pub fn reverse(&self) -> Graph {
        let n = self.n;
        let mut cnt = vec![0usize; n + 1];
        for &j in &self.indices {
            cnt[j + 1] += 1;
        }
        for i in 0..n {
            cnt[i + 1] += cnt[i];
        }
        let mut pos = cnt.clone();
        let mut idx = vec![0usize; self.indices.len()];
        for i in 0..n {
            for &j in self.succ(i) {
                idx[pos[j]] = i;
                pos[j] += 1;
            }
        }
        Graph { n, indptr: cnt, indices: idx }
    }

    /// States from which some state with `seed[s] == true` is reachable (including seeds),
    /// by breadth-first search on the reversed graph `rev`.
    pub fn can_reach(rev: &Graph, seed: &[bool]) -> Vec<bool> {
        let mut seen = seed.to_vec();
        let mut stack: Vec<usize> = (0..rev.n).filter(|&i| seed[i]).collect();
        while let Some(v) = stack.pop() {
            for &u in rev.succ(v) {
                if !seen[u] {
                    seen[u] = true;
                    stack.push(u);
                }
            }
        }
        seen
    }

    /// Strongly connected components through [`crate::graph::strongly_connected_components`]
    /// (iterative, `O(n + m)`). Returns `(labels, count)`; labels are numbered sinks first
    /// (a component's successors have smaller labels).
    pub fn scc(&self) -> Result<(Vec<usize>, usize)> {
        let indices: Vec<u32> = self
            .indices
            .iter()
            .map(|&j| u32::try_from(j).map_err(|_| Error::too_large("P", "more than 2^32 states")))
            .collect::<Result<_>>()?;
        let (count, labels) = crate::graph::strongly_connected_components(&self.indptr, &indices)?;
        Ok((labels.into_iter().map(|x| x as usize).collect(), count))
    }
}
