//! Scenarios: the file format, loading with precise errors, and discovery of
//! scenario files.

pub mod action;
pub mod format;
pub mod load;
pub mod write;

pub use action::{Action, Dispatcher};
pub use format::Scenario;
pub use load::{load, parse, parse_bytes, ScenarioError};

use std::path::{Path, PathBuf};

/// The scenario files a path names: the file itself, or every `*.toml` in a
/// folder (recursively), sorted so runs are ordered the same everywhere.
///
/// A folder is walked once: each directory and file is canonicalised, so a
/// symlink loop or a second link to the same file adds nothing. A file's
/// stem names its test and its snapshot, so two files with the same stem in
/// one folder tree are an error naming both.
pub fn files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::{Error, ErrorKind};
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut seen_dirs = BTreeSet::new();
    // canonical file -> the path it was first reached by (in sorted order)
    let mut found: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if !seen_dirs.insert(std::fs::canonicalize(&dir)?) {
            continue;
        }
        let mut entries = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?;
        entries.sort();
        for p in entries.into_iter().rev() {
            // A dangling symlink has no metadata: skipped like any non-file.
            let Ok(meta) = std::fs::metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(p);
            } else if meta.is_file() && p.extension().is_some_and(|e| e == "toml") {
                let canonical = std::fs::canonicalize(&p)?;
                let entry = found.entry(canonical).or_insert_with(|| p.clone());
                if p < *entry {
                    *entry = p;
                }
            }
        }
    }
    let mut out: Vec<PathBuf> = found.into_values().collect();
    out.sort();
    let mut stems: BTreeMap<std::ffi::OsString, &PathBuf> = BTreeMap::new();
    for p in &out {
        let stem = p.file_stem().unwrap_or_default().to_os_string();
        if let Some(first) = stems.insert(stem, p) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} and {} have the same name; a scenario's file name names its test and snapshot, so rename one",
                    first.display(),
                    p.display()
                ),
            ));
        }
    }
    Ok(out)
}

/// The JSON Schema of the scenario format, for editors.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Scenario);
    serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n"
}
