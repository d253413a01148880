//! Binding of the graph kernels (`ess_core::graph`): SCC, condensation, token-priority
//! graphs, graph-SVM. Conversions and error mapping only; the GIL is released around
//! every heavy call. Functions are registered with a `graph_` prefix; the public API is
//! `ess.graph`.

use std::borrow::Cow;

use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use ess_core::graph::{
    graph_svm_embedded, graph_svm_one_hot, scc_from_edges, Condensation, ReachScratch, SccAlgorithm,
    TokenPriorityGraphs,
};
use ess_core::Error;

use crate::arrays::{contiguous_checked, float_array, id_array as ids, widened_checked, FloatArray, IdArray as Ids};
use crate::errors::{shape_error, IntoPy};

/// Both arrays as the same integer type (int32 pairs stay int32; mixed pairs become int64).
enum IdPair<'a> {
    I32(Cow<'a, [i32]>, Cow<'a, [i32]>),
    I64(Cow<'a, [i64]>, Cow<'a, [i64]>),
}

fn widen<'a>(a: &'a Ids<'_>, arg: &str) -> PyResult<Cow<'a, [i64]>> {
    match a {
        Ids::I64(x) => contiguous_checked(x, arg),
        Ids::I32(x) => {
            widened_checked(x.len(), arg)?;
            Ok(Cow::Owned(contiguous_checked(x, arg)?.iter().map(|&v| v as i64).collect()))
        }
    }
}

fn pair<'a>(a: &'a Ids<'_>, b: &'a Ids<'_>, arg_a: &str, arg_b: &str) -> PyResult<IdPair<'a>> {
    Ok(match (a, b) {
        (Ids::I32(x), Ids::I32(y)) => IdPair::I32(contiguous_checked(x, arg_a)?, contiguous_checked(y, arg_b)?),
        _ => IdPair::I64(widen(a, arg_a)?, widen(b, arg_b)?),
    })
}

fn n_nodes_arg(n: i64, arg: &str) -> PyResult<usize> {
    usize::try_from(n).map_err(|_| Error::invalid(arg, format!("must be non-negative, got {n}"))).py_err()
}

fn labels_array<'py>(py: Python<'py>, labels: Vec<u32>) -> Bound<'py, PyAny> {
    if labels.len() < i32::MAX as usize {
        let v: Vec<i32> = labels.into_iter().map(|x| x as i32).collect();
        v.into_pyarray(py).into_any()
    } else {
        let v: Vec<i64> = labels.into_iter().map(|x| x as i64).collect();
        v.into_pyarray(py).into_any()
    }
}

fn build_condensation(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    dst: &Bound<'_, PyAny>,
    n_nodes: i64,
    algorithm: &str,
    dag: bool,
) -> PyResult<Condensation> {
    let n = n_nodes_arg(n_nodes, "n_nodes")?;
    let alg = SccAlgorithm::parse("algorithm", algorithm).py_err()?;
    let s = ids(src, "src")?;
    let d = ids(dst, "dst")?;
    let p = pair(&s, &d, "src", "dst")?;
    crate::interrupt::detach(py, || {
        let (g, nc, labels) = match &p {
            IdPair::I32(a, b) => scc_from_edges(a, b, n, alg),
            IdPair::I64(a, b) => scc_from_edges(a, b, n, alg),
        }?;
        if dag {
            Ok(Condensation::from_labels(&g, nc, labels))
        } else {
            Ok(Condensation {
                n_components: nc,
                labels,
                sizes: Vec::new(),
                dag: ess_core::graph::Csr { n_nodes: 0, indptr: vec![0], indices: Vec::new() },
            })
        }
    })
}

/// `(n_components, labels)` of the graph `src[i] -> dst[i]` over `n_nodes` nodes.
#[pyfunction]
#[pyo3(signature = (src, dst, n_nodes, algorithm = "auto"))]
pub fn graph_scc<'py>(
    py: Python<'py>,
    src: &Bound<'py, PyAny>,
    dst: &Bound<'py, PyAny>,
    n_nodes: i64,
    algorithm: &str,
) -> PyResult<(usize, Bound<'py, PyAny>)> {
    let c = build_condensation(py, src, dst, n_nodes, algorithm, false)?;
    Ok((c.n_components, labels_array(py, c.labels)))
}

/// SCCs plus the condensation DAG, kept for reachability queries.
#[pyclass(module = "ess._core", frozen)]
pub struct GraphCondensation {
    inner: Condensation,
}

#[pymethods]
impl GraphCondensation {
    #[getter]
    fn n_components(&self) -> usize {
        self.inner.n_components
    }
    #[getter]
    fn labels<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        labels_array(py, self.inner.labels.clone())
    }
    #[getter]
    fn sizes<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.inner.sizes.iter().map(|&x| x as i64).collect::<Vec<_>>().into_pyarray(py)
    }
    #[getter]
    fn dag_indptr<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.inner.dag.indptr.iter().map(|&x| x as i64).collect::<Vec<_>>().into_pyarray(py)
    }
    #[getter]
    fn dag_indices<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.inner.dag.indices.iter().map(|&x| x as i64).collect::<Vec<_>>().into_pyarray(py)
    }
    /// Elementwise reachability `a[i] -> b[i]` between components (int64 arrays).
    fn reaches<'py>(&self, py: Python<'py>, a: Vec<i64>, b: Vec<i64>) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let nc = self.inner.n_components as i64;
        let conv = |v: &[i64], arg: &str| -> PyResult<Vec<u32>> {
            match v.iter().position(|&x| x < 0 || x >= nc) {
                Some(i) => {
                    Err(Error::out_of_range(arg, format!("entry {i} = {} is not a component in [0, {nc})", v[i])))
                        .py_err()
                }
                None => Ok(v.iter().map(|&x| x as u32).collect()),
            }
        };
        let a = conv(&a, "a")?;
        let b = conv(&b, "b")?;
        let r = crate::interrupt::detach(py, || self.inner.reaches_many(&a, &b))?;
        Ok(r.into_pyarray(py))
    }
}

#[pyfunction]
#[pyo3(signature = (src, dst, n_nodes, algorithm = "auto"))]
pub fn graph_condensation(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    dst: &Bound<'_, PyAny>,
    n_nodes: i64,
    algorithm: &str,
) -> PyResult<GraphCondensation> {
    Ok(GraphCondensation { inner: build_condensation(py, src, dst, n_nodes, algorithm, true)? })
}

/// Token-priority graphs of a dataset (one per last token).
#[pyclass(module = "ess._core", name = "TokenPriorityGraphs", frozen)]
pub struct PyTokenPriorityGraphs {
    inner: TokenPriorityGraphs,
}

fn u32s<'py>(py: Python<'py>, v: &[u32]) -> Bound<'py, PyArray1<i64>> {
    v.iter().map(|&x| x as i64).collect::<Vec<_>>().into_pyarray(py)
}
fn usizes<'py>(py: Python<'py>, v: &[usize]) -> Bound<'py, PyArray1<i64>> {
    v.iter().map(|&x| x as i64).collect::<Vec<_>>().into_pyarray(py)
}

type GraphParts<'py> = (
    usize,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
);

#[pymethods]
impl PyTokenPriorityGraphs {
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }
    /// Last tokens that have a graph, increasing.
    #[getter]
    fn last_tokens<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        let v: Vec<i64> = self.inner.graphs.iter().map(|g| g.last_token as i64).collect();
        v.into_pyarray(py)
    }
    #[getter]
    fn unrealisable<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        usizes(py, &self.inner.unrealisable)
    }
    /// Parts of the graph of last token `k` (None when no sample ends in `k`):
    /// `(n_samples, nodes, indptr, indices, labels, sizes, dag_indptr, dag_indices)`.
    fn graph<'py>(&self, py: Python<'py>, k: i64) -> PyResult<Option<GraphParts<'py>>> {
        if k < 0 || k as usize >= self.inner.vocab_size {
            return Err(Error::out_of_range("k", format!("{k} is not a token id in [0, {})", self.inner.vocab_size)))
                .py_err();
        }
        Ok(self.inner.graph(k as u32).map(|g| {
            (
                g.n_samples,
                u32s(py, &g.nodes),
                usizes(py, &g.graph.indptr),
                u32s(py, &g.graph.indices),
                u32s(py, &g.cond.labels),
                u32s(py, &g.cond.sizes),
                usizes(py, &g.cond.dag.indptr),
                u32s(py, &g.cond.dag.indices),
            )
        }))
    }
    /// Per graph: `(last_token, n_samples, n_nodes, n_edges, n_components, n_nontrivial_sccs, largest_scc)`.
    fn summary<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<i64>> {
        let gs = &self.inner.graphs;
        let mut out = Vec::with_capacity(gs.len() * 7);
        for g in gs {
            out.push(g.last_token as i64);
            out.push(g.n_samples as i64);
            out.push(g.graph.n_nodes as i64);
            out.push(g.graph.n_edges() as i64);
            out.push(g.cond.n_components as i64);
            out.push(g.cond.sizes.iter().filter(|&&s| s > 1).count() as i64);
            out.push(g.cond.sizes.iter().copied().max().unwrap_or(0) as i64);
        }
        let a = out.into_pyarray(py);
        a.reshape([gs.len(), 7]).expect("size matches")
    }
    /// Histogram of SCC sizes over all graphs: `(sizes, counts)`.
    fn scc_size_counts<'py>(&self, py: Python<'py>) -> (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>) {
        let (s, c) = self.inner.scc_size_counts();
        (usizes(py, &s), usizes(py, &c))
    }
    /// Hard retrieval of many windows: `(flat tokens, offsets, determined)`.
    fn retrieve<'py>(
        &self,
        py: Python<'py>,
        tokens: &Bound<'py, PyAny>,
        offsets: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<bool>>)> {
        let t = ids(tokens, "windows")?;
        let o = ids(offsets, "offsets")?;
        let t = widen(&t, "windows")?;
        let o = widen(&o, "offsets")?;
        let (flat, off, det) = crate::interrupt::detach(py, || self.inner.retrieve_many(&t, &o))?;
        Ok((u32s(py, &flat), usizes(py, &off), det.into_pyarray(py)))
    }
    /// One-hot graph-SVM as triplets `(rows, cols, values)`.
    fn svm_one_hot<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f64>>)> {
        let (r, c, v) = crate::interrupt::detach(py, || graph_svm_one_hot(&self.inner))?;
        Ok((u32s(py, &r), u32s(py, &c), v.into_pyarray(py)))
    }
    /// Graph-SVM `W` (d x d) for embeddings `E` (vocab_size x d, float64).
    fn svm_embedded<'py>(&self, py: Python<'py>, e: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let arr = float_array(e, "E")?;
        let shape = arr.shape();
        if shape.len() != 2 {
            return Err(shape_error("E", format!("must be two-dimensional (vocab_size, d), got shape {shape:?}")));
        }
        if shape[0] != self.inner.vocab_size {
            return Err(shape_error(
                "E",
                format!("must have vocab_size = {} rows, got shape {shape:?}", self.inner.vocab_size),
            ));
        }
        let d = shape[1];
        let data: Vec<f64> = match &arr {
            FloatArray::F64(a) => contiguous_checked(a, "E")?.into_owned(),
            FloatArray::F32(a) => contiguous_checked(a, "E")?.iter().map(|&x| x as f64).collect(),
        };
        let w = crate::interrupt::detach(py, || graph_svm_embedded(&self.inner, &data, d))?;
        w.into_pyarray(py).reshape([d, d])
    }
    /// Reachability between components of graph `k`: `a[i] -> b[i]`.
    fn reaches<'py>(&self, py: Python<'py>, k: i64, a: Vec<i64>, b: Vec<i64>) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let g = match (k >= 0).then(|| self.inner.graph(k as u32)).flatten() {
            Some(g) => g,
            None => return Err(Error::invalid("k", format!("no graph for last token {k}"))).py_err(),
        };
        let nc = g.cond.n_components as i64;
        let mut s = ReachScratch::default();
        let mut out = Vec::with_capacity(a.len());
        if a.len() != b.len() {
            return Err(shape_error("b", "a and b must have the same length"));
        }
        for (&x, &y) in a.iter().zip(&b) {
            if x < 0 || x >= nc || y < 0 || y >= nc {
                return Err(Error::out_of_range("a", format!("component pair ({x}, {y}) not in [0, {nc})"))).py_err();
            }
            out.push(g.cond.reaches(x as usize, y as usize, &mut s).py_err()?);
        }
        Ok(out.into_pyarray(py))
    }
}

#[pyfunction]
pub fn graph_token_priority(
    py: Python<'_>,
    tokens: &Bound<'_, PyAny>,
    offsets: &Bound<'_, PyAny>,
    labels: &Bound<'_, PyAny>,
    vocab_size: i64,
    allow_unrealisable: bool,
) -> PyResult<PyTokenPriorityGraphs> {
    let k = n_nodes_arg(vocab_size, "vocab_size")?;
    let t = ids(tokens, "windows")?;
    let o = ids(offsets, "offsets")?;
    let l = ids(labels, "labels")?;
    let o = widen(&o, "offsets")?;
    let p = pair(&t, &l, "windows", "labels")?;
    let inner = crate::interrupt::detach(py, || match &p {
        IdPair::I32(t, l) => TokenPriorityGraphs::build(t, &o, l, k, allow_unrealisable),
        IdPair::I64(t, l) => TokenPriorityGraphs::build(t, &o, l, k, allow_unrealisable),
    })?;
    Ok(PyTokenPriorityGraphs { inner })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(graph_scc, m)?)?;
    m.add_function(wrap_pyfunction!(graph_condensation, m)?)?;
    m.add_function(wrap_pyfunction!(graph_token_priority, m)?)?;
    m.add_class::<GraphCondensation>()?;
    m.add_class::<PyTokenPriorityGraphs>()?;
    Ok(())
}
