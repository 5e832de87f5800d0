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
