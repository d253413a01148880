//! Property-based fuzzing of the core's public entry points over shapes, sizes and values.
//!
//! Every call must return (`Ok` or a typed `Err`), never panic, and every `Ok` must satisfy
//! the invariants the documentation promises. The number of cases per property is
//! `PROPTEST_CASES` (default 64, under a second in all; CI runs `cargo test` with the default,
//! `PROPTEST_CASES=20000 cargo test -p ess-core --test fuzz` fuzzes for a few minutes). Failing
//! inputs are shrunk and saved in `rust/ess-core/tests/fuzz.proptest-regressions`, which is
//! committed and replayed before new cases.

use ess_core::ess::structured::{ssm_ess, SsmFactors, Transition};
use ess_core::ess::{dense_ess, DenseOptions, Method};
use ess_core::graph::{scc_from_edges, SccAlgorithm};
use ess_core::markov::{self, ChainRef};
use ess_core::Error;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Values that break numerical code: zeros, signed extremes, subnormals, NaN and infinities,
/// and ordinary numbers.
fn hostile() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -10.0f64..10.0,
        1 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(1e300),
        1 => Just(-1e300),
        1 => Just(1e-310),
        1 => Just(f64::MIN_POSITIVE),
        1 => Just(f64::MAX),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => (-300i32..300).prop_map(|e| 2f64.powi(e)),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![Just(Method::Tolerance), Just(Method::Entropy), Just(Method::Both)]
}

fn tol() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![Just(None), Just(Some(-1.0)), Just(Some(f64::NAN)), (0.0f64..1.0).prop_map(Some), Just(Some(1e300))]
}

fn check_curves(c: &ess_core::ess::EssCurves, positions: &[usize], l: usize) {
    for (i, &t) in positions.iter().enumerate().cycle().take(c.batch * c.n_positions) {
        let bound = t.min(l - t) as f64;
        for b in 0..c.batch {
            let k = b * c.n_positions + i;
            if let Some(tc) = &c.tolerance {
                assert!(tc[k] >= 0.0 && tc[k] <= bound && tc[k].fract() == 0.0, "tolerance {} at t = {t}", tc[k]);
            }
            if let Some(e) = &c.entropy {
                assert!(e[k] >= 0.0 && e[k] <= bound + 1e-9, "entropy {} at t = {t}", e[k]);
                if let Some(tc) = &c.tolerance {
                    // entropy-ESS counts every non-zero singular value: it can exceed a count
                    // at a threshold only up to the number of values at or below that threshold
                    assert!(e[k].is_finite() && tc[k].is_finite());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn dense_never_panics(
        batch in 0usize..3,
        l in 0usize..14,
        values in prop::collection::vec(hostile(), 0..600),
        method in method(),
        atol in tol(),
        rtol in tol(),
        positions in prop::option::of(prop::collection::vec(0usize..20, 0..6)),
        truncate in any::<bool>(),
    ) {
        let need = batch * l * l;
        let mut data: Vec<f64> = values.iter().copied().cycle().take(need).collect();
        if data.len() < need { data.resize(need, 0.25); }
        if truncate && !data.is_empty() { data.pop(); }
        let opts = DenseOptions { method, atol, rtol, positions: positions.clone() };
        match dense_ess(&data, batch, l, &opts) {
            Ok(c) => {
                let pos: Vec<usize> = positions.unwrap_or_else(|| (0..l).collect());
                prop_assert_eq!(c.n_positions, pos.len());
                check_curves(&c, &pos, l);
            }
            Err(Error::Numerical(m)) => prop_assert!(false, "numerical failure on valid input: {}", m),
            Err(_) => {}
        }
    }

    #[test]
    fn structured_never_panics(
        batch in 0usize..3,
        l in 0usize..10,
        n in 0usize..4,
        kind in prop_oneof![Just(Transition::Identity), Just(Transition::Scalar), Just(Transition::Diagonal), Just(Transition::Dense)],
        values in prop::collection::vec(hostile(), 1..300),
        method in method(),
        short in any::<bool>(),
    ) {
        let take = |k: usize, off: usize| -> Vec<f64> { values.iter().copied().cycle().skip(off).take(k).collect() };
        let na = match kind {
            Transition::Identity => 0,
            Transition::Scalar => batch * l,
            Transition::Diagonal => batch * l * n,
            Transition::Dense => batch * l * n * n,
        };
        let a = take(na, 0);
        let b = take(batch * l * n - usize::from(short && batch * l * n > 0), 7);
        let c = take(batch * l * n, 13);
        let f = SsmFactors { batch, l, n, kind, a: &a, b: &b, c: &c };
        let opts = DenseOptions { method, ..Default::default() };
        if let Ok(cv) = ssm_ess(&f, &opts) {
            check_curves(&cv, &(0..l).collect::<Vec<_>>(), l);
        }
    }

    #[test]
    fn scc_never_panics(
        n in 0usize..40,
        edges in prop::collection::vec((-3i64..45, -3i64..45), 0..200),
        alg in prop_oneof![Just("auto"), Just("pearce"), Just("fwbw")],
    ) {
        let (src, dst): (Vec<i64>, Vec<i64>) = edges.into_iter().unzip();
        let alg = SccAlgorithm::parse("algorithm", alg).unwrap();
        if let Ok((_, nc, labels)) = scc_from_edges(&src, &dst, n, alg) {
            prop_assert_eq!(labels.len(), n);
            prop_assert!(labels.iter().all(|&c| (c as usize) < nc.max(1)));
            // every edge inside the graph joins components in a consistent way: u -> v and
            // v -> u in the same component means both labels are equal (checked via mutual edges)
            for (&u, &v) in src.iter().zip(&dst) {
                if src.iter().zip(&dst).any(|(&a, &b)| a == v && b == u) {
                    prop_assert_eq!(labels[u as usize], labels[v as usize]);
                }
            }
        }
    }

    #[test]
    fn markov_never_panics(
        n in 0usize..9,
        values in prop::collection::vec(prop_oneof![4 => 0.0f64..1.0, 1 => Just(0.0), 1 => hostile()], 1..100),
        normalise in any::<bool>(),
        target in prop::collection::vec(-2i64..12, 0..4),
        method in prop_oneof![Just("auto"), Just("gth"), Just("lu")],
    ) {
        let mut p: Vec<f64> = values.iter().copied().cycle().take(n * n).collect();
        if normalise {
            for row in p.chunks_mut(n.max(1)) {
                let s: f64 = row.iter().sum();
                if s.is_finite() && s > 0.0 { for x in row.iter_mut() { *x /= s; } }
            }
        }
        let chain = ChainRef::Dense { n, p: &p };
        let m = markov::Method::parse("method", method).unwrap();
        if let Ok(h) = markov::hitting_times(&chain, &target, m) {
            prop_assert_eq!(h.len(), n);
            prop_assert!(h.iter().all(|&x| x >= 0.0), "negative hitting time {:?}", h);
        }
        if let Ok(pi) = markov::stationary_distribution(&chain) {
            prop_assert!(pi.iter().all(|&x| (0.0..=1.0 + 1e-9).contains(&x)));
        }
        let _ = markov::mean_first_passage_times(&chain);
        let _ = markov::kemeny_constant(&chain);
        let _ = markov::classes(&chain, 0.0);
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 3 - 1).collect();
        let _ = markov::absorption_probabilities(&chain, &labels, 2, m);
    }

    #[test]
    fn ccmc_never_panics(
        v in 0usize..6,
        values in prop::collection::vec(0.0f64..1.0, 1..40),
        prompt in prop::collection::vec(-1i64..8, 0..6),
        n_traj in 0usize..4,
        n_steps in 0usize..20,
        seed in any::<u64>(),
    ) {
        let mut p: Vec<f64> = values.iter().copied().cycle().take(v * v).collect();
        for row in p.chunks_mut(v.max(1)) {
            let s: f64 = row.iter().sum();
            if s > 0.0 { for x in row.iter_mut() { *x /= s; } }
        }
        let _ = markov::ccmc::simulate(&p, v, &prompt, None, n_traj, n_steps, seed);
    }
}
