//! Seed ranges (`--seeds`) and their shards (`--shard K/N`).

/// Most seeds one sweep (or one shard of it) runs: a bound on the seed list
/// it holds; shard a larger sweep (`--shard K/N`).
pub const MAX_SEEDS: u64 = 1_000_000;

/// `--seeds`: `A..B` (B excluded) or `A..=B`, as a non-empty inclusive range.
/// An empty range is an error: a CI gate must never pass on zero work. The
/// end never wraps (`18446744073709551615..=18446744073709551615` is one
/// seed).
pub fn parse_seeds(s: &str) -> Result<std::ops::RangeInclusive<u64>, String> {
    let bad = |why: &str| format!("{s:?}: {why}; write seeds as A..B (B excluded) or A..=B");
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| bad("not a seed number"))
    };
    let (first, last) = if let Some((a, b)) = s.split_once("..=") {
        (num(a)?, num(b)?)
    } else if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (num(a)?, num(b)?);
        if b == 0 {
            return Err(bad("the range is empty"));
        }
        (a, b - 1)
    } else {
        return Err(bad("not a range"));
    };
    if first > last {
        return Err(bad("the range is empty"));
    }
    Ok(first..=last)
}

/// How many seeds shard `k` of `n` (1-based) of `seeds` holds.
pub fn shard_len(seeds: &std::ops::RangeInclusive<u64>, k: u64, n: u64) -> u64 {
    let total = u128::from(seeds.end() - seeds.start()) + 1;
    ((total + u128::from(n) - u128::from(k)) / u128::from(n)) as u64
}

/// `seeds` split for shard `k` of `n` (1-based): every `n`-th seed from the
/// `k`-th, so shards are disjoint, cover the range and share the work.
pub fn shard(seeds: std::ops::RangeInclusive<u64>, k: u64, n: u64) -> Vec<u64> {
    assert!(n >= 1 && (1..=n).contains(&k), "shard {k}/{n}");
    let skip = usize::try_from(k - 1).expect("shard index fits usize");
    let step = usize::try_from(n).expect("shard count fits usize");
    seeds.skip(skip).step_by(step).collect()
}

/// One shard of a seed range: the `k`-th of `n` (1-based), every `n`-th
/// seed from the `k`-th (see [`shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: u64,
    pub n: u64,
}

impl Shard {
    /// The whole range, as one machine sweeps it.
    pub const WHOLE: Shard = Shard { k: 1, n: 1 };

    pub fn new(k: u64, n: u64) -> Result<Shard, String> {
        if n >= 1 && (1..=n).contains(&k) {
            Ok(Shard { k, n })
        } else {
            Err(format!("shard {k}/{n}: K must be within 1..=N"))
        }
    }

    /// `--shard K/N`.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let bad = || format!("{s:?}: write the shard as K/N with 1 <= K <= N");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        Shard::new(k, n).map_err(|_| bad())
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}
