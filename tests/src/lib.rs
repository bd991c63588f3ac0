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
