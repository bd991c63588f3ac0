//! End-to-end tests across the crates live in `tests/tests/`; this library holds what they
//! share.
//!
//! They run the real `cxr-msn` binary, so build it first (the project's test command,
//! `scripts/test`, does): `cargo build -p cxr-msn-trainer`. Set `CXR_MSN_BIN` to test
//! another build of it.

use std::path::{Path, PathBuf};

/// The trainer binary: `$CXR_MSN_BIN`, or `cxr-msn` in the target directory of the running
/// test executable.
///
/// # Panics
/// When the binary has not been built, with the command that builds it.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CXR_MSN_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join(format!("cxr-msn{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p cxr-msn-trainer` (scripts/test does)",
        bin.display()
    );
    bin
}

/// Runs the binary with `args` and returns its standard output.
///
/// # Panics
/// When it cannot start or fails, with its standard error.
pub fn run_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    std::process::Command::new(binary()).args(args).succeeds()
}

/// A command that must succeed: `Command::new(binary()).arg(..).succeeds()`.
pub trait Succeeds {
    /// Runs the command to its end and returns its standard output.
    ///
    /// # Panics
    /// When it cannot start or exits unsuccessfully, with its standard output and error.
    fn succeeds(&mut self) -> String;
}

impl Succeeds for std::process::Command {
    fn succeeds(&mut self) -> String {
        let out = self
            .output()
            .unwrap_or_else(|e| panic!("{:?} cannot start: {e}", self.get_program()));
        assert!(
            out.status.success(),
            "{:?} failed ({}):\n{}\n{}",
            self.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Writes the synthetic world of `count` images of `size` px drawn with `seed` into `out`
/// (`cxr-msn synth`; the manifest is `out/manifest.csv`).
///
/// # Panics
/// When the command fails, with its standard error.
pub fn synth(out: &Path, count: usize, size: usize, seed: u64) {
    let numbers = [count.to_string(), size.to_string(), seed.to_string()];
    run_ok([
        "synth".as_ref(),
        "--count".as_ref(),
        numbers[0].as_ref(),
        "--size".as_ref(),
        numbers[1].as_ref(),
        "--seed".as_ref(),
        numbers[2].as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
}

/// Every tensor of a model file as `(name, raw bytes)`, sorted by name: two files hold the
/// same model exactly when these are equal (the header's key order is not fixed).
///
/// # Panics
/// When the file cannot be read or is not safetensors.
pub fn model_tensors(file: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let data = st.tensor(&n).expect("listed tensor").data().to_vec();
            (n, data)
        })
        .collect()
}

/// The records of a run's `metrics.jsonl` without their timings: two runs trained alike
/// have equal ones.
///
/// # Panics
/// When the file is missing or a line is not JSON.
pub fn step_records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            if let Some(o) = v.as_object_mut() {
                o.remove("seconds");
            }
            v
        })
        .collect()
}
