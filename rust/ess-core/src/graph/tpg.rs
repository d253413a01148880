//! Token-priority graphs.
//!
//! From next-token data (windows `X_i`, labels `y_i`) one directed graph per last token
//! `k`: every sample whose window ends in `k` adds the edges `y_i -> x` for each token
//! `x != y_i` of `X_i`. Each graph keeps only the tokens that occur in its samples
//! (local node ids, `nodes[local] = token`); every other token of the vocabulary is an
//! isolated node of that graph, in a singleton component of its own, outranking nothing.
//!
//! Priority: component `A` outranks `B` when `B` is reachable from `A`; tokens of one SCC
//! tie. Components are numbered sinks first (see [`super::scc`]), so the highest
//! priorities have the largest numbers.

use rayon::prelude::*;

use super::csr::{Csr, NodeId};
use super::scc::{Condensation, ReachScratch};
use crate::error::{Error, Result};

/// The graph of one last token.
#[derive(Clone, Debug)]
pub struct TokenGraph {
    /// The last token `k` this graph belongs to.
    pub last_token: u32,
    /// Number of samples whose window ends in `k` (unrealisable ones excluded).
    pub n_samples: usize,
    /// Tokens occurring in those samples, sorted; local node `i` is token `nodes[i]`.
    pub nodes: Vec<u32>,
    /// Deduplicated edges `label -> token` over local ids, rows sorted.
    pub graph: Csr,
    /// SCCs and the condensation DAG (local ids).
    pub cond: Condensation,
}

impl TokenGraph {
    /// Local id of `token`, if it occurs in this graph.
    #[inline]
    pub fn local(&self, token: u32) -> Option<u32> {
        self.nodes.binary_search(&token).ok().map(|i| i as u32)
    }
    /// Component of `token` (None: the token does not occur, an isolated singleton).
    #[inline]
    pub fn component(&self, token: u32) -> Option<u32> {
        self.local(token).map(|i| self.cond.labels[i as usize])
    }
    /// Whether some SCC has more than one token.
    pub fn is_cyclic(&self) -> bool {
        self.cond.sizes.iter().any(|&s| s > 1)
    }
}

/// All token-priority graphs of a dataset.
#[derive(Clone, Debug)]
pub struct TokenPriorityGraphs {
    pub vocab_size: usize,
    /// Graphs of the last tokens that occur, sorted by last token.
    pub graphs: Vec<TokenGraph>,
    /// `graph_of[k]`: index into `graphs`, or `u32::MAX` when no sample ends in `k`.
    pub graph_of: Vec<u32>,
    /// Samples whose label does not occur in their window (excluded from the graphs).
    pub unrealisable: Vec<usize>,
}

/// Validated windows: flat tokens with offsets (`window i = tokens[offsets[i]..offsets[i+1]]`).
pub fn check_windows<I: NodeId>(tokens: &[I], offsets: &[i64], vocab_size: usize) -> Result<(Vec<u32>, Vec<usize>)> {
    if offsets.is_empty() {
        return Err(Error::shape("offsets", "must have n_windows + 1 >= 1 entries"));
    }
    if offsets[0] != 0 || offsets[offsets.len() - 1] != tokens.len() as i64 {
        return Err(Error::invalid("offsets", format!("must start at 0 and end at len(tokens) = {}", tokens.len())));
    }
    let mut off = Vec::with_capacity(offsets.len());
    for (i, w) in offsets.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(Error::invalid("offsets", format!("decrease at position {i}")));
        }
        if w[1] == w[0] {
            return Err(Error::invalid("windows", format!("window {i} is empty")));
        }
        off.push(w[0] as usize);
    }
    off.push(tokens.len());
    if vocab_size == 0 || vocab_size >= u32::MAX as usize {
        return Err(Error::invalid("vocab_size", format!("must be in [1, 2^32 - 1), got {vocab_size}")));
    }
    let toks = to_tokens("windows", tokens, vocab_size)?;
    Ok((toks, off))
}

/// Tokens as `u32`, each checked to be in `[0, vocab_size)`.
pub fn to_tokens<I: NodeId>(arg: &str, tokens: &[I], vocab_size: usize) -> Result<Vec<u32>> {
    let bad = tokens.par_iter().position_first(|&t| !matches!(t.index(), Some(v) if v < vocab_size));
    if let Some(i) = bad {
        return Err(Error::out_of_range(
            arg,
            format!("entry {i} = {} is not a token id in [0, vocab_size = {vocab_size})", tokens[i].as_i128()),
        ));
    }
    Ok(tokens.par_iter().map(|&t| t.index().unwrap_or(0) as u32).collect())
}

impl TokenPriorityGraphs {
    /// Build every graph, in parallel over last tokens.
    ///
    /// `tokens`/`offsets`: the windows (see [`check_windows`]); `labels`: one per window.
    /// With `allow_unrealisable = false` a sample whose label is not in its window is an
    /// error naming it; otherwise such samples are listed in `unrealisable` and excluded.
    pub fn build<I: NodeId>(
        tokens: &[I],
        offsets: &[i64],
        labels: &[I],
        vocab_size: usize,
        allow_unrealisable: bool,
    ) -> Result<Self> {
        let (toks, off) = check_windows(tokens, offsets, vocab_size)?;
        let n = off.len() - 1;
        if labels.len() != n {
            return Err(Error::shape("labels", format!("must have one label per window ({n}), got {}", labels.len())));
        }
        let labs = to_tokens("labels", labels, vocab_size)?;
        let realisable: Vec<bool> =
            (0..n).into_par_iter().map(|i| toks[off[i]..off[i + 1]].contains(&labs[i])).collect();
        let unrealisable: Vec<usize> = (0..n).filter(|&i| !realisable[i]).collect();
        if !allow_unrealisable && !unrealisable.is_empty() {
            let shown: Vec<String> = unrealisable.iter().take(10).map(|i| i.to_string()).collect();
            return Err(Error::invalid(
                "labels",
                format!(
                    "{} sample(s) have a label that does not occur in their window (not realisable by attention), e.g. samples [{}]; pass unrealisable=\"exclude\" to build the graphs without them",
                    unrealisable.len(),
                    shown.join(", ")
                ),
            ));
        }
        // Group realisable samples by last token (counting sort).
        // per-token counts and graph index, plus one token map per worker thread
        let per_token = 8 + 4 + 4 * rayon::current_num_threads() as u64;
        crate::mem::gate(
            "vocab_size",
            (vocab_size as u64).checked_mul(per_token),
            &format!("vocab_size = {vocab_size}"),
        )?;
        let mut count = vec![0usize; vocab_size + 1];
        for i in 0..n {
            if realisable[i] {
                count[toks[off[i + 1] - 1] as usize + 1] += 1;
            }
        }
        for k in 0..vocab_size {
            count[k + 1] += count[k];
        }
        let mut order = vec![0u32; count[vocab_size]];
        let mut cur = count.clone();
        for i in 0..n {
            if realisable[i] {
                let k = toks[off[i + 1] - 1] as usize;
                order[cur[k]] = i as u32;
                cur[k] += 1;
            }
        }
        let lasts: Vec<u32> = (0..vocab_size as u32).filter(|&k| count[k as usize + 1] > count[k as usize]).collect();
        let graphs: Vec<TokenGraph> = lasts
            .par_iter()
            .map_init(
                || vec![u32::MAX; vocab_size],
                |map, &k| {
                    let samples = &order[count[k as usize]..count[k as usize + 1]];
                    build_one(k, samples, &toks, &off, &labs, map)
                },
            )
            .collect();
        let mut graph_of = vec![u32::MAX; vocab_size];
        for (gi, g) in graphs.iter().enumerate() {
            graph_of[g.last_token as usize] = gi as u32;
        }
        Ok(TokenPriorityGraphs { vocab_size, graphs, graph_of, unrealisable })
    }

    /// Histogram of SCC sizes over all graphs (tokens occurring in each graph):
    /// `(sizes, counts)`, sizes increasing.
    pub fn scc_size_counts(&self) -> (Vec<usize>, Vec<usize>) {
        let mut h: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
        for g in &self.graphs {
            for &s in &g.cond.sizes {
                *h.entry(s as usize).or_insert(0) += 1;
            }
        }
        h.into_iter().unzip()
    }

    /// The graph of last token `k`, if some sample ends in `k`.
    pub fn graph(&self, k: u32) -> Option<&TokenGraph> {
        match self.graph_of.get(k as usize) {
            Some(&g) if g != u32::MAX => Some(&self.graphs[g as usize]),
            _ => None,
        }
    }

    /// Hard retrieval for one window (validated tokens): the distinct tokens of the window
    /// that no other token of it strictly outranks in the graph of its last token, sorted,
    /// and whether the graph determines the outcome (all of them in one SCC).
    pub fn retrieve(&self, window: &[u32], scratch: &mut ReachScratch) -> (Vec<u32>, bool) {
        let mut distinct: Vec<u32> = window.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let k = match window.last() {
            Some(&k) => k,
            None => return (Vec::new(), false),
        };
        let g = match self.graph(k) {
            Some(g) => g,
            None => {
                let det = distinct.len() == 1;
                return (distinct, det);
            }
        };
        let comps: Vec<Option<u32>> = distinct.iter().map(|&t| g.component(t)).collect();
        let mut maximal = Vec::new();
        let mut max_comps: Vec<Option<u32>> = Vec::new();
        for (i, &t) in distinct.iter().enumerate() {
            let outranked = match comps[i] {
                None => false,
                Some(c) => comps.iter().any(|&o| match o {
                    Some(o) if o != c => g.cond.reaches_unchecked(o, c, scratch),
                    _ => false,
                }),
            };
            if !outranked {
                maximal.push(t);
                max_comps.push(comps[i]);
            }
        }
        let determined = match max_comps.first() {
            None => false,
            Some(&first) => {
                if maximal.len() == 1 {
                    true
                } else {
                    first.is_some() && max_comps.iter().all(|&c| c == first)
                }
            }
        };
        (maximal, determined)
    }

    /// [`Self::retrieve`] for many windows, in parallel. Returns flat retrieved tokens,
    /// their offsets, and the determined flags.
    pub fn retrieve_many<I: NodeId>(&self, tokens: &[I], offsets: &[i64]) -> Result<(Vec<u32>, Vec<usize>, Vec<bool>)> {
        let (toks, off) = check_windows(tokens, offsets, self.vocab_size)?;
        let n = off.len() - 1;
        let res: Vec<(Vec<u32>, bool)> = (0..n)
            .into_par_iter()
            .map_init(ReachScratch::default, |s, i| self.retrieve(&toks[off[i]..off[i + 1]], s))
            .collect();
        let mut flat = Vec::new();
        let mut out_off = Vec::with_capacity(n + 1);
        let mut det = Vec::with_capacity(n);
        out_off.push(0);
        for (r, d) in res {
            flat.extend_from_slice(&r);
            out_off.push(flat.len());
            det.push(d);
        }
        Ok((flat, out_off, det))
    }
}

fn build_one(k: u32, samples: &[u32], toks: &[u32], off: &[usize], labs: &[u32], map: &mut [u32]) -> TokenGraph {
    // Nodes: distinct tokens of the samples, sorted.
    let mut nodes: Vec<u32> = Vec::new();
    for &i in samples {
        let i = i as usize;
        for &t in &toks[off[i]..off[i + 1]] {
            if map[t as usize] == u32::MAX {
                map[t as usize] = 0;
                nodes.push(t);
            }
        }
    }
    nodes.sort_unstable();
    for (j, &t) in nodes.iter().enumerate() {
        map[t as usize] = j as u32;
    }
    // Edges label -> token, as (src << 32 | dst), deduplicated.
    let mut edges: Vec<u64> = Vec::new();
    for &i in samples {
        let i = i as usize;
        let y = map[labs[i] as usize] as u64;
        for &t in &toks[off[i]..off[i + 1]] {
            let x = map[t as usize] as u64;
            if x != y {
                edges.push((y << 32) | x);
            }
        }
    }
    edges.sort_unstable();
    edges.dedup();
    for &t in &nodes {
        map[t as usize] = u32::MAX;
    }
    let nn = nodes.len();
    let mut indptr = vec![0usize; nn + 1];
    for &e in &edges {
        indptr[(e >> 32) as usize + 1] += 1;
    }
    for v in 0..nn {
        indptr[v + 1] += indptr[v];
    }
    let indices: Vec<u32> = edges.iter().map(|&e| (e & 0xffff_ffff) as u32).collect();
    let graph = Csr { n_nodes: nn, indptr, indices };
    let cond = Condensation::new(&graph);
    TokenGraph { last_token: k, n_samples: samples.len(), nodes, graph, cond }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> TokenPriorityGraphs {
        let w: [[i64; 4]; 6] = [[1, 2, 5, 4], [5, 0, 1, 2], [4, 5, 3, 1], [3, 5, 0, 2], [3, 1, 0, 4], [5, 1, 3, 0]];
        let tokens: Vec<i64> = w.iter().flatten().copied().collect();
        let offsets: Vec<i64> = (0..=6).map(|i| i * 4).collect();
        TokenPriorityGraphs::build(&tokens, &offsets, &[1i64, 5, 5, 0, 1, 3], 6, false).unwrap()
    }

    #[test]
    fn toy_graphs() {
        let t = toy();
        assert_eq!(t.graphs.iter().map(|g| g.last_token).collect::<Vec<_>>(), vec![0, 1, 2, 4]);
        let g2 = t.graph(2).unwrap();
        assert_eq!(g2.component(0), g2.component(5));
        assert_eq!(g2.cond.n_components, 4);
        let mut s = ReachScratch::default();
        let (r, det) = t.retrieve(&[3, 1, 0, 5, 2], &mut s);
        assert_eq!(r, vec![0, 5]);
        assert!(det);
    }

    #[test]
    fn unrealisable() {
        let r = TokenPriorityGraphs::build(&[0i64, 1], &[0, 2], &[2i64], 3, false);
        assert!(matches!(r, Err(Error::InvalidArgument { .. })));
        let t = TokenPriorityGraphs::build(&[0i64, 1], &[0, 2], &[2i64], 3, true).unwrap();
        assert_eq!(t.unrealisable, vec![0]);
        assert!(t.graphs.is_empty());
    }
}
