//! Directed graphs: CSR construction from edge arrays, strongly connected components
//! (iterative, linear time), condensation DAG and reachability, token-priority graphs of
//! next-token data and the graph-SVM of one attention layer.
//!
//! Reusable entry points for other modules:
//! * [`csr_from_edges`]: CSR adjacency from `src`/`dst` id arrays (parallel counting sort);
//! * [`strongly_connected_components`]: `(n_components, labels)` from `indptr`/`indices`,
//!   labels numbered sinks first (a reverse topological order of the condensation);
//! * [`Condensation`]: component DAG, topological order, reachability queries.

pub mod csr;
pub mod scc;
pub mod svm;
pub mod tpg;

pub use csr::{csr_and_transpose, csr_from_edges, Csr, NodeId};
pub use scc::{
    scc_csr, scc_from_edges, scc_fwbw, strongly_connected_components, Condensation, ReachScratch, SccAlgorithm,
};
pub use svm::{graph_svm_embedded, graph_svm_one_hot, svm_column_one_hot};
pub use tpg::{TokenGraph, TokenPriorityGraphs};
