//! Compressed sparse row (CSR) adjacency of a directed graph, built from edge arrays.
//!
//! Construction is a parallel counting sort: every rayon chunk of the edge list counts
//! its out-degrees into its own histogram (validating ids on the way), an exclusive
//! prefix sum over (node, chunk) gives every chunk a private write cursor per node, and
//! the chunks scatter their targets into disjoint slots. The result is stable: within a
//! row, targets keep the order of the input edge list. `O(n + m)` work, `O(n * chunks)`
//! extra memory (chunks are limited so that this stays below the size of the edge list).

use rayon::prelude::*;

use crate::error::{Error, Result};

/// A node id as it comes from the user (numpy `int32`, `int64`, `uint32`, `uint64`).
pub trait NodeId: Copy + Send + Sync {
    /// The id as an index, or `None` when it is negative.
    fn index(self) -> Option<usize>;
    /// The raw value, for error messages.
    fn as_i128(self) -> i128;
}
macro_rules! node_id_signed {
    ($($t:ty),*) => {$(impl NodeId for $t {
        #[inline] fn index(self) -> Option<usize> { usize::try_from(self).ok() }
        #[inline] fn as_i128(self) -> i128 { self as i128 }
    })*};
}
node_id_signed!(i32, i64, u32, u64, usize);

/// Directed graph in CSR form: the successors of node `v` are
/// `indices[indptr[v]..indptr[v + 1]]`. Node ids are `u32` (graphs up to `2^32 - 1` nodes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Csr {
    pub n_nodes: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
}

impl Csr {
    pub fn n_edges(&self) -> usize {
        self.indices.len()
    }
    /// Successors of `v`.
    #[inline]
    pub fn row(&self, v: usize) -> &[u32] {
        &self.indices[self.indptr[v]..self.indptr[v + 1]]
    }
    /// Check that `indptr`/`indices` form a valid CSR over `n_nodes` nodes.
    pub fn validate(n_nodes: usize, indptr: &[usize], indices: &[u32]) -> Result<()> {
        if indptr.len() != n_nodes + 1 {
            return Err(Error::shape(
                "indptr",
                format!("must have n_nodes + 1 = {} entries, got {}", n_nodes + 1, indptr.len()),
            ));
        }
        if indptr[0] != 0 || indptr[n_nodes] != indices.len() {
            return Err(Error::invalid(
                "indptr",
                format!("must start at 0 and end at len(indices) = {}", indices.len()),
            ));
        }
        if let Some(i) = indptr.windows(2).position(|w| w[0] > w[1]) {
            return Err(Error::invalid("indptr", format!("decreases at position {i}")));
        }
        if let Some(i) = indices.par_iter().position_any(|&w| w as usize >= n_nodes) {
            return Err(Error::out_of_range(
                "indices",
                format!("entry {i} = {} is not a node id in [0, {n_nodes})", indices[i]),
            ));
        }
        Ok(())
    }
}

/// Raw pointer shared by the scatter chunks (they write disjoint slots).
#[derive(Clone, Copy)]
struct SyncPtr(*mut u32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

fn check_ids<I: NodeId>(arg: &str, ids: &[I], offset: usize, n_nodes: usize) -> Result<()> {
    // Slow path, only run once an invalid id is known to exist: report the first one.
    for (i, &x) in ids.iter().enumerate() {
        match x.index() {
            Some(v) if v < n_nodes => {}
            _ => {
                return Err(Error::out_of_range(
                    arg,
                    format!("entry {} = {} is not a node id in [0, n_nodes = {n_nodes})", i + offset, x.as_i128()),
                ))
            }
        }
    }
    Ok(())
}

/// Equal edge-array lengths, and node ids that fit `u32`.
fn check_sizes(n_src: usize, n_dst: usize, n_nodes: usize) -> Result<()> {
    if n_src != n_dst {
        return Err(Error::shape("dst", format!("src and dst must have the same length, got {n_src} and {n_dst}")));
    }
    if n_nodes >= u32::MAX as usize {
        return Err(Error::too_large("n_nodes", format!("{n_nodes} nodes exceed the limit of 2^32 - 2")));
    }
    Ok(())
}

/// Build the CSR of the directed graph with edges `src[i] -> dst[i]` over nodes
/// `0..n_nodes`. Duplicate edges and self-loops are kept as given.
///
/// Errors: `Shape` when the lengths differ, `OutOfRange` naming `src` or `dst` and the
/// first offending position when an id is negative or `>= n_nodes`, `TooLarge` when
/// `n_nodes` does not fit the `u32` ids.
pub fn csr_from_edges<I: NodeId>(src: &[I], dst: &[I], n_nodes: usize) -> Result<Csr> {
    check_sizes(src.len(), dst.len(), n_nodes)?;
    let m = src.len();
    // Chunking: enough to keep every thread busy, few enough that the per-chunk
    // histograms (n_nodes words each) stay small next to the edge list.
    let threads = rayon::current_num_threads().max(1);
    let mut n_chunks = if m < 1 << 16 { 1 } else { (threads * 2).min(64) };
    while n_chunks > 1 && n_chunks * (n_nodes + 1) > m {
        n_chunks /= 2;
    }
    let chunk = m.div_ceil(n_chunks).max(1);

    // Pass 1: per-chunk degree histograms with id validation.
    let mut counts: Vec<Vec<u32>> = (0..n_chunks)
        .into_par_iter()
        .map(|c| {
            let lo = (c * chunk).min(m);
            let hi = ((c + 1) * chunk).min(m);
            let mut h = vec![0u32; n_nodes];
            let mut bad = false;
            for (&s, &d) in src[lo..hi].iter().zip(&dst[lo..hi]) {
                match (s.index(), d.index()) {
                    (Some(s), Some(d)) if s < n_nodes && d < n_nodes => h[s] += 1,
                    _ => {
                        bad = true;
                        break;
                    }
                }
            }
            if bad {
                // Return an empty histogram as a marker; validated below.
                Vec::new()
            } else {
                h
            }
        })
        .collect();
    if counts.iter().any(|h| h.len() != n_nodes) || (n_nodes == 0 && m > 0) {
        check_ids("src", src, 0, n_nodes)?;
        check_ids("dst", dst, 0, n_nodes)?;
        return Err(Error::Numerical("CSR construction: inconsistent id validation".into()));
    }
    if m > u32::MAX as usize && n_chunks == 1 {
        // u32 per-chunk counters could overflow on a single huge chunk.
        return Err(Error::too_large("src", format!("{m} edges in one chunk exceed 2^32")));
    }

    // Exclusive prefix sum in (node, chunk) order: counts[c][v] becomes chunk c's cursor
    // for node v, relative to indptr[v].
    let mut indptr = vec![0usize; n_nodes + 1];
    {
        // Per node: total degree, and per chunk the offset within the row.
        let mut total = 0usize;
        for v in 0..n_nodes {
            indptr[v] = total;
            let mut within = 0u32;
            for h in counts.iter_mut() {
                let c = h[v];
                h[v] = within;
                within += c;
            }
            total += within as usize;
        }
        indptr[n_nodes] = total;
    }

    // Pass 2: parallel scatter into disjoint slots.
    let mut indices: Vec<u32> = Vec::with_capacity(m);
    let ptr = SyncPtr(indices.as_mut_ptr());
    let indptr_ref = &indptr;
    counts.par_iter_mut().enumerate().for_each(|(c, cursor)| {
        let p = ptr;
        let lo = (c * chunk).min(m);
        let hi = ((c + 1) * chunk).min(m);
        for (&s, &d) in src[lo..hi].iter().zip(&dst[lo..hi]) {
            // Ids were validated in pass 1.
            let s = s.index().unwrap_or(0);
            let d = d.index().unwrap_or(0) as u32;
            let slot = indptr_ref[s] + cursor[s] as usize;
            cursor[s] += 1;
            // SAFETY: slot < m, and every (node, chunk) pair owns the disjoint slot range
            // indptr[v] + [offset_c, offset_c + count_c); each slot is written once.
            unsafe { p.0.add(slot).write(d) };
        }
    });
    // SAFETY: all m slots were written exactly once above.
    unsafe { indices.set_len(m) };
    Ok(Csr { n_nodes, indptr, indices })
}

/// Below this many edges [`csr_and_transpose`] uses the counting sort of
/// [`csr_from_edges`] (the bucketed sort only pays on large edge lists).
pub const RADIX_MIN_EDGES: usize = 1 << 18;

/// Raw pointer for disjoint parallel writes of `usize` (row pointers).
#[derive(Clone, Copy)]
struct SyncPtrUsize(*mut usize);
unsafe impl Send for SyncPtrUsize {}
unsafe impl Sync for SyncPtrUsize {}

/// Raw pointer for disjoint parallel writes of `(row, column)` pairs.
#[derive(Clone, Copy)]
struct SyncPtrPair(*mut [u32; 2]);
unsafe impl Send for SyncPtrPair {}
unsafe impl Sync for SyncPtrPair {}

/// The CSR of the graph `src[i] -> dst[i]` and, when `transpose` is set, the CSR of its
/// transpose (the predecessors of every node), built together. Same result, ordering
/// (stable within rows) and errors as [`csr_from_edges`].
///
/// Large edge lists use a two-pass bucketed sort that stays in cache: edges are first
/// partitioned by the high bits of their row (about a thousand buckets, so every write
/// stream has a cached line), then every bucket is counting-sorted on its own (its
/// histogram and output fit in cache). Both passes and both graphs run in parallel.
/// Extra memory: 8 bytes per edge and graph while building.
pub fn csr_and_transpose<I: NodeId>(
    src: &[I],
    dst: &[I],
    n_nodes: usize,
    transpose: bool,
) -> Result<(Csr, Option<Csr>)> {
    if src.len() < RADIX_MIN_EDGES {
        let g = csr_from_edges(src, dst, n_nodes)?;
        let gt = if transpose { Some(csr_from_edges(dst, src, n_nodes)?) } else { None };
        return Ok((g, gt));
    }
    csr_bucketed(src, dst, n_nodes, transpose)
}

pub(crate) fn csr_bucketed<I: NodeId>(
    src: &[I],
    dst: &[I],
    n_nodes: usize,
    transpose: bool,
) -> Result<(Csr, Option<Csr>)> {
    check_sizes(src.len(), dst.len(), n_nodes)?;
    let m = src.len();
    if n_nodes == 0 {
        if m > 0 {
            check_ids("src", src, 0, n_nodes)?;
        }
        let empty = Csr { n_nodes: 0, indptr: vec![0], indices: Vec::new() };
        return Ok((empty.clone(), transpose.then_some(empty)));
    }
    let geo = Buckets::new(n_nodes, m, transpose);
    // Pass 0: bucket counts per chunk, with id validation.
    let Some(mut cursors) = geo.count(src, dst) else {
        check_ids("src", src, 0, n_nodes)?;
        check_ids("dst", dst, 0, n_nodes)?;
        return Err(Error::Numerical("CSR construction: inconsistent id validation".into()));
    };
    let bstart = geo.cursors(&mut cursors);
    // Pass 1: partition the edges into the buckets; pass 2: sort every bucket by row.
    let bufs = geo.partition(src, dst, &mut cursors);
    let mut graphs = geo.sort(&bufs, &bstart).into_iter();
    drop(bufs);
    let g = graphs.next().ok_or_else(|| Error::Numerical("CSR construction".into()))?;
    Ok((g, graphs.next()))
}

/// Geometry of the bucketed sort of [`csr_bucketed`]: `sides` graphs (the graph, and its
/// transpose when asked), buckets of `2^shift` consecutive rows (at most 256 per side), and
/// `n_chunks` chunks of `chunk` edges for the parallel passes over the edge list.
#[derive(Clone, Copy)]
struct Buckets {
    n_nodes: usize,
    m: usize,
    transpose: bool,
    sides: usize,
    shift: u32,
    nb: usize,
    n_chunks: usize,
    chunk: usize,
}

impl Buckets {
    /// `n_nodes >= 1`.
    fn new(n_nodes: usize, m: usize, transpose: bool) -> Buckets {
        let bits = usize::BITS - (n_nodes - 1).leading_zeros();
        let shift = bits.saturating_sub(8);
        let nb = ((n_nodes - 1) >> shift) + 1;
        let sides = if transpose { 2 } else { 1 };
        let threads = rayon::current_num_threads().max(1);
        let n_chunks = (threads * 2).clamp(1, 64).min(m.div_ceil(1 << 14).max(1));
        let chunk = m.div_ceil(n_chunks).max(1);
        Buckets { n_nodes, m, transpose, sides, shift, nb, n_chunks, chunk }
    }

    /// Edge range `[lo, hi)` of chunk `c`.
    #[inline]
    fn bounds(&self, c: usize) -> (usize, usize) {
        ((c * self.chunk).min(self.m), ((c + 1) * self.chunk).min(self.m))
    }

    /// Pass 0: per chunk, the edge count of every bucket (`sides * nb` entries: rows by
    /// `src`, then for the transpose rows by `dst`). `None` when some id is invalid.
    fn count<I: NodeId>(&self, src: &[I], dst: &[I]) -> Option<Vec<Vec<usize>>> {
        let Buckets { n_nodes, nb, shift, transpose, .. } = *self;
        (0..self.n_chunks)
            .into_par_iter()
            .map(|c| {
                let (lo, hi) = self.bounds(c);
                let mut h = vec![0usize; nb * self.sides];
                for (&s, &d) in src[lo..hi].iter().zip(&dst[lo..hi]) {
                    match (s.index(), d.index()) {
                        (Some(s), Some(d)) if s < n_nodes && d < n_nodes => {
                            h[s >> shift] += 1;
                            if transpose {
                                h[nb + (d >> shift)] += 1;
                            }
                        }
                        _ => return None,
                    }
                }
                Some(h)
            })
            .collect()
    }

    /// Exclusive prefix sum in (side, bucket, chunk) order: the counts become every chunk's
    /// private write cursor per bucket. Returns the bucket starts: bucket `b` of side `s`
    /// occupies `[bstart[s * (nb + 1) + b], bstart[s * (nb + 1) + b + 1])`.
    fn cursors(&self, cursors: &mut [Vec<usize>]) -> Vec<usize> {
        let nb = self.nb;
        let mut bstart = vec![0usize; self.sides * (nb + 1)];
        for side in 0..self.sides {
            let mut total = 0usize;
            for b in 0..nb {
                bstart[side * (nb + 1) + b] = total;
                for cur in cursors.iter_mut() {
                    let k = cur[side * nb + b];
                    cur[side * nb + b] = total;
                    total += k;
                }
            }
            bstart[side * (nb + 1) + nb] = total;
        }
        bstart
    }

    /// Pass 1: partition the (validated) edges into the buckets of every side, as
    /// `(row, column)` pairs, each chunk writing at its cursors.
    fn partition<I: NodeId>(&self, src: &[I], dst: &[I], cursors: &mut [Vec<usize>]) -> Vec<Vec<[u32; 2]>> {
        let Buckets { m, nb, shift, transpose, sides, .. } = *self;
        let mut bufs: Vec<Vec<[u32; 2]>> = (0..sides)
            .map(|_| {
                let mut b = Vec::with_capacity(m);
                crate::mem::advise_vec(&mut b);
                b
            })
            .collect();
        let ptrs: Vec<SyncPtrPair> = bufs.iter_mut().map(|b| SyncPtrPair(b.as_mut_ptr())).collect();
        cursors.par_iter_mut().enumerate().for_each(|(c, cur)| {
            let (lo, hi) = self.bounds(c);
            let p0 = ptrs[0];
            let p1 = ptrs[sides - 1];
            for (&s, &d) in src[lo..hi].iter().zip(&dst[lo..hi]) {
                // Ids were validated in pass 0.
                let s = s.index().unwrap_or(0);
                let d = d.index().unwrap_or(0);
                let k = &mut cur[s >> shift];
                // SAFETY: every (bucket, chunk) pair owns the disjoint slot range assigned by
                // the prefix sum above; each of the m slots is written exactly once.
                unsafe { p0.0.add(*k).write([s as u32, d as u32]) };
                *k += 1;
                if transpose {
                    let k = &mut cur[nb + (d >> shift)];
                    // SAFETY: as above, for the transpose's buckets.
                    unsafe { p1.0.add(*k).write([d as u32, s as u32]) };
                    *k += 1;
                }
            }
        });
        for b in bufs.iter_mut() {
            // SAFETY: all m slots were written exactly once above.
            unsafe { b.set_len(m) };
        }
        bufs
    }

    /// Pass 2: counting sort of every bucket by its row (stable), in parallel over the
    /// buckets of all sides, writing the row pointers and columns of the final graphs.
    fn sort(&self, bufs: &[Vec<[u32; 2]>], bstart: &[usize]) -> Vec<Csr> {
        let Buckets { n_nodes, m, nb, .. } = *self;
        let mut out: Vec<(Vec<usize>, Vec<u32>)> = (0..self.sides)
            .map(|_| {
                let mut ip: Vec<usize> = Vec::with_capacity(n_nodes + 1);
                crate::mem::advise_vec(&mut ip);
                ip.push(0); // entries 1..=n_nodes are written by the buckets below
                let mut ix = Vec::with_capacity(m);
                crate::mem::advise_vec(&mut ix);
                (ip, ix)
            })
            .collect();
        let optrs: Vec<(SyncPtrUsize, SyncPtr)> =
            out.iter_mut().map(|(ip, ix)| (SyncPtrUsize(ip.as_mut_ptr()), SyncPtr(ix.as_mut_ptr()))).collect();
        (0..self.sides * nb).into_par_iter().for_each_init(
            || vec![0usize; (1usize << self.shift) + 1],
            |cnt, task| {
                let (side, b) = (task / nb, task % nb);
                let (a, z) = (bstart[side * (nb + 1) + b], bstart[side * (nb + 1) + b + 1]);
                let (ip, ix) = optrs[side];
                // SAFETY: the rows of bucket b and the slots [a, z) belong to this task alone.
                unsafe { self.sort_bucket(b, a, &bufs[side][a..z], cnt, ip, ix) };
            },
        );
        out.into_iter()
            .map(|(mut indptr, mut indices)| {
                // SAFETY: every slot of [0, m) belongs to exactly one bucket and was written
                // once; so was every row pointer 1..=n_nodes (the buckets cover all rows).
                unsafe {
                    indices.set_len(m);
                    indptr.set_len(n_nodes + 1);
                }
                Csr { n_nodes, indptr, indices }
            })
            .collect()
    }

    /// Counting sort of bucket `b` (its `pairs`, which start at slot `a` of the output) by
    /// row, with `cnt` (`2^shift + 1` entries) as scratch.
    ///
    /// # Safety
    /// `ip` and `ix` point to row pointers (`n_nodes + 1`) and columns (`m`) of which the
    /// rows of bucket `b` and the slots `[a, a + pairs.len())` are written by this call only.
    #[inline]
    unsafe fn sort_bucket(
        &self,
        b: usize,
        a: usize,
        pairs: &[[u32; 2]],
        cnt: &mut [usize],
        ip: SyncPtrUsize,
        ix: SyncPtr,
    ) {
        let width = 1usize << self.shift;
        let row0 = b << self.shift;
        let rows = width.min(self.n_nodes - row0);
        cnt[..=rows].iter_mut().for_each(|x| *x = 0);
        for e in pairs {
            cnt[e[0] as usize - row0 + 1] += 1;
        }
        let mut acc = a;
        for r in 0..rows {
            acc += cnt[r + 1];
            cnt[r + 1] = acc;
            ip.0.add(row0 + r + 1).write(acc);
        }
        cnt[0] = a;
        for e in pairs {
            let k = &mut cnt[e[0] as usize - row0];
            ix.0.add(*k).write(e[1]);
            *k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small() {
        let g = csr_from_edges(&[0i64, 2, 0, 1], &[1i64, 0, 2, 1], 3).unwrap();
        assert_eq!(g.indptr, vec![0, 2, 3, 4]);
        assert_eq!(g.indices, vec![1, 2, 1, 0]);
    }

    #[test]
    fn errors() {
        assert!(matches!(csr_from_edges(&[0i32], &[3i32], 3), Err(Error::OutOfRange { .. })));
        assert!(matches!(csr_from_edges(&[-1i32], &[0i32], 3), Err(Error::OutOfRange { .. })));
        assert!(matches!(csr_from_edges(&[0i32], &[0i32, 1], 3), Err(Error::Shape { .. })));
        assert!(matches!(csr_from_edges(&[0i32], &[0i32], 0), Err(Error::OutOfRange { .. })));
    }

    #[test]
    fn bucketed_matches_counting_sort() {
        for &(n, m) in &[(1usize, 5usize), (2, 7), (1000, 200_000), (3000, 300_000), (1 << 12, 100), (70_000, 300_000)]
        {
            let src: Vec<i64> = (0..m).map(|i| ((i * 7919 + i / 3) % n) as i64).collect();
            let dst: Vec<i64> = (0..m).map(|i| ((i * 104729 + 13) % n) as i64).collect();
            let g = csr_from_edges(&src, &dst, n).unwrap();
            let gt = csr_from_edges(&dst, &src, n).unwrap();
            let (a, at) = csr_bucketed(&src, &dst, n, true).unwrap();
            assert_eq!(a, g);
            assert_eq!(at.unwrap(), gt);
            let (b, none) = csr_bucketed(&src, &dst, n, false).unwrap();
            assert_eq!(b, g);
            assert!(none.is_none());
        }
        assert!(matches!(csr_bucketed(&[0i64, 5], &[1i64, 1], 3, true), Err(Error::OutOfRange { .. })));
        assert!(matches!(csr_bucketed(&[0i64, 1], &[1i64, -1], 3, true), Err(Error::OutOfRange { .. })));
        assert!(matches!(csr_bucketed(&[0i64], &[1i64, 1], 3, true), Err(Error::Shape { .. })));
        assert!(matches!(csr_bucketed(&[0i64], &[0i64], 0, true), Err(Error::OutOfRange { .. })));
        let (e, et) = csr_bucketed::<i64>(&[], &[], 0, true).unwrap();
        assert_eq!(e.indptr, vec![0]);
        assert_eq!(et.unwrap().n_nodes, 0);
        let (e, _) = csr_bucketed::<i64>(&[], &[], 4, true).unwrap();
        assert_eq!(e.indptr, vec![0; 5]);
    }

    #[test]
    fn parallel_matches_serial() {
        let n = 1000usize;
        let m = 200_000usize;
        let src: Vec<u32> = (0..m).map(|i| ((i * 7919) % n) as u32).collect();
        let dst: Vec<u32> = (0..m).map(|i| ((i * 104729 + 13) % n) as u32).collect();
        let g = csr_from_edges(&src, &dst, n).unwrap();
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (&s, &d) in src.iter().zip(&dst) {
            rows[s as usize].push(d);
        }
        for v in 0..n {
            assert_eq!(g.row(v), &rows[v][..]);
        }
    }
}
