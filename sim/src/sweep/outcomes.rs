//! Shard outcome files (`tiersim sweep --outcomes FILE`) and their merge
//! (`tiersim sweep merge FILES…`).
//!
//! A file is JSON lines: first a header (the format, the scenario path and
//! the SHA-256 of its bytes, the seed range, the shard, and every setting
//! that decides outcomes), then one line per seed of the shard in seed
//! order, each with everything the report, JUnit and shrinking read. Field
//! order is the structs' order here; nothing in a file depends on the
//! machine, the clock or the thread count.
//!
//! A merge is all or nothing: every file is read and checked (the format,
//! one sweep, every shard present once, each shard's exact seeds, no
//! truncated line, the scenario unchanged) before anything is concluded or
//! written; the first problem is an error naming the file and line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tiersim_engine::config::Profile;
use tiersim_engine::registry::PlantedBug;

use super::{shard, shard_len, Divergence, MenuFlags, SeedOutcome, Shard, Sweep, MAX_SEEDS};
use crate::hosts::Chunking;
use crate::model::Abstention;
use crate::record::Violation;
use crate::scenario::format::{FaultKind, MAX_SIM_TIME};

/// The header's `format`: a reader refuses any other.
pub const FORMAT: &str = "tiersim-sweep-outcomes/2";

/// A file's first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub scenario: String,
    /// SHA-256 (hex) of the scenario file's bytes when the shard ran.
    pub scenario_sha256: String,
    pub seeds: SeedRange,
    pub shard: ShardRecord,
    pub check_determinism: bool,
    pub plant: Option<String>,
    pub menu: MenuRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRange {
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRecord {
    pub k: u64,
    pub n: u64,
}

/// [`MenuFlags`] by name: kinds, chunkings and the profile as their
/// scenario-file names, durations as humantime text (exact both ways).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MenuRecord {
    pub hosts: Option<Vec<String>>,
    pub kinds: Option<Vec<String>>,
    pub min_faults: Option<u32>,
    pub max_faults: Option<u32>,
    pub until: Option<String>,
    pub tick: Option<String>,
    pub chunking: Option<Vec<String>>,
    pub profile: Option<String>,
    pub concurrent: Option<usize>,
}

/// One seed's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub seed: u64,
    pub faults: usize,
    pub requests: usize,
    /// Simulated time of one run, in nanoseconds.
    pub sim_time_ns: u64,
    /// SHA-256 (hex) of the run's canonical text.
    pub hash: String,
    pub violations: Vec<Violation>,
    pub divergence: Option<Divergence>,
    /// Where and why the reference model stopped predicting the run.
    pub abstained: Option<Abstention>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Header {
    /// The header of `sweep`'s shard, whose scenario file holds `scenario`.
    pub fn of(sweep: &Sweep, scenario: &[u8]) -> Result<Header, String> {
        let path = sweep.file.to_str().ok_or_else(|| {
            format!(
                "{}: an outcomes file needs a UTF-8 scenario path",
                sweep.file.display()
            )
        })?;
        let f = &sweep.flags;
        Ok(Header {
            format: FORMAT.to_string(),
            scenario: path.to_string(),
            scenario_sha256: hex(&Sha256::digest(scenario)),
            seeds: SeedRange {
                first: *sweep.seeds.start(),
                last: *sweep.seeds.end(),
            },
            shard: ShardRecord {
                k: sweep.shard.k,
                n: sweep.shard.n,
            },
            check_determinism: sweep.check_determinism,
            plant: sweep.plant.map(|b| b.name().to_string()),
            menu: MenuRecord {
                hosts: f.hosts.clone(),
                kinds: f
                    .kinds
                    .as_ref()
                    .map(|k| k.iter().map(|k| k.name().to_string()).collect()),
                min_faults: f.min_faults,
                max_faults: f.max_faults,
                until: f.until.map(duration_text),
                tick: f.tick.map(duration_text),
                chunking: f
                    .chunking
                    .as_ref()
                    .map(|c| c.iter().map(|c| c.name().to_string()).collect()),
                profile: f.profile.map(|p| p.as_str().to_string()),
                concurrent: f.concurrent,
            },
        })
    }

    /// The sweep this header describes.
    pub fn sweep(&self) -> Result<Sweep, String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {:?}, expected {FORMAT:?} (written by another tiersim version?)",
                self.format
            ));
        }
        if self.seeds.first > self.seeds.last {
            return Err("the seed range is empty".into());
        }
        let shard = Shard::new(self.shard.k, self.shard.n)?;
        let m = &self.menu;
        let duration = |what: &str, t: &Option<String>| -> Result<Option<Duration>, String> {
            t.as_deref()
                .map(|t| {
                    humantime::parse_duration(t)
                        .ok()
                        .filter(|d| *d <= MAX_SIM_TIME)
                        .ok_or_else(|| format!("menu.{what}: {t:?} is not a duration within 24h"))
                })
                .transpose()
        };
        let flags = MenuFlags {
            hosts: m.hosts.clone(),
            kinds: m
                .kinds
                .as_ref()
                .map(|ks| {
                    ks.iter()
                        .map(|k| {
                            FaultKind::from_name(k)
                                .ok_or_else(|| format!("menu.kinds: unknown fault kind {k:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?,
            min_faults: m.min_faults,
            max_faults: m.max_faults,
            until: duration("until", &m.until)?,
            tick: duration("tick", &m.tick)?,
            chunking: m
                .chunking
                .as_ref()
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            Chunking::from_name(c)
                                .ok_or_else(|| format!("menu.chunking: unknown chunking {c:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?,
            profile: m
                .profile
                .as_deref()
                .map(|p| Profile::parse(p).ok_or_else(|| format!("menu.profile: unknown {p:?}")))
                .transpose()?,
            concurrent: m.concurrent,
            // Not recorded: stepping every tick gives the same outcomes.
            step_every_tick: false,
        };
        let plant = self
            .plant
            .as_deref()
            .map(|b| PlantedBug::from_name(b).ok_or_else(|| format!("unknown planted bug {b:?}")))
            .transpose()?;
        Ok(Sweep {
            file: PathBuf::from(&self.scenario),
            seeds: self.seeds.first..=self.seeds.last,
            shard,
            check_determinism: self.check_determinism,
            flags,
            plant,
        })
    }
}

impl Line {
    pub fn of(o: &SeedOutcome) -> Line {
        Line {
            seed: o.seed,
            faults: o.faults,
            requests: o.requests,
            sim_time_ns: u64::try_from(o.sim_time.as_nanos()).unwrap_or(u64::MAX),
            hash: hex(&o.hash),
            violations: o.violations.clone(),
            divergence: o.divergence.clone(),
            abstained: o.abstained,
        }
    }

    pub fn outcome(self) -> Result<SeedOutcome, String> {
        let hash = unhex32(&self.hash)
            .ok_or_else(|| format!("hash {:?} is not 64 hex digits", self.hash))?;
        Ok(SeedOutcome {
            seed: self.seed,
            faults: self.faults,
            requests: self.requests,
            violations: self.violations,
            sim_time: Duration::from_nanos(self.sim_time_ns),
            hash,
            divergence: self.divergence,
            abstained: self.abstained,
        })
    }
}

/// The outcomes file of `sweep`'s shard as text: the header, then one line
/// per outcome (sorted by seed).
pub fn to_jsonl(
    sweep: &Sweep,
    scenario: &[u8],
    outcomes: &[SeedOutcome],
) -> Result<String, String> {
    let mut text =
        serde_json::to_string(&Header::of(sweep, scenario)?).expect("a header serialises");
    text.push('\n');
    for o in outcomes {
        text.push_str(&serde_json::to_string(&Line::of(o)).expect("an outcome line serialises"));
        text.push('\n');
    }
    Ok(text)
}

/// Writes `sweep`'s shard outcomes to `path` (through a temporary file
/// renamed into place: a reader never sees half a file).
pub fn write(sweep: &Sweep, outcomes: &[SeedOutcome], path: &Path) -> Result<(), String> {
    let scenario = std::fs::read(&sweep.file)
        .map_err(|e| format!("cannot read {}: {e}", sweep.file.display()))?;
    let text = to_jsonl(sweep, &scenario, outcomes)?;
    super::campaign::write_file(path, &text)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One shard's outcomes file, read and checked.
#[derive(Debug, Clone)]
pub struct ShardFile {
    pub path: PathBuf,
    pub header: Header,
    pub sweep: Sweep,
    pub outcomes: Vec<SeedOutcome>,
}

/// Reads `text` (the contents of `path`) as one shard's outcomes: the
/// header, then exactly the shard's seeds in order, each line complete.
pub fn parse(path: &Path, text: &[u8]) -> Result<ShardFile, String> {
    let at = |line: usize, why: String| format!("{}:{line}: {why}", path.display());
    let mut lines = text.split_inclusive(|b| *b == b'\n').enumerate();
    let line_text = |n: usize, raw: &[u8]| -> Result<String, String> {
        let Some(body) = raw.strip_suffix(b"\n") else {
            return Err(at(
                n,
                "truncated: the line has no end (an interrupted write?)".into(),
            ));
        };
        String::from_utf8(body.to_vec()).map_err(|_| at(n, "not UTF-8".into()))
    };
    let Some((_, first)) = lines.next() else {
        return Err(at(1, "empty: not a tiersim sweep outcomes file".into()));
    };
    let header: Header = serde_json::from_str(&line_text(1, first)?).map_err(|e| {
        at(
            1,
            format!("not a tiersim sweep outcomes header ({FORMAT}): {e}"),
        )
    })?;
    let sweep = header.sweep().map_err(|e| at(1, e))?;
    let Shard { k, n } = sweep.shard;
    if shard_len(&sweep.seeds, k, n) > MAX_SEEDS {
        return Err(at(
            1,
            format!("shard {k}/{n} holds more than {MAX_SEEDS} seeds"),
        ));
    }
    let expected = shard(sweep.seeds.clone(), k, n);
    let mut outcomes: Vec<SeedOutcome> = Vec::with_capacity(expected.len());
    for (i, raw) in lines {
        let number = i + 1;
        let line: Line = serde_json::from_str(&line_text(number, raw)?)
            .map_err(|e| at(number, format!("not a seed outcome: {e}")))?;
        let seed = line.seed;
        // The seeds before this line are exactly the shard's first ones, so
        // a seed of the shard below the next expected one was seen already.
        match (expected.binary_search(&seed), expected.get(outcomes.len())) {
            (Ok(i), Some(&want)) if i == outcomes.len() && want == seed => {}
            (Err(_), _) => {
                return Err(at(
                    number,
                    format!(
                        "seed {seed} is not in shard {k}/{n} of seeds {}..={}",
                        sweep.seeds.start(),
                        sweep.seeds.end()
                    ),
                ))
            }
            (Ok(i), _) if i < outcomes.len() => {
                return Err(at(
                    number,
                    format!("seed {seed} again (first at line {})", i + 2),
                ))
            }
            (Ok(_), want) => {
                return Err(at(
                    number,
                    format!(
                        "seed {seed}, but seed {} is missing before it",
                        want.copied().unwrap_or(seed)
                    ),
                ))
            }
        }
        outcomes.push(line.outcome().map_err(|e| at(number, e))?);
    }
    if let Some(missing) = expected.get(outcomes.len()) {
        return Err(at(
            outcomes.len() + 2,
            format!(
                "the file ends after {} of shard {k}/{n}'s {} seeds: seed {missing} onward is missing (truncated?)",
                outcomes.len(),
                expected.len()
            ),
        ));
    }
    Ok(ShardFile {
        path: path.to_path_buf(),
        header,
        sweep,
        outcomes,
    })
}

/// Reads and checks every file, then joins them: they must be the shards
/// `1..=N` of one sweep (same scenario bytes and settings), each exactly
/// once, and the scenario file must still hold the bytes they ran. Returns
/// the whole sweep (shard 1/1) and every outcome, sorted by seed.
pub fn merge(files: &[PathBuf]) -> Result<(Sweep, Vec<SeedOutcome>), String> {
    if files.is_empty() {
        return Err("no outcomes files to merge".into());
    }
    let mut shards: Vec<ShardFile> = Vec::with_capacity(files.len());
    for path in files {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file = parse(path, &text)?;
        if let Some(first) = shards.first() {
            same_sweep(first, &file)?;
        }
        if let Some(other) = shards.iter().find(|s| s.sweep.shard == file.sweep.shard) {
            return Err(format!(
                "{} and {} are both shard {}",
                other.path.display(),
                path.display(),
                file.sweep.shard
            ));
        }
        shards.push(file);
    }
    let n = shards[0].sweep.shard.n;
    let missing: Vec<String> = (1..=n)
        .filter(|k| !shards.iter().any(|s| s.sweep.shard.k == *k))
        .map(|k| format!("{k}/{n}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "shard(s) {} missing: {} file(s) given, the sweep has {n} shards",
            missing.join(", "),
            shards.len()
        ));
    }
    let head = &shards[0];
    let scenario = std::fs::read(&head.sweep.file).map_err(|e| {
        format!(
            "{}:1: cannot read the scenario {}: {e} (merge from the folder the shards ran in)",
            head.path.display(),
            head.sweep.file.display()
        )
    })?;
    if hex(&Sha256::digest(&scenario)) != head.header.scenario_sha256 {
        return Err(format!(
            "{}:1: the scenario {} changed since the shards ran (its SHA-256 differs)",
            head.path.display(),
            head.sweep.file.display()
        ));
    }
    let sweep = Sweep {
        shard: Shard::WHOLE,
        ..head.sweep.clone()
    };
    let mut outcomes: Vec<SeedOutcome> = shards.into_iter().flat_map(|s| s.outcomes).collect();
    outcomes.sort_by_key(|o| o.seed);
    Ok((sweep, outcomes))
}

/// `b` must be a shard of `a`'s sweep: the headers may differ in the
/// shard's index only.
fn same_sweep(a: &ShardFile, b: &ShardFile) -> Result<(), String> {
    let fields = |h: &Header| {
        let mut v = serde_json::to_value(Header {
            shard: ShardRecord { k: 0, ..h.shard },
            ..h.clone()
        })
        .expect("a header serialises");
        std::mem::take(v.as_object_mut().expect("a header is an object"))
    };
    let (fa, fb) = (fields(&a.header), fields(&b.header));
    for (key, va) in &fa {
        let vb = &fb[key];
        if va != vb {
            return Err(format!(
                "{}:1: not a shard of the same sweep as {}: `{key}` is {vb} here, {va} there",
                b.path.display(),
                a.path.display()
            ));
        }
    }
    Ok(())
}
