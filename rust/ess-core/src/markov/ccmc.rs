//! Context-conditioned Markov chain (CCMC) of one-layer self-attention: batched simulation.
//!
//! A trajectory starts from a prompt `X`; with token counts `m_j` (or position-weighted
//! counts) and last token `k`, the next token is drawn from
//! `P_X(k -> j) = m_j P[k, j] / sum_i m_i P[k, i]`, appended (its count grows by the weight
//! of its position) and becomes the new last token. The support never grows.
//!
//! Random numbers: xoshiro256++ seeded per trajectory from `(seed, trajectory index)` by
//! SplitMix64, so results do not depend on the number of threads. (A 30-line generator
//! written here because no RNG crate is vendored in this workspace; it reproduces the
//! published xoshiro256++ reference sequence, see the unit test.)

use rayon::prelude::*;

use super::chain::ChainRef;
use crate::error::{check_finite, checked_size, Error, Result};

#[inline]
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ (Blackman & Vigna).
pub struct Xoshiro256pp {
    s: [u64; 4],
}

impl Xoshiro256pp {
    pub fn from_state(s: [u64; 4]) -> Self {
        Xoshiro256pp { s }
    }
    pub fn seed(seed: u64, stream: u64) -> Self {
        let mut sm = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Xoshiro256pp { s: [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)] }
    }
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
    /// Uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Output of [`simulate`]: per trajectory and step (row-major `n_traj x n_steps`).
pub struct Simulation {
    /// Sampled tokens.
    pub tokens: Vec<i64>,
    /// Effective support of the next-token law before the step: `exp(entropy)`.
    pub support: Vec<f64>,
    /// Winner share after the step: largest (weighted) count over the total.
    pub winner_share: Vec<f64>,
}

/// Simulate `n_traj` independent continuations of `prompt` for `n_steps` tokens under the
/// base chain `p` (`v x v` row-major, row-stochastic). `weights` (optional) gives the weight
/// of every position `0 .. len(prompt) + n_steps` (default 1: plain counts).
pub fn simulate(
    p: &[f64],
    v: usize,
    prompt: &[i64],
    weights: Option<&[f64]>,
    n_traj: usize,
    n_steps: usize,
    seed: u64,
) -> Result<Simulation> {
    ChainRef::Dense { n: v, p }.validate("P")?;
    check_prompt(prompt, v)?;
    check_weights(weights, prompt.len() + n_steps)?;
    let size = output_size(n_traj, n_steps)?;
    let start = Start::new(v, prompt, weights);
    let mut tokens = vec![0i64; size];
    let mut supp = vec![0.0; size];
    let mut win = vec![0.0; size];
    let results: Vec<Result<()>> = tokens
        .par_chunks_mut(n_steps.max(1))
        .zip(supp.par_chunks_mut(n_steps.max(1)))
        .zip(win.par_chunks_mut(n_steps.max(1)))
        .enumerate()
        .map(|(traj, ((tk, sp), wn))| {
            if n_steps == 0 {
                return Ok(());
            }
            let mut rng = Xoshiro256pp::seed(seed, traj as u64);
            start.trajectory(p, v, &mut rng, tk, sp, wn)
        })
        .collect();
    for r in results {
        r?;
    }
    Ok(Simulation { tokens, support: supp, winner_share: win })
}

fn check_prompt(prompt: &[i64], v: usize) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::shape("prompt", "the prompt is empty"));
    }
    for &t in prompt {
        if t < 0 || t >= v as i64 {
            return Err(Error::out_of_range("prompt", format!("token {t} is outside the vocabulary [0, {v})")));
        }
    }
    Ok(())
}

/// `total_len` finite positive weights, when given.
fn check_weights(weights: Option<&[f64]>, total_len: usize) -> Result<()> {
    let Some(w) = weights else { return Ok(()) };
    if w.len() != total_len {
        return Err(Error::shape(
            "position_weights",
            format!("needs len(prompt) + n_steps = {total_len} entries, got {}", w.len()),
        ));
    }
    check_finite("position_weights", w)?;
    if let Some(i) = w.iter().position(|&x| !(x > 0.0)) {
        return Err(Error::invalid("position_weights", format!("weights must be > 0; entry {i} is {}", w[i])));
    }
    Ok(())
}

/// `n_traj * n_steps`, after the memory gate for the three outputs.
fn output_size(n_traj: usize, n_steps: usize) -> Result<usize> {
    // name the argument that makes the request large
    let arg = if n_traj >= n_steps { "n_traj" } else { "n_steps" };
    let size = checked_size(arg, &[n_traj, n_steps])?;
    // tokens (i64), support sizes and winner shares (f64) per step of every trajectory
    crate::mem::gate(arg, (size as u64).checked_mul(24), &format!("{n_traj} trajectories of {n_steps} steps"))?;
    if size > (1usize << 31) {
        return Err(Error::too_large("n_steps", format!("n_traj * n_steps = {size} outputs is too many")));
    }
    Ok(size)
}

/// What every trajectory starts from: the support (the distinct prompt tokens), their
/// initial (weighted) counts, the slot of the last prompt token, and the position weights.
struct Start<'a> {
    support: Vec<usize>,
    init_c: Vec<f64>,
    last0: usize,
    p0: f64,
    prompt_len: usize,
    weights: Option<&'a [f64]>,
}

impl<'a> Start<'a> {
    /// `prompt` non-empty with tokens in `[0, v)`.
    fn new(v: usize, prompt: &[i64], weights: Option<&'a [f64]>) -> Start<'a> {
        let wt = |t: usize| weights.map(|w| w[t]).unwrap_or(1.0);
        let mut init = vec![0.0; v];
        for (t, &x) in prompt.iter().enumerate() {
            init[x as usize] += wt(t);
        }
        let support: Vec<usize> = (0..v).filter(|&j| init[j] > 0.0).collect();
        let init_c: Vec<f64> = support.iter().map(|&j| init[j]).collect();
        let mut slot = vec![usize::MAX; v];
        for (s, &j) in support.iter().enumerate() {
            slot[j] = s;
        }
        let last0 = slot[*prompt.last().unwrap_or(&0) as usize];
        let p0: f64 = init_c.iter().sum();
        Start { support, init_c, last0, p0, prompt_len: prompt.len(), weights }
    }

    /// One trajectory of `tk.len()` steps: sampled tokens into `tk`, the effective support
    /// before each step into `sp`, the winner share after it into `wn`.
    fn trajectory(
        &self,
        p: &[f64],
        v: usize,
        rng: &mut Xoshiro256pp,
        tk: &mut [i64],
        sp: &mut [f64],
        wn: &mut [f64],
    ) -> Result<()> {
        let support = &self.support;
        let ns = support.len();
        let mut c = self.init_c.clone();
        let mut total = self.p0;
        let mut k = self.last0;
        let mut w = vec![0.0; ns];
        for step in 0..tk.len() {
            if step % 1024 == 0 {
                crate::interrupt::check()?;
            }
            let row = &p[support[k] * v..(support[k] + 1) * v];
            let mut z = 0.0;
            for s in 0..ns {
                w[s] = c[s] * row[support[s]];
                z += w[s];
            }
            if !(z > 0.0) {
                return Err(Error::invalid(
                    "P",
                    format!("token {} gives zero probability to every token of the prompt", support[k]),
                ));
            }
            let h = entropy(&w, z);
            let pick = sample(&w, rng.next_f64() * z);
            let add = self.weights.map(|w| w[self.prompt_len + step]).unwrap_or(1.0);
            c[pick] += add;
            total += add;
            k = pick;
            tk[step] = support[pick] as i64;
            sp[step] = h.exp();
            let mx = c.iter().cloned().fold(0.0, f64::max);
            wn[step] = mx / total;
        }
        Ok(())
    }
}

/// Entropy (nats) of the law `w / z`.
#[inline]
fn entropy(w: &[f64], z: f64) -> f64 {
    let mut h = 0.0;
    for &x in w {
        if x > 0.0 {
            let q = x / z;
            h -= q * q.ln();
        }
    }
    h
}

/// Inverse-CDF draw from the unnormalised weights `w` (not all zero) at `u` in `[0, sum w)`.
#[inline]
fn sample(w: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    let mut pick = w.len() - 1;
    for (s, &x) in w.iter().enumerate() {
        acc += x;
        if u < acc {
            pick = s;
            break;
        }
    }
    while w[pick] == 0.0 && pick > 0 {
        pick -= 1; // rounding at the top end: the last token with mass
    }
    pick
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_reference() {
        // reference: state [1, 2, 3, 4] gives 41943041, 58720359, 3588806011781223 (xoshiro256plusplus.c)
        let mut r = Xoshiro256pp::from_state([1, 2, 3, 4]);
        assert_eq!(r.next_u64(), 41943041);
        assert_eq!(r.next_u64(), 58720359);
        assert_eq!(r.next_u64(), 3588806011781223);
    }
}
