//! Records the git revision the tool is built from (`CXR_MSN_GIT_REVISION`), so that every
//! run folder says which code produced it. Outside a git checkout nothing is set.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // Rebuild the revision when the commit or the sources change.
    for path in ["../.git/HEAD", "../.git/index", "src", "../shared/src"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let Some(revision) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let suffix = if dirty { "-dirty" } else { "" };
    println!("cargo:rustc-env=CXR_MSN_GIT_REVISION={revision}{suffix}");
}
