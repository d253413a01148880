//! Strongly connected components (SCC), the condensation DAG and reachability.
//!
//! # Algorithm
//!
//! Pearce's space-efficient variant of Tarjan's algorithm ("A space-efficient algorithm
//! for finding strongly connected components", IPL 2016), written iteratively: an explicit
//! call stack of `(node, next edge position)` replaces recursion, so a path of 10^7 nodes
//! needs no program stack. One `u32` per node (`rindex`) serves as DFS index, low-link and
//! finally component number; the root flag lives in the call-stack frame. `O(n + m)` time.
//!
//! # Numbering
//!
//! Components are numbered `0..n_components` in the order the DFS completes them, which
//! is a reverse topological order of the condensation: **sinks first**. For every edge
//! `u -> v` with `labels[u] != labels[v]`, `labels[u] > labels[v]`. Hence
//! `n_components - 1, ..., 1, 0` is a topological order (sources first), and component
//! `a` can reach component `b != a` only if `a > b`.

use rayon::prelude::*;

use super::csr::Csr;
use crate::error::{Error, Result};

/// Strongly connected components of the graph given in CSR form.
///
/// `indptr` (length `n_nodes + 1`) and `indices` describe the successors of each node:
/// `indices[indptr[v]..indptr[v + 1]]`. Returns `(n_components, labels)` with
/// `labels[v]` in `0..n_components`, numbered sinks first (see the module docs: for an
/// edge `u -> v` across components, `labels[u] > labels[v]`).
///
/// Reusable from other modules (e.g. Markov-chain transition graphs): build the CSR with
/// [`super::csr_from_edges`] or pass your own arrays. Errors: invalid CSR (`Shape`,
/// `InvalidValue`, `OutOfRange`), more than `2^32 - 2` nodes (`TooLarge`).
pub fn strongly_connected_components(indptr: &[usize], indices: &[u32]) -> Result<(usize, Vec<u32>)> {
    if indptr.is_empty() {
        return Err(Error::shape("indptr", "must have n_nodes + 1 >= 1 entries"));
    }
    let n = indptr.len() - 1;
    if n >= u32::MAX as usize {
        return Err(Error::too_large("indptr", format!("{n} nodes exceed the limit of 2^32 - 2")));
    }
    Csr::validate(n, indptr, indices)?;
    Ok(scc_unchecked(indptr, indices))
}

/// [`strongly_connected_components`] on a [`Csr`] built by this crate (already valid).
pub fn scc_csr(g: &Csr) -> (usize, Vec<u32>) {
    scc_unchecked(&g.indptr, &g.indices)
}

/// Hint the cache about the nodes the DFS is about to look at: the state of every
/// successor of `v` (and where its row starts). On large random graphs the search is
/// bound by memory latency; issuing these loads together overlaps the misses.
#[inline(always)]
fn prefetch_row(indptr: &[usize], indices: &[u32], rindex: &[u32], v: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for &w in &indices[indptr[v]..indptr[v + 1]] {
            // SAFETY: prefetch is a hint; w < n = rindex.len() = indptr.len() - 1 (valid CSR).
            unsafe {
                _mm_prefetch(rindex.as_ptr().add(w as usize) as *const i8, _MM_HINT_T0);
                _mm_prefetch(indptr.as_ptr().add(w as usize) as *const i8, _MM_HINT_T0);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (indptr, indices, rindex, v);
    }
}

/// Pearce's iterative algorithm on a CSR known to be valid.
pub(crate) fn scc_unchecked(indptr: &[usize], indices: &[u32]) -> (usize, Vec<u32>) {
    let n = indptr.len() - 1;
    if n == 0 {
        return (0, Vec::new());
    }
    // rindex[v]: 0 = unvisited; 1.. = DFS index / low-link while active; once v's
    // component is complete, its number counted down from n - 1 (always larger than
    // any active index, so completed nodes never lower a low-link).
    let mut rindex: Vec<u32> = vec![0; n];
    let mut index: u32 = 1;
    let mut c: u32 = (n - 1) as u32;
    let mut stack: Vec<u32> = Vec::new();
    // Call stack frames: node, next edge position, and the node's "root" flag (kept in
    // the frame rather than in a per-node array: it only matters while the node is active).
    struct Frame {
        v: u32,
        root: bool,
        pos: usize,
    }
    let mut call: Vec<Frame> = Vec::new();

    for start in 0..n {
        if rindex[start] != 0 {
            continue;
        }
        rindex[start] = index;
        index += 1;
        prefetch_row(indptr, indices, &rindex, start);
        call.push(Frame { v: start as u32, root: true, pos: indptr[start] });
        while let Some(top) = call.last_mut() {
            let v = top.v as usize;
            let end = indptr[v + 1];
            let mut pos = top.pos;
            let mut child = u32::MAX;
            let mut rv = rindex[v];
            while pos < end {
                let w = indices[pos];
                pos += 1;
                let rw = rindex[w as usize];
                if rw == 0 {
                    child = w;
                    break;
                }
                if rw < rv {
                    rv = rw;
                    top.root = false;
                }
            }
            rindex[v] = rv;
            top.pos = pos;
            if child != u32::MAX {
                let w = child as usize;
                rindex[w] = index;
                index += 1;
                prefetch_row(indptr, indices, &rindex, w);
                call.push(Frame { v: child, root: true, pos: indptr[w] });
                continue;
            }
            // v is finished.
            let is_root = top.root;
            call.pop();
            if is_root {
                index -= 1;
                while let Some(&w) = stack.last() {
                    if rv > rindex[w as usize] {
                        break;
                    }
                    stack.pop();
                    rindex[w as usize] = c;
                    index -= 1;
                }
                rindex[v] = c;
                c = c.wrapping_sub(1);
            } else {
                stack.push(v as u32);
            }
            if let Some(parent) = call.last_mut() {
                let p = parent.v as usize;
                if rindex[v] < rindex[p] {
                    rindex[p] = rindex[v];
                    parent.root = false;
                }
            }
        }
    }
    let n_comp = (n as u32 - 1).wrapping_sub(c) as usize;
    let top = (n - 1) as u32;
    rindex.par_iter_mut().for_each(|r| *r = top - *r);
    (n_comp, rindex)
}

/// The condensation of a graph: one node per SCC, deduplicated edges between different
/// SCCs, in CSR form over component numbers (numbered sinks first, so every edge
/// `a -> b` has `a > b`; targets of a row are sorted increasingly).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condensation {
    pub n_components: usize,
    pub labels: Vec<u32>,
    /// Number of nodes in each component.
    pub sizes: Vec<u32>,
    /// CSR of the component DAG.
    pub dag: Csr,
}

impl Condensation {
    /// Compute SCCs and the condensation DAG of `g`.
    pub fn new(g: &Csr) -> Self {
        let (nc, labels) = scc_csr(g);
        Self::from_labels(g, nc, labels)
    }

    /// Condensation from precomputed SCC labels (numbered sinks first).
    pub fn from_labels(g: &Csr, n_components: usize, labels: Vec<u32>) -> Self {
        let n = g.n_nodes;
        let mut sizes = vec![0u32; n_components];
        for &l in &labels {
            sizes[l as usize] += 1;
        }
        // Members of each component (counting sort by label).
        let mut start = vec![0usize; n_components + 1];
        for c in 0..n_components {
            start[c + 1] = start[c] + sizes[c] as usize;
        }
        let mut members = vec![0u32; n];
        let mut cur = start.clone();
        for v in 0..n {
            let l = labels[v] as usize;
            members[cur[l]] = v as u32;
            cur[l] += 1;
        }
        // Deduplicated out-edges per component via a "last seen" marker.
        let mut mark = vec![u32::MAX; n_components];
        let mut indptr = Vec::with_capacity(n_components + 1);
        let mut indices: Vec<u32> = Vec::new();
        indptr.push(0usize);
        for cc in 0..n_components {
            let row_start = indices.len();
            for &v in &members[start[cc]..start[cc + 1]] {
                for &w in g.row(v as usize) {
                    let lw = labels[w as usize];
                    if lw as usize != cc && mark[lw as usize] != cc as u32 {
                        mark[lw as usize] = cc as u32;
                        indices.push(lw);
                    }
                }
            }
            indices[row_start..].sort_unstable();
            indptr.push(indices.len());
        }
        Condensation {
            n_components,
            labels,
            sizes,
            dag: Csr { n_nodes: n_components, indptr, indices },
        }
    }

    /// A topological order of the components (sources first): `n_components - 1, ..., 0`.
    pub fn topological_order(&self) -> Vec<u32> {
        (0..self.n_components as u32).rev().collect()
    }

    /// Whether component `a` reaches component `b` (`a == b` counts as reachable).
    /// Depth-first search pruned by the numbering (only components `>= b` can lead to `b`).
    pub fn reaches(&self, a: usize, b: usize, scratch: &mut ReachScratch) -> Result<bool> {
        let nc = self.n_components;
        if a >= nc {
            return Err(Error::out_of_range("a", format!("component {a} not in [0, {nc})")));
        }
        if b >= nc {
            return Err(Error::out_of_range("b", format!("component {b} not in [0, {nc})")));
        }
        Ok(self.reaches_unchecked(a as u32, b as u32, scratch))
    }

    pub(crate) fn reaches_unchecked(&self, a: u32, b: u32, scratch: &mut ReachScratch) -> bool {
        if a == b {
            return true;
        }
        if a < b {
            return false;
        }
        scratch.ensure(self.n_components);
        scratch.epoch = scratch.epoch.wrapping_add(1);
        if scratch.epoch == 0 {
            scratch.seen.iter_mut().for_each(|s| *s = 0);
            scratch.epoch = 1;
        }
        let ep = scratch.epoch;
        scratch.stack.clear();
        scratch.stack.push(a);
        scratch.seen[a as usize] = ep;
        while let Some(x) = scratch.stack.pop() {
            for &y in self.dag.row(x as usize) {
                if y == b {
                    return true;
                }
                // Row targets are sorted: those below b cannot reach b.
                if y < b {
                    continue;
                }
                if scratch.seen[y as usize] != ep {
                    scratch.seen[y as usize] = ep;
                    scratch.stack.push(y);
                }
            }
        }
        false
    }

    /// Batch of reachability queries `a[i] -> b[i]`, in parallel.
    pub fn reaches_many(&self, a: &[u32], b: &[u32]) -> Result<Vec<bool>> {
        if a.len() != b.len() {
            return Err(Error::shape("b", format!("a and b must have the same length, got {} and {}", a.len(), b.len())));
        }
        let nc = self.n_components as u32;
        if let Some(i) = a.iter().position(|&x| x >= nc) {
            return Err(Error::out_of_range("a", format!("entry {i} = {} is not a component in [0, {nc})", a[i])));
        }
        if let Some(i) = b.iter().position(|&x| x >= nc) {
            return Err(Error::out_of_range("b", format!("entry {i} = {} is not a component in [0, {nc})", b[i])));
        }
        Ok(a.par_iter()
            .zip(b.par_iter())
            .map_init(ReachScratch::default, |s, (&x, &y)| self.reaches_unchecked(x, y, s))
            .collect())
    }
}

/// Reusable scratch space of reachability searches.
#[derive(Default, Clone, Debug)]
pub struct ReachScratch {
    seen: Vec<u32>,
    epoch: u32,
    stack: Vec<u32>,
}

impl ReachScratch {
    fn ensure(&mut self, n: usize) {
        if self.seen.len() < n {
            self.seen.resize(n, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::csr::csr_from_edges;
    use super::*;

    #[test]
    fn cycle_and_tail() {
        // 0 -> 1 -> 2 -> 0, 2 -> 3, 4 isolated
        let g = csr_from_edges(&[0u32, 1, 2, 2], &[1u32, 2, 0, 3], 5).unwrap();
        let (nc, lab) = scc_csr(&g);
        assert_eq!(nc, 3);
        assert_eq!(lab[0], lab[1]);
        assert_eq!(lab[1], lab[2]);
        assert!(lab[2] > lab[3]);
        let cond = Condensation::from_labels(&g, nc, lab.clone());
        let mut s = ReachScratch::default();
        assert!(cond.reaches(lab[0] as usize, lab[3] as usize, &mut s).unwrap());
        assert!(!cond.reaches(lab[3] as usize, lab[0] as usize, &mut s).unwrap());
        assert!(!cond.reaches(lab[4] as usize, lab[3] as usize, &mut s).unwrap());
    }

    #[test]
    fn long_path_no_recursion() {
        let n = 2_000_000u32;
        let src: Vec<u32> = (0..n - 1).collect();
        let dst: Vec<u32> = (1..n).collect();
        let g = csr_from_edges(&src, &dst, n as usize).unwrap();
        let (nc, lab) = scc_csr(&g);
        assert_eq!(nc, n as usize);
        assert_eq!(lab[(n - 1) as usize], 0);
        assert_eq!(lab[0], n - 1);
        // one big cycle
        let mut dst2 = dst.clone();
        let mut src2 = src.clone();
        src2.push(n - 1);
        dst2.push(0);
        let g = csr_from_edges(&src2, &dst2, n as usize).unwrap();
        let (nc, _) = scc_csr(&g);
        assert_eq!(nc, 1);
    }

    #[test]
    fn empty_and_invalid() {
        assert_eq!(strongly_connected_components(&[0], &[]).unwrap().0, 0);
        assert!(strongly_connected_components(&[0, 1], &[1]).is_err());
        assert!(strongly_connected_components(&[], &[]).is_err());
    }
}
