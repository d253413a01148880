//! Sparse LU path (faer's supernodal/simplicial LU with partial pivoting) for the same
//! reduced systems as [`super::gth`]: `(D - Q) x = r` with `D_i` the off-diagonal row sum
//! plus exit mass. Fast on large well-conditioned chains; unlike GTH it subtracts, so on
//! chains with rare transitions it loses about `log10(1 / eps)` digits.

use faer::prelude::Solve;
use faer::sparse::{SparseColMat, Triplet};
use faer::Mat;

use super::gth::Reduced;
use crate::error::{Error, Result};

pub fn solve(red: Reduced) -> Result<Vec<f64>> {
    let m = red.m;
    let c = red.c;
    if m == 0 {
        return Ok(Vec::new());
    }
    let nnz: usize = red.nnz() + m;
    let mut trip = Vec::new();
    trip.try_reserve_exact(nnz).map_err(|_| Error::too_large("P", "not enough memory for the LU path"))?;
    for i in 0..m {
        let (ix, vs) = red.row(i);
        let mut d = red.exit[i];
        for (&j, &v) in ix.iter().zip(vs) {
            d += v;
            trip.push(Triplet::new(i, j, -v));
        }
        trip.push(Triplet::new(i, i, d));
    }
    let a = SparseColMat::<usize, f64>::try_new_from_triplets(m, m, &trip)
        .map_err(|e| Error::Numerical(format!("building the sparse matrix failed: {e:?}")))?;
    drop(trip);
    let lu = a.sp_lu().map_err(|e| Error::Numerical(format!("sparse LU failed: {e:?}")))?;
    let mut rhs = Mat::<f64>::from_fn(m, c, |i, t| red.rhs[i * c + t]);
    lu.solve_in_place(rhs.as_mut());
    let mut x = vec![0.0; m * c];
    for i in 0..m {
        for t in 0..c {
            x[i * c + t] = rhs[(i, t)];
        }
    }
    if let Some(bad) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::Numerical(format!(
            "sparse LU produced a non-finite value at state {} (singular or ill-conditioned system; use method='gth')",
            bad / c.max(1)
        )));
    }
    // (D - Q) is a non-singular M-matrix and every right-hand side here is non-negative, so
    // the exact solution is non-negative: a negative value means the subtractions destroyed
    // every digit (rare transitions), and the answer must not be returned as if it were one.
    if let Some(bad) = x.iter().position(|&v| v < 0.0) {
        return Err(Error::Numerical(format!(
            "sparse LU lost all accuracy (a negative value {:.3e} at state {}: the chain has transitions too rare \
             for a subtracting solver); use method='gth'",
            x[bad],
            bad / c.max(1)
        )));
    }
    Ok(x)
}
