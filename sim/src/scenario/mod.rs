//! Scenarios: the file format, loading with precise errors, and discovery of
//! scenario files.

pub mod format;
pub mod load;
pub mod write;

pub use format::Scenario;
pub use load::{load, parse, ScenarioError};

use std::path::{Path, PathBuf};

/// The scenario files a path names: the file itself, or every `*.toml` in a
/// folder (recursively), sorted so runs are ordered the same everywhere.
pub fn files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The JSON Schema of the scenario format, for editors.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Scenario);
    serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n"
}
