//! The output of a selective state-space layer (Mamba-1, Mamba-2) from its native parameters:
//! the recurrence `h_t = exp(delta_t a) h_{t-1} + delta_t b_t u_t`, `y_t = c_t . h_t + d u_t`
//! run in float64, one operator per task. This is what `ess.analyze` uses to check at run time
//! that the parameters it extracted reproduce the layer's own output (the ESS itself comes from
//! [`super::structured`]).

use rayon::prelude::*;

use crate::error::{Error, Result};

/// The native parameters of a selective SSM layer (row-major arrays).
#[derive(Clone, Copy, Debug)]
pub struct SelectiveParams<'a> {
    /// Operators (channels of Mamba-1, heads of Mamba-2).
    pub ops: usize,
    /// Sequence length `L`.
    pub l: usize,
    /// State size `N`.
    pub n: usize,
    /// `a`: `ops x N` (diagonal transitions) or `ops` (`scalar`: one decay per operator).
    pub a: &'a [f64],
    /// Step sizes: `L x ops`.
    pub delta: &'a [f64],
    /// `b`, `c`: `L x N` (shared by all operators) or `L x ops x N`.
    pub b: &'a [f64],
    pub c: &'a [f64],
    /// Skip term per operator (`ops`), or none.
    pub d: Option<&'a [f64]>,
    /// Mamba-2's scalar decay `exp(delta a)` per operator and step.
    pub scalar: bool,
}

/// Channels per block of the Mamba-1 path of [`selective_apply`].
const LANES: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2(p: &SelectiveParams<'_>, o0: usize, u: &[f64], y: &mut [f64]) {
    block_body(p, o0, u, y)
}

/// Channels `o0 .. o0 + LANES` of a Mamba-1 layer (`m = 1`, diagonal transitions, shared `b`, `c`):
/// `u` and `y` hold their `LANES x L` inputs and outputs. Per channel, the operations of the
/// one-by-one loop of [`selective_apply`] in the same order.
#[inline(always)]
fn block_body(p: &SelectiveParams<'_>, o0: usize, u: &[f64], y: &mut [f64]) {
    let (ops, l, n) = (p.ops, p.l, p.n);
    let mut h = vec![[0.0f64; LANES]; n];
    // (state-major, lane-minor: arg[k * LANES + q] = delta_t[o0 + q] * a[o0 + q, k])
    let mut arg = vec![0.0f64; n * LANES];
    let mut dec = vec![0.0f64; n * LANES];
    for t in 0..l {
        let mut dl = [0.0f64; LANES];
        dl.copy_from_slice(&p.delta[t * ops + o0..t * ops + o0 + LANES]);
        for k in 0..n {
            for q in 0..LANES {
                arg[k * LANES + q] = dl[q] * p.a[(o0 + q) * n + k];
            }
        }
        crate::exp::exp_into(&arg, &mut dec);
        let bt = &p.b[t * n..(t + 1) * n];
        let ct = &p.c[t * n..(t + 1) * n];
        let mut u0 = [0.0f64; LANES];
        for (q, x) in u0.iter_mut().enumerate() {
            *x = u[q * l + t];
        }
        let mut acc = [0.0f64; LANES];
        for k in 0..n {
            let (hk, dk) = (&mut h[k], &dec[k * LANES..(k + 1) * LANES]);
            for q in 0..LANES {
                let v = dk[q] * hk[q] + dl[q] * bt[k] * u0[q];
                hk[q] = v;
                acc[q] += ct[k] * v;
            }
        }
        for q in 0..LANES {
            y[q * l + t] = acc[q] + p.d.map_or(0.0, |d| d[o0 + q] * u0[q]);
        }
    }
}

/// `y = T u` for the inputs `u` (`ops x L x m`, `m` input columns per operator: 1 for Mamba-1,
/// the head dimension for Mamba-2), by the recurrence in float64: `ops x L x m`. Operators run
/// in parallel; a pending interrupt is noticed between operators.
///
/// Errors: `Shape` for inconsistent lengths, `TooLarge` when the output cannot be allocated.
pub fn selective_apply(p: &SelectiveParams<'_>, u: &[f64], m: usize) -> Result<Vec<f64>> {
    let (ops, l, n) = (p.ops, p.l, p.n);
    let want = |arg: &str, got: usize, len: Option<usize>, what: &str| -> Result<()> {
        match len {
            Some(len) if len == got => Ok(()),
            _ => Err(Error::shape(arg, format!("expected {what}, got {got} values"))),
        }
    };
    let alen = if p.scalar { Some(ops) } else { ops.checked_mul(n) };
    want("a", p.a.len(), alen, "one value per operator (scalar) or ops x N")?;
    want("delta", p.delta.len(), l.checked_mul(ops), "L x ops")?;
    let shared = l.checked_mul(n);
    for (arg, x) in [("b", p.b), ("c", p.c)] {
        if Some(x.len()) != shared {
            want(arg, x.len(), shared.and_then(|s| s.checked_mul(ops)), "L x N or L x ops x N")?;
        }
    }
    let bshared = Some(p.b.len()) == shared;
    let cshared = Some(p.c.len()) == shared;
    if let Some(d) = p.d {
        want("d", d.len(), Some(ops), "one value per operator")?;
    }
    let per = l.checked_mul(m).ok_or_else(|| Error::too_large("u", "L x m overflows"))?;
    want("u", u.len(), per.checked_mul(ops), "ops x L x m")?;
    let mut y = crate::mem::try_filled("u", u.len(), 0.0f64, "the layer output")?;
    if per == 0 || (n == 0 && p.d.is_none()) {
        return Ok(y);
    }
    // Mamba-1 (one input column, diagonal transitions, `b` and `c` shared by the channels): eight
    // channels at a time, lane `q` of every vector is channel `o0 + q`, with the same operations per
    // channel as below (so the same values bit for bit); the channels left over go one by one.
    let blocked = if m == 1 && !p.scalar && bshared && cshared { ops - ops % LANES } else { 0 };
    if blocked > 0 {
        let (yb, _) = y.split_at_mut(blocked * per);
        yb.par_chunks_mut(LANES * per).enumerate().try_for_each(|(blk, yo)| -> Result<()> {
            crate::interrupt::check()?;
            let o0 = blk * LANES;
            let uo = &u[o0 * per..(o0 + LANES) * per];
            #[cfg(target_arch = "x86_64")]
            if crate::cpu::has_avx2_fma() {
                // SAFETY: the processor has AVX2 (the body uses no fused multiply-add).
                unsafe { block_avx2(p, o0, uo, yo) };
                return Ok(());
            }
            block_body(p, o0, uo, yo);
            Ok(())
        })?;
    }
    y[blocked * per..].par_chunks_mut(per).enumerate().try_for_each(|(i, yo)| -> Result<()> {
        let o = blocked + i;
        crate::interrupt::check()?;
        let uo = &u[o * per..(o + 1) * per];
        let mut h = vec![0.0f64; n * m];
        let mut dec = vec![0.0f64; n];
        let mut arg = vec![0.0f64; n];
        for t in 0..l {
            let dl = p.delta[t * ops + o];
            if p.scalar {
                dec.fill(crate::exp::exp(dl * p.a[o]));
            } else {
                for (x, &a) in arg.iter_mut().zip(&p.a[o * n..(o + 1) * n]) {
                    *x = dl * a;
                }
                crate::exp::exp_into(&arg, &mut dec);
            }
            let bt = if bshared { &p.b[t * n..(t + 1) * n] } else { &p.b[(t * ops + o) * n..(t * ops + o + 1) * n] };
            let ct = if cshared { &p.c[t * n..(t + 1) * n] } else { &p.c[(t * ops + o) * n..(t * ops + o + 1) * n] };
            let ut = &uo[t * m..(t + 1) * m];
            let yt = &mut yo[t * m..(t + 1) * m];
            if m == 1 {
                // (one input column: Mamba-1's channels)
                let (u0, mut acc) = (ut[0], 0.0);
                for k in 0..n {
                    let hk = dec[k] * h[k] + dl * bt[k] * u0;
                    h[k] = hk;
                    acc += ct[k] * hk;
                }
                yt[0] = acc + p.d.map_or(0.0, |d| d[o] * u0);
                continue;
            }
            for k in 0..n {
                let (g, w, ck) = (dec[k], dl * bt[k], ct[k]);
                let hk = &mut h[k * m..(k + 1) * m];
                for ((hv, &uv), yv) in hk.iter_mut().zip(ut).zip(yt.iter_mut()) {
                    *hv = g * *hv + w * uv;
                    *yv += ck * *hv;
                }
            }
            if let Some(d) = p.d {
                for (yv, &uv) in yt.iter_mut().zip(ut) {
                    *yv += d[o] * uv;
                }
            }
        }
        Ok(())
    })?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
    }

    /// The parameters of a layer of `ops` operators, length `l`, state size `n`.
    fn params<'a>(
        (ops, l, n): (usize, usize, usize),
        a: &'a [f64],
        delta: &'a [f64],
        (b, c): (&'a [f64], &'a [f64]),
        d: Option<&'a [f64]>,
        scalar: bool,
    ) -> SelectiveParams<'a> {
        SelectiveParams { ops, l, n, a, delta, b, c, d, scalar }
    }

    /// Against the operator formed entry by entry: `T[t, s] = c_t . (prod_{r=s+1..t} A_r) b_s`
    /// (plus `d` on the diagonal), applied as a matrix.
    #[test]
    fn matches_the_materialised_operator() {
        let mut seed = 4u64;
        for &(ops, l, n, m, scalar, shared, skip) in &[
            (3usize, 7usize, 4usize, 1usize, false, true, true),
            (2, 9, 3, 2, true, false, false),
            (1, 1, 2, 3, false, false, true),
            (4, 5, 1, 1, true, true, true),
        ] {
            let a: Vec<f64> = (0..if scalar { ops } else { ops * n }).map(|_| -1.0 - lcg(&mut seed)).collect();
            let delta: Vec<f64> = (0..l * ops).map(|_| 0.3 + 0.2 * lcg(&mut seed)).collect();
            let bl = if shared { l * n } else { l * ops * n };
            let b: Vec<f64> = (0..bl).map(|_| lcg(&mut seed)).collect();
            let c: Vec<f64> = (0..bl).map(|_| lcg(&mut seed)).collect();
            let d: Vec<f64> = (0..ops).map(|_| lcg(&mut seed)).collect();
            let u: Vec<f64> = (0..ops * l * m).map(|_| lcg(&mut seed)).collect();
            let p = params((ops, l, n), &a, &delta, (&b, &c), skip.then_some(&d[..]), scalar);
            let y = selective_apply(&p, &u, m).unwrap();
            let row = |x: &[f64], t: usize, o: usize| -> Vec<f64> {
                let s = if shared { t * n } else { (t * ops + o) * n };
                x[s..s + n].to_vec()
            };
            for o in 0..ops {
                for t in 0..l {
                    for j in 0..m {
                        let mut want = if skip { d[o] * u[(o * l + t) * m + j] } else { 0.0 };
                        for s in 0..=t {
                            let (bs, ct) = (row(&b, s, o), row(&c, t, o));
                            for k in 0..n {
                                let ak = if scalar { a[o] } else { a[o * n + k] };
                                let decay: f64 = (s + 1..=t).map(|r| (delta[r * ops + o] * ak).exp()).product();
                                want += ct[k] * decay * delta[s * ops + o] * bs[k] * u[(o * l + s) * m + j];
                            }
                        }
                        let got = y[(o * l + t) * m + j];
                        assert!((got - want).abs() <= 1e-12 * (1.0 + want.abs()), "{got} vs {want}");
                    }
                }
            }
        }
    }

    /// The Mamba-1 path (eight channels a block) gives each channel the values of the channel alone
    /// (the one-by-one loop), bit for bit, with the leftover channels and with and without `d`.
    #[test]
    fn blocks_of_channels_equal_each_channel_alone() {
        let mut seed = 9u64;
        for &(ops, l, n, skip) in
            &[(19usize, 13usize, 5usize, true), (8, 1, 16, false), (16, 40, 3, true), (9, 7, 1, false)]
        {
            let a: Vec<f64> = (0..ops * n).map(|_| -1.0 - 3.0 * lcg(&mut seed)).collect();
            let delta: Vec<f64> = (0..l * ops).map(|_| 0.3 + 0.5 * lcg(&mut seed)).collect();
            let b: Vec<f64> = (0..l * n).map(|_| lcg(&mut seed)).collect();
            let c: Vec<f64> = (0..l * n).map(|_| lcg(&mut seed)).collect();
            let d: Vec<f64> = (0..ops).map(|_| lcg(&mut seed)).collect();
            let u: Vec<f64> = (0..ops * l).map(|_| 1e3 * lcg(&mut seed)).collect();
            let p = params((ops, l, n), &a, &delta, (&b, &c), skip.then_some(&d[..]), false);
            let y = selective_apply(&p, &u, 1).unwrap();
            for o in 0..ops {
                let dl: Vec<f64> = (0..l).map(|t| delta[t * ops + o]).collect();
                let one = SelectiveParams {
                    ops: 1,
                    a: &a[o * n..(o + 1) * n],
                    delta: &dl,
                    d: if skip { Some(&d[o..o + 1]) } else { None },
                    ..p
                };
                let yo = selective_apply(&one, &u[o * l..(o + 1) * l], 1).unwrap();
                for t in 0..l {
                    assert_eq!(y[o * l + t].to_bits(), yo[t].to_bits(), "channel {o} of {ops}, t = {t}");
                }
            }
        }
    }

    #[test]
    fn shapes_are_checked() {
        let p = SelectiveParams {
            ops: 2,
            l: 3,
            n: 2,
            a: &[0.0; 4],
            delta: &[0.0; 6],
            b: &[0.0; 6],
            c: &[0.0; 6],
            d: None,
            scalar: false,
        };
        assert!(selective_apply(&p, &[0.0; 6], 1).is_ok());
        assert!(matches!(selective_apply(&p, &[0.0; 5], 1), Err(Error::Shape { .. })));
        let bad = SelectiveParams { a: &[0.0; 3], ..p };
        assert!(matches!(selective_apply(&bad, &[0.0; 6], 1), Err(Error::Shape { .. })));
        let bad = SelectiveParams { b: &[0.0; 7], ..p };
        assert!(matches!(selective_apply(&bad, &[0.0; 6], 1), Err(Error::Shape { .. })));
        let bad = SelectiveParams { d: Some(&[1.0; 3]), ..p };
        assert!(matches!(selective_apply(&bad, &[0.0; 6], 1), Err(Error::Shape { .. })));
    }
}
