//! Graph-SVM: the max-margin direction of one attention layer.
//!
//! `min ||W||_F` subject to, for every edge `y -> x` of the graph of last token `k`,
//! `(E_y - E_x)^T W E_k = 0` when `x` is in the SCC of `y` and `>= 1` otherwise (`x` is
//! then strictly below `y`). Every margin constraint of the training data (label `y_i` scored
//! at least as high as each other token `x` of its window `X_i`) is one of these edges, so
//! the graphs carry the whole problem.
//!
//! * One-hot tokens (`E = I`): column `k` of `W` only meets the constraints of graph `k`,
//!   and tokens of one SCC share one value, so each column is the small QP
//!   `min sum_C n_C z_C^2` s.t. `z_A - z_B >= 1` for every edge `A -> B` of the
//!   condensation (`n_C` the SCC sizes); tokens outside the graph get 0. Each QP is solved
//!   by Clarabel and then *polished* to an exact solution: the constraints Clarabel
//!   reports active are imposed as equalities (`z_A = z_B + 1` fixes values up to one
//!   shift per connected piece of the active graph; the shift minimising the weighted
//!   norm is `-sum n_C off_C / sum n_C`), and the polished point replaces the interior
//!   point when it is feasible and not worse. Columns run in parallel.
//! * General embeddings `E` (`K x d`): one QP in the `d^2` entries of `W`, solved by
//!   Clarabel (interior point; accuracy about 1e-9 relative).

use clarabel::algebra::CscMatrix;
use clarabel::solver::{DefaultSettingsBuilder, DefaultSolver, IPSolver, SolverStatus, SupportedConeT};
use rayon::prelude::*;

use super::tpg::{TokenGraph, TokenPriorityGraphs};
use crate::error::{check_finite, checked_size, Error, Result};

fn settings() -> clarabel::solver::DefaultSettings<f64> {
    DefaultSettingsBuilder::default()
        .verbose(false)
        .tol_gap_abs(1e-11)
        .tol_gap_rel(1e-11)
        .tol_feas(1e-11)
        .max_iter(400)
        .presolve_enable(false)
        .build()
        .expect("static Clarabel settings are valid")
}

fn status_ok(s: SolverStatus) -> bool {
    matches!(s, SolverStatus::Solved | SolverStatus::AlmostSolved)
}

/// Solve `min 1/2 x^T diag(p) x` s.t. `x[a] - x[b] >= 1` for `(a, b)` in `edges`.
fn difference_qp(p: &[f64], edges: &[(u32, u32)]) -> Result<Vec<f64>> {
    let n = p.len();
    if edges.is_empty() {
        return Ok(vec![0.0; n]);
    }
    let pm = CscMatrix::new(n, n, (0..=n).collect(), (0..n).collect(), p.to_vec());
    let q = vec![0.0; n];
    // A x + s = b, s >= 0 with rows -(x_a - x_b) + s = -1.
    let m = edges.len();
    let mut rows_i = Vec::with_capacity(2 * m);
    let mut cols_j = Vec::with_capacity(2 * m);
    let mut vals = Vec::with_capacity(2 * m);
    for (r, &(a, b)) in edges.iter().enumerate() {
        rows_i.push(r);
        cols_j.push(a as usize);
        vals.push(-1.0);
        rows_i.push(r);
        cols_j.push(b as usize);
        vals.push(1.0);
    }
    let am = CscMatrix::new_from_triplets(m, n, rows_i, cols_j, vals);
    let bv = vec![-1.0; m];
    let cones = [SupportedConeT::NonnegativeConeT(m)];
    let mut solver = DefaultSolver::new(&pm, &q, &am, &bv, &cones, settings())
        .map_err(|e| Error::Numerical(format!("graph-SVM setup: {e}")))?;
    solver.solve();
    if !status_ok(solver.solution.status) {
        return Err(Error::Numerical(format!("graph-SVM column QP: Clarabel status {:?}", solver.solution.status)));
    }
    let x = solver.solution.x.clone();
    Ok(polish(p, edges, &x).unwrap_or(x))
}

/// Exact solution on the active set of an interior-point solution `x`, if it checks out.
fn polish(p: &[f64], edges: &[(u32, u32)], x: &[f64]) -> Option<Vec<f64>> {
    let n = p.len();
    let scale = x.iter().fold(1.0f64, |a, &v| a.max(v.abs()));
    let tol = 1e-6 * scale;
    // Undirected adjacency of active constraints with offsets: x_a - x_b = 1.
    let mut adj: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        let (a, b) = (a as usize, b as usize);
        if x[a] - x[b] - 1.0 <= tol {
            adj[a].push((b, -1.0));
            adj[b].push((a, 1.0));
        }
    }
    let mut off = vec![f64::NAN; n];
    let mut out = vec![0.0; n];
    let mut stack = Vec::new();
    for s in 0..n {
        if !off[s].is_nan() {
            continue;
        }
        off[s] = 0.0;
        stack.push(s);
        let mut piece = vec![s];
        while let Some(u) = stack.pop() {
            for &(v, d) in &adj[u] {
                let want = off[u] + d;
                if off[v].is_nan() {
                    off[v] = want;
                    stack.push(v);
                    piece.push(v);
                } else if (off[v] - want).abs() > 1e-9 {
                    return None; // inconsistent active set
                }
            }
        }
        let wsum: f64 = piece.iter().map(|&v| p[v]).sum();
        let shift = -piece.iter().map(|&v| p[v] * off[v]).sum::<f64>() / wsum;
        for &v in &piece {
            out[v] = shift + off[v];
        }
    }
    let feasible = edges.iter().all(|&(a, b)| out[a as usize] - out[b as usize] >= 1.0 - 1e-12);
    let obj = |z: &[f64]| z.iter().zip(p).map(|(v, w)| w * v * v).sum::<f64>();
    if feasible && obj(&out) <= obj(x) * (1.0 + 1e-7) + 1e-12 {
        Some(out)
    } else {
        None
    }
}

/// One-hot graph-SVM column of graph `g`: `(tokens, values)` (tokens not listed are 0).
pub fn svm_column_one_hot(g: &TokenGraph) -> Result<(Vec<u32>, Vec<f64>)> {
    let c = &g.cond;
    let p: Vec<f64> = c.sizes.iter().map(|&s| s as f64).collect();
    let mut edges = Vec::with_capacity(c.dag.n_edges());
    for a in 0..c.n_components {
        for &b in c.dag.row(a) {
            edges.push((a as u32, b));
        }
    }
    let z = difference_qp(&p, &edges)?;
    let vals: Vec<f64> = c.labels.iter().map(|&l| z[l as usize]).collect();
    Ok((g.nodes.clone(), vals))
}

/// One-hot graph-SVM `W` (`K x K`, column `k` for last token `k`) as triplets
/// `(rows = tokens, cols = last tokens, values)`, zero entries omitted. Parallel over columns.
pub fn graph_svm_one_hot(t: &TokenPriorityGraphs) -> Result<(Vec<u32>, Vec<u32>, Vec<f64>)> {
    let cols: Vec<(Vec<u32>, Vec<f64>)> = t
        .graphs
        .par_iter()
        .map(|g| crate::interrupt::check().and_then(|_| svm_column_one_hot(g)))
        .collect::<Result<_>>()?;
    let mut r = Vec::new();
    let mut c = Vec::new();
    let mut v = Vec::new();
    for (g, (toks, vals)) in t.graphs.iter().zip(cols) {
        for (tk, x) in toks.into_iter().zip(vals) {
            if x != 0.0 {
                r.push(tk);
                c.push(g.last_token);
                v.push(x);
            }
        }
    }
    Ok((r, c, v))
}

/// Graph-SVM for general token embeddings `e` (`K x d`, row-major, `K = vocab_size`).
/// Returns `W` (`d x d`, row-major) with score `s = E_x^T W E_k`.
///
/// Errors: `Shape`/`NonFinite` on `e`; `InvalidArgument` when the constraints are infeasible
/// (the embeddings cannot realise the priorities, e.g. too small a `d`); `Numerical` when
/// the solver fails otherwise.
pub fn graph_svm_embedded(t: &TokenPriorityGraphs, e: &[f64], d: usize) -> Result<Vec<f64>> {
    let k = t.vocab_size;
    if d == 0 || e.len() != k * d {
        return Err(Error::shape(
            "E",
            format!("must be (vocab_size = {k}, d >= 1), got {} entries for d = {d}", e.len()),
        ));
    }
    check_finite("E", e)?;
    let nv = checked_size("E", &[d, d])?;
    let n_rows: usize = t.graphs.iter().map(|g| g.graph.n_edges()).sum();
    // The constraint rows are dense in the d^2 entries of W.
    const MAX_ENTRIES: usize = 200_000_000;
    if checked_size("E", &[nv, n_rows.max(1)])? > MAX_ENTRIES {
        return Err(Error::too_large(
            "E",
            format!("the graph-SVM QP would have {n_rows} dense constraints in d^2 = {nv} variables (over {MAX_ENTRIES} entries); reduce d or the data"),
        ));
    }
    // Constraint rows (dense, d^2 each): equalities first, then inequalities.
    let mut eq_rows: Vec<Vec<f64>> = Vec::new();
    let mut ineq_rows: Vec<Vec<f64>> = Vec::new();
    for g in &t.graphs {
        let ek = &e[g.last_token as usize * d..][..d];
        for yl in 0..g.graph.n_nodes {
            let y = g.nodes[yl] as usize;
            for &xl in g.graph.row(yl) {
                let x = g.nodes[xl as usize] as usize;
                let mut row = vec![0.0; nv];
                for a in 0..d {
                    let da = e[y * d + a] - e[x * d + a];
                    for b in 0..d {
                        row[a * d + b] = da * ek[b];
                    }
                }
                if g.cond.labels[yl] == g.cond.labels[xl as usize] {
                    eq_rows.push(row);
                } else {
                    ineq_rows.push(row);
                }
            }
        }
    }
    if ineq_rows.is_empty() {
        return Ok(vec![0.0; nv]);
    }
    let (ne, ni) = (eq_rows.len(), ineq_rows.len());
    let m = ne + ni;
    let mut ri = Vec::new();
    let mut cj = Vec::new();
    let mut vv = Vec::new();
    for (r, row) in eq_rows.iter().enumerate() {
        for (j, &x) in row.iter().enumerate() {
            if x != 0.0 {
                ri.push(r);
                cj.push(j);
                vv.push(x);
            }
        }
    }
    for (r, row) in ineq_rows.iter().enumerate() {
        for (j, &x) in row.iter().enumerate() {
            if x != 0.0 {
                ri.push(ne + r);
                cj.push(j);
                vv.push(-x);
            }
        }
    }
    let am = CscMatrix::new_from_triplets(m, nv, ri, cj, vv);
    let mut bv = vec![0.0; ne];
    bv.extend(std::iter::repeat_n(-1.0, ni));
    let pm = CscMatrix::identity(nv);
    let q = vec![0.0; nv];
    let mut cones = Vec::new();
    if ne > 0 {
        cones.push(SupportedConeT::ZeroConeT(ne));
    }
    cones.push(SupportedConeT::NonnegativeConeT(ni));
    let mut solver = DefaultSolver::new(&pm, &q, &am, &bv, &cones, settings())
        .map_err(|e| Error::Numerical(format!("graph-SVM setup: {e}")))?;
    solver.solve();
    match solver.solution.status {
        s if status_ok(s) => Ok(solver.solution.x.clone()),
        SolverStatus::PrimalInfeasible | SolverStatus::AlmostPrimalInfeasible => Err(Error::invalid(
            "E",
            "the graph-SVM constraints are infeasible for these embeddings (no W realises the token priorities; d may be too small)",
        )),
        s => Err(Error::Numerical(format!("graph-SVM QP: Clarabel status {s:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toy_columns() {
        let w: [[i64; 4]; 6] = [[1, 2, 5, 4], [5, 0, 1, 2], [4, 5, 3, 1], [3, 5, 0, 2], [3, 1, 0, 4], [5, 1, 3, 0]];
        let tokens: Vec<i64> = w.iter().flatten().copied().collect();
        let offsets: Vec<i64> = (0..=6).map(|i| i * 4).collect();
        let t = TokenPriorityGraphs::build(&tokens, &offsets, &[1i64, 5, 5, 0, 1, 3], 6, false).unwrap();
        let (toks, vals) = svm_column_one_hot(t.graph(2).unwrap()).unwrap();
        let expect = [(0u32, 0.6), (1, -0.4), (2, -0.4), (3, -0.4), (5, 0.6)];
        for (tk, v) in expect {
            let i = toks.iter().position(|&x| x == tk).unwrap();
            assert!((vals[i] - v).abs() < 1e-14, "{tk}: {}", vals[i]);
        }
        let (toks, vals) = svm_column_one_hot(t.graph(4).unwrap()).unwrap();
        let i = toks.iter().position(|&x| x == 1).unwrap();
        assert!((vals[i] - 5.0 / 6.0).abs() < 1e-14);
        // E = I reproduces the one-hot answer.
        let mut eye = vec![0.0; 36];
        for i in 0..6 {
            eye[i * 7] = 1.0;
        }
        let wg = graph_svm_embedded(&t, &eye, 6).unwrap();
        assert!((wg[2] - 0.6).abs() < 1e-7);
        assert!((wg[6 + 4] - 5.0 / 6.0).abs() < 1e-7);
    }
}
