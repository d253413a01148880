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

use super::csr::{csr_and_transpose, csr_from_edges, Csr, NodeId};
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
/// `InvalidArgument`, `OutOfRange`), more than `2^32 - 2` nodes (`TooLarge`).
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
    let mut p = Pearce::new(n);
    for start in 0..n {
        if p.rindex[start] == 0 {
            p.visit(indptr, indices, start);
        }
    }
    p.finish(None)
}

/// `rindex` value of the nodes of a component found beforehand (forward-backward search),
/// numbered only once its turn comes; larger than any DFS index, so it never lowers a
/// low-link.
const PLACED: u32 = u32::MAX - 1;

/// State of Pearce's algorithm, so that the search can be run from chosen start nodes.
struct Pearce {
    /// 0 = unvisited; 1.. = DFS index / low-link while active; once the node's component
    /// is complete, its number counted down from n (always larger than any active
    /// index, so completed nodes never lower a low-link); [`PLACED`] for a component
    /// found by the forward-backward search and not yet numbered.
    rindex: Vec<u32>,
    index: u32,
    c: u32,
    stack: Vec<u32>,
    call: Vec<Frame>,
}

/// Call stack frame: node, next edge position, and the node's "root" flag (kept in the
/// frame rather than in a per-node array: it only matters while the node is active).
struct Frame {
    v: u32,
    root: bool,
    pos: usize,
}

impl Pearce {
    fn new(n: usize) -> Self {
        // Component numbers count down from n (not n - 1), so that no completed node ever
        // carries the value 0 of an unvisited one.
        Pearce { rindex: vec![0; n], index: 1, c: n as u32, stack: Vec::new(), call: Vec::new() }
    }

    /// Depth-first search from the unvisited node `start`; completes every component
    /// reachable from it that is not complete yet.
    fn visit(&mut self, indptr: &[usize], indices: &[u32], start: usize) {
        let rindex = &mut self.rindex;
        let stack = &mut self.stack;
        let call = &mut self.call;
        let mut index = self.index;
        let mut c = self.c;
        rindex[start] = index;
        index += 1;
        prefetch_row(indptr, indices, rindex, start);
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
                prefetch_row(indptr, indices, rindex, w);
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
        self.index = index;
        self.c = c;
    }

    /// Take the next component number (for a component placed beforehand).
    fn next_component(&mut self) -> u32 {
        let c = self.c;
        self.c = c.wrapping_sub(1);
        c
    }

    /// Labels numbered from 0 in completion order (sinks first); `placed` is the number
    /// given to the [`PLACED`] nodes.
    fn finish(self, placed: Option<u32>) -> (usize, Vec<u32>) {
        let mut rindex = self.rindex;
        let n = rindex.len();
        let n_comp = (n as u32 - self.c) as usize;
        let top = n as u32;
        match placed {
            None => rindex.par_iter_mut().for_each(|r| *r = top - *r),
            Some(pc) => rindex.par_iter_mut().for_each(|r| *r = top - if *r == PLACED { pc } else { *r }),
        }
        (n_comp, rindex)
    }
}

/// Smallest graph (nodes) for which [`SccAlgorithm::Auto`] tries the forward-backward split.
pub const FWBW_MIN_NODES: usize = 1 << 16;
/// The forward-backward route needs `n_nodes` below this (it keeps two ids as markers).
pub const FWBW_MAX_NODES: usize = u32::MAX as usize - 3;

/// Which SCC algorithm [`scc_from_edges`] runs. All give the same partition and a
/// sinks-first numbering (a reverse topological order of the condensation); the exact
/// numbers may differ between algorithms where the condensation has several valid orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SccAlgorithm {
    /// [`SccAlgorithm::ForwardBackward`] on graphs of at least [`FWBW_MIN_NODES`] nodes
    /// with at least twice as many edges as nodes (and room in memory for the transpose),
    /// [`SccAlgorithm::Pearce`] otherwise. (On sparser graphs a breadth-first search costs
    /// about as much per node as the depth-first search, so the split does not pay.)
    Auto,
    /// Pearce's depth-first search (CSR only), after one round of trimming.
    Pearce,
    /// Forward-backward split around one pivot, then Pearce on the rest (CSR and transpose).
    ForwardBackward,
}

impl SccAlgorithm {
    /// From its name: `"auto"`, `"pearce"` or `"fwbw"`.
    pub fn parse(arg: &str, s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(SccAlgorithm::Auto),
            "pearce" | "tarjan" => Ok(SccAlgorithm::Pearce),
            "fwbw" | "forward-backward" => Ok(SccAlgorithm::ForwardBackward),
            _ => Err(Error::invalid(arg, format!("must be 'auto', 'pearce' or 'fwbw', got {s:?}"))),
        }
    }
}

/// Strongly connected components straight from edge arrays, returning the CSR too.
///
/// Same partition and numbering convention as [`csr_from_edges`](super::csr_from_edges) followed by
/// [`scc_csr`], and the same errors as [`csr_from_edges`](super::csr_from_edges). The forward-backward method
/// (Fleischer, Hendrickson and Pinar, 2000) first peels off the component of a
/// high-degree pivot by a forward and a backward breadth-first search, run in parallel;
/// it needs the transposed graph too (built together with the CSR by
/// [`csr_and_transpose`]). On graphs with a giant component those searches are far
/// cheaper than a depth-first search through it (their visited sets are bitmaps that stay
/// in cache). The remaining nodes go through Pearce's algorithm in an order that keeps
/// the numbering a reverse topological order (see [`scc_fwbw`]).
pub fn scc_from_edges<I: NodeId>(
    src: &[I],
    dst: &[I],
    n_nodes: usize,
    algorithm: SccAlgorithm,
) -> Result<(Csr, usize, Vec<u32>)> {
    let (m, n) = (src.len() as u64, n_nodes as u64);
    let avail = crate::ess::dense::available_memory();
    let fits = |bytes: u64| avail.is_none_or(|a| bytes <= a);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    // Peak working memory (bytes) of each route: bucketed build of CSR + transpose (pairs
    // 8 B and columns 4 B per edge and graph, row pointers), node state; Pearce alone on
    // the counting-sort CSR (columns, row pointers, per-chunk histograms <= columns, node
    // state and a worst-case call stack of one 16 B frame per node).
    let fwbw_bytes = m.saturating_mul(24).saturating_add(n.saturating_mul(24));
    let bucketed_bytes = m.saturating_mul(12).saturating_add(n.saturating_mul(32));
    let pearce_bytes = m.saturating_mul(8).saturating_add(n.saturating_mul(32));
    let fwbw = match algorithm {
        // (the forward-backward route keeps the ids u32::MAX - 2.. as markers)
        SccAlgorithm::Auto => {
            n_nodes >= FWBW_MIN_NODES && src.len() >= 2 * n_nodes && n_nodes < FWBW_MAX_NODES && fits(fwbw_bytes)
        }
        SccAlgorithm::Pearce => false,
        SccAlgorithm::ForwardBackward => {
            if n_nodes >= FWBW_MAX_NODES {
                return Err(Error::too_large(
                    "n_nodes",
                    format!("'fwbw' handles up to {} nodes; use 'pearce'", FWBW_MAX_NODES - 1),
                ));
            }
            if !fits(fwbw_bytes) {
                return Err(Error::too_large(
                    "algorithm",
                    format!(
                        "'fwbw' on {m} edges needs about {:.1} GiB but {:.1} GiB is available; use 'pearce' or 'auto'",
                        gib(fwbw_bytes),
                        gib(avail.unwrap_or(0))
                    ),
                ));
            }
            true
        }
    };
    if fwbw {
        let (g, gt) = csr_and_transpose(src, dst, n_nodes, true)?;
        let gt = gt.ok_or_else(|| Error::Numerical("transpose missing".into()))?;
        let (nc, labels) = scc_fwbw(&g, &gt);
        return Ok((g, nc, labels));
    }
    if !fits(pearce_bytes) {
        return Err(Error::too_large(
            if m.saturating_mul(8) >= n.saturating_mul(32) { "src" } else { "n_nodes" },
            format!(
                "{m} edges over {n} nodes need about {:.1} GiB of working memory but {:.1} GiB is available",
                gib(pearce_bytes),
                gib(avail.unwrap_or(0))
            ),
        ));
    }
    let g = if fits(bucketed_bytes.saturating_mul(2)) {
        csr_and_transpose(src, dst, n_nodes, false)?.0
    } else {
        csr_from_edges(src, dst, n_nodes)?
    };
    let (nc, labels) = scc_pearce_trimmed(&g);
    Ok((g, nc, labels))
}

/// Forward-backward split, then Pearce's algorithm on the rest. `gt` is the transpose of
/// `g`. Both must be valid CSRs over the same nodes.
///
/// With `F` the nodes reachable from the pivot and `B` those that reach it, `S = F & B`
/// is the pivot's component. There are no edges from `F \ B` or from the nodes in neither
/// set into `S` or `B \ S`, and none from `S` out of `F`; so the search first completes
/// every node outside `B` (its successors are all outside `B`), then numbers `S`, then
/// completes `B \ S`: completion order stays a reverse topological order.
pub fn scc_fwbw(g: &Csr, gt: &Csr) -> (usize, Vec<u32>) {
    let n = g.n_nodes;
    if n == 0 {
        return (0, Vec::new());
    }
    if n >= FWBW_MAX_NODES {
        return scc_csr(g);
    }
    let mut p = Pearce::new(n);
    let sources = trim(g, |v| gt.indptr[v + 1] != gt.indptr[v], &mut p);
    // Pivot: the untrimmed node with the largest (out-degree + 1) * (in-degree + 1), the
    // likeliest member of a giant component.
    let rindex = &p.rindex;
    let pivot = (0..n)
        .into_par_iter()
        .filter(|&v| rindex[v] == 0)
        .map(|v| {
            let d = (g.indptr[v + 1] - g.indptr[v] + 1) as u64 * (gt.indptr[v + 1] - gt.indptr[v] + 1) as u64;
            (d, std::cmp::Reverse(v))
        })
        .max()
        .map(|(_, std::cmp::Reverse(v))| v);
    let placed = if let Some(pivot) = pivot {
        let (fw, bw) = rayon::join(|| reach_bitmap(g, gt, pivot), || reach_bitmap(gt, g, pivot));
        // The pivot's component (never contains a trimmed node: those are singletons).
        p.rindex.par_chunks_mut(64).enumerate().for_each(|(k, ch)| {
            let both = fw[k] & bw[k];
            if both != 0 {
                for (i, r) in ch.iter_mut().enumerate() {
                    if both >> i & 1 == 1 {
                        *r = PLACED;
                    }
                }
            }
        });
        drop(fw);
        let in_b = |v: usize| bw[v >> 6] >> (v & 63) & 1 == 1;
        for start in 0..n {
            if p.rindex[start] == 0 && !in_b(start) {
                p.visit(&g.indptr, &g.indices, start);
            }
        }
        let placed = p.next_component();
        for start in 0..n {
            if p.rindex[start] == 0 {
                p.visit(&g.indptr, &g.indices, start);
            }
        }
        Some(placed)
    } else {
        None
    };
    // Trimmed sources last.
    for &v in &sources {
        let c = p.next_component();
        p.rindex[v as usize] = c;
    }
    p.finish(placed)
}

/// Marks the trimmed sources until they are numbered.
const SOURCE: u32 = u32::MAX - 2;

/// Trimming (one round, a parallel scan): nodes without successors (sinks) and nodes
/// without predecessors (sources) are components of their own. Sinks are numbered at
/// once, before anything else; sources are marked [`SOURCE`] and returned, to be numbered
/// after everything else. No edge leaves a sink or enters a source, so the numbering
/// stays sinks first whatever the order within each group.
fn trim(g: &Csr, has_pred: impl Fn(usize) -> bool + Sync, p: &mut Pearce) -> Vec<u32> {
    let n = g.n_nodes;
    let sinks: Vec<u32> =
        (0..n as u32).into_par_iter().filter(|&v| g.indptr[v as usize + 1] == g.indptr[v as usize]).collect();
    for &v in &sinks {
        let c = p.next_component();
        p.rindex[v as usize] = c;
    }
    let sources: Vec<u32> = (0..n as u32)
        .into_par_iter()
        .filter(|&v| !has_pred(v as usize) && g.indptr[v as usize + 1] != g.indptr[v as usize])
        .collect();
    for &v in &sources {
        p.rindex[v as usize] = SOURCE;
    }
    sources
}

/// Pearce's algorithm after one round of trimming (see [`trim`]); the predecessor test
/// comes from a bitmap of the nodes that occur as edge targets (per-thread bitmaps that
/// stay in cache, OR-ed together). Valid CSR assumed.
fn scc_pearce_trimmed(g: &Csr) -> (usize, Vec<u32>) {
    let n = g.n_nodes;
    if n == 0 {
        return (0, Vec::new());
    }
    if n >= FWBW_MAX_NODES {
        return scc_csr(g);
    }
    let words = n.div_ceil(64);
    let has_pred_bits = g
        .indices
        .par_chunks(1 << 16)
        .fold(
            || vec![0u64; words],
            |mut bits, chunk| {
                for &w in chunk {
                    bits[(w >> 6) as usize] |= 1 << (w & 63);
                }
                bits
            },
        )
        .reduce(
            || vec![0u64; words],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x |= y);
                a
            },
        );
    let mut p = Pearce::new(n);
    let sources = trim(g, |v| has_pred_bits[v >> 6] >> (v & 63) & 1 == 1, &mut p);
    for start in 0..n {
        if p.rindex[start] == 0 {
            p.visit(&g.indptr, &g.indices, start);
        }
    }
    for &v in &sources {
        let c = p.next_component();
        p.rindex[v as usize] = c;
    }
    p.finish(None)
}

/// Nodes reachable from `s` (itself included) in `g`, as a bitmap of `u64` words; `gr`
/// is the transpose of `g`.
///
/// Direction-optimising breadth-first search (Beamer, Asanović and Patterson, 2012):
/// top-down steps expand the frontier's successors; while the frontier is large (its
/// edges outnumber a fraction of the edges into unvisited nodes, and it holds more than
/// a fraction of all nodes), bottom-up steps instead let every
/// unvisited node look for a visited predecessor (stopping at the first), a sequential
/// sweep over the transpose. Every node marked during a step joins the next frontier, so
/// the result is exact reachability either way.
fn reach_bitmap(g: &Csr, gr: &Csr, s: usize) -> Vec<u64> {
    // Beamer's switching rule: bottom-up once the frontier's edges exceed 1/ALPHA of the
    // edges into unvisited nodes, back to top-down when the frontier drops below n/BETA.
    const ALPHA: usize = 14;
    const BETA: usize = 24;
    let n = g.n_nodes;
    let words = n.div_ceil(64);
    let mut seen = vec![0u64; words];
    let (indptr, indices) = (&g.indptr[..], &g.indices[..]);
    let (rptr, ridx) = (&gr.indptr[..], &gr.indices[..]);
    seen[s >> 6] |= 1 << (s & 63);
    // Edges into unvisited nodes (what a bottom-up step may have to look at).
    let mut m_u = gr.indices.len() - (rptr[s + 1] - rptr[s]);
    let mut frontier: Vec<u32> = vec![s as u32];
    let mut next: Vec<u32> = Vec::new();
    let mut bottom_up = false;
    while !frontier.is_empty() {
        if bottom_up {
            bottom_up = frontier.len() * BETA >= n;
        } else {
            let m_f: usize = frontier.iter().map(|&v| indptr[v as usize + 1] - indptr[v as usize]).sum();
            bottom_up = m_f * ALPHA > m_u && frontier.len() * BETA >= n;
        }
        next.clear();
        if bottom_up {
            // Bottom-up: every unvisited node looks for a visited predecessor.
            for k in 0..words {
                let mut free = !seen[k];
                if k == words - 1 && !n.is_multiple_of(64) {
                    free &= (1u64 << (n % 64)) - 1;
                }
                while free != 0 {
                    let i = free.trailing_zeros() as usize;
                    free &= free - 1;
                    let v = k * 64 + i;
                    for &u in &ridx[rptr[v]..rptr[v + 1]] {
                        if seen[(u >> 6) as usize] >> (u & 63) & 1 == 1 {
                            seen[k] |= 1 << i;
                            next.push(v as u32);
                            break;
                        }
                    }
                }
            }
        } else {
            // Top-down: expand the frontier, prefetching rows further down the queue.
            for (j, &v) in frontier.iter().enumerate() {
                #[cfg(target_arch = "x86_64")]
                {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    if let Some(&u) = frontier.get(j + 16) {
                        // SAFETY: prefetch is a hint; u < n.
                        unsafe { _mm_prefetch(indptr.as_ptr().add(u as usize) as *const i8, _MM_HINT_T0) };
                    }
                    if let Some(&u) = frontier.get(j + 6) {
                        let a = indptr[u as usize];
                        // SAFETY: prefetch is a hint; a <= indices.len().
                        unsafe { _mm_prefetch(indices.as_ptr().add(a) as *const i8, _MM_HINT_T0) };
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = j;
                let v = v as usize;
                for &w in &indices[indptr[v]..indptr[v + 1]] {
                    let (k, b) = ((w >> 6) as usize, 1u64 << (w & 63));
                    if seen[k] & b == 0 {
                        seen[k] |= b;
                        next.push(w);
                    }
                }
            }
        }
        m_u -= next.iter().map(|&v| rptr[v as usize + 1] - rptr[v as usize]).sum::<usize>();
        std::mem::swap(&mut frontier, &mut next);
    }
    seen
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
        Condensation { n_components, labels, sizes, dag: Csr { n_nodes: n_components, indptr, indices } }
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
            return Err(Error::shape(
                "b",
                format!("a and b must have the same length, got {} and {}", a.len(), b.len()),
            ));
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

    /// Same partition as `reference`, and numbering a reverse topological order of `g`.
    fn check_against(g: &Csr, reference: &(usize, Vec<u32>), got: &(usize, Vec<u32>)) {
        assert_eq!(reference.0, got.0);
        let n = g.n_nodes;
        let mut map = vec![u32::MAX; reference.0];
        for v in 0..n {
            let (a, b) = (reference.1[v] as usize, got.1[v]);
            assert!(b < got.0 as u32);
            if map[a] == u32::MAX {
                map[a] = b;
            }
            assert_eq!(map[a], b, "partition differs at node {v}");
        }
        for v in 0..n {
            for &w in g.row(v) {
                assert!(got.1[v] >= got.1[w as usize], "edge {v} -> {w} against the numbering");
            }
        }
    }

    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    #[test]
    fn fwbw_matches_pearce() {
        // Random graphs of several densities (giant component or not), graphs built so that
        // the pivot's component has ancestors, descendants and unrelated parts, a DAG, a
        // cycle, and tiny sizes.
        let mut cases: Vec<(usize, Vec<u32>, Vec<u32>)> = Vec::new();
        let mut rnd = xorshift(7);
        for &(n, deg) in
            &[(1usize, 0usize), (5, 0), (1, 1), (2, 1), (3, 2), (50, 1), (200, 2), (1000, 3), (5000, 1), (20_000, 5)]
        {
            let m = n * deg;
            let src: Vec<u32> = (0..m).map(|_| (rnd() % n as u64) as u32).collect();
            let dst: Vec<u32> = (0..m).map(|_| (rnd() % n as u64) as u32).collect();
            cases.push((n, src, dst));
        }
        {
            // A dense core 0..100 (pivot), ancestors 100..200 -> core, descendants core -> 200..300,
            // unrelated 300..400 -> descendants, with small cycles in every part.
            let (mut s, mut d) = (Vec::new(), Vec::new());
            for v in 0..100u32 {
                for k in 1..8 {
                    s.push(v);
                    d.push((v + k * 13) % 100);
                }
            }
            for v in 100..400u32 {
                let base = v - v % 100;
                s.push(v);
                d.push(base + (v + 1) % 10 + (v - base) / 10 * 10);
            }
            for v in 100..200u32 {
                s.push(v);
                d.push(v % 100);
                s.push(v);
                d.push(200 + v % 100);
            }
            for v in 0..100u32 {
                s.push(v);
                d.push(200 + (v * 7) % 100);
            }
            for v in 300..400u32 {
                s.push(v);
                d.push(200 + (v * 3) % 100);
            }
            cases.push((400, s, d));
        }
        {
            let n = 3000u32;
            let s: Vec<u32> = (0..n).flat_map(|v| [v, v]).collect();
            let d: Vec<u32> = (0..n).flat_map(|v| [(v + 1).min(n - 1), (v + 7).min(n - 1)]).collect();
            cases.push((n as usize, s.clone(), d.clone())); // DAG
            let d2: Vec<u32> = (0..n).flat_map(|v| [(v + 1) % n, (v + 7) % n]).collect();
            cases.push((n as usize, s, d2)); // one cycle
        }
        for (n, src, dst) in cases {
            let g = csr_from_edges(&src, &dst, n).unwrap();
            let gt = csr_from_edges(&dst, &src, n).unwrap();
            let reference = scc_csr(&g);
            check_against(&g, &reference, &reference);
            check_against(&g, &reference, &scc_fwbw(&g, &gt));
            for alg in [SccAlgorithm::Auto, SccAlgorithm::Pearce, SccAlgorithm::ForwardBackward] {
                let (g2, nc, lab) = scc_from_edges(&src, &dst, n, alg).unwrap();
                assert_eq!(g2, g);
                check_against(&g, &reference, &(nc, lab));
            }
        }
    }

    #[test]
    fn from_edges_large_uses_fwbw() {
        let n = FWBW_MIN_NODES + 123;
        let m = 3 * n;
        let mut rnd = xorshift(11);
        let src: Vec<i64> = (0..m).map(|_| (rnd() % n as u64) as i64).collect();
        let dst: Vec<i64> = (0..m).map(|_| (rnd() % n as u64) as i64).collect();
        let g = csr_from_edges(&src, &dst, n).unwrap();
        let reference = scc_csr(&g);
        let (g2, nc, lab) = scc_from_edges(&src, &dst, n, SccAlgorithm::Auto).unwrap();
        assert_eq!(g2, g);
        check_against(&g, &reference, &(nc, lab));
        let mut bad = src.clone();
        bad[m - 1] = n as i64;
        assert!(matches!(scc_from_edges(&bad, &dst, n, SccAlgorithm::Auto), Err(Error::OutOfRange { .. })));
    }

    #[test]
    fn empty_and_invalid() {
        assert_eq!(strongly_connected_components(&[0], &[]).unwrap().0, 0);
        assert!(strongly_connected_components(&[0, 1], &[1]).is_err());
        assert!(strongly_connected_components(&[], &[]).is_err());
    }
}
