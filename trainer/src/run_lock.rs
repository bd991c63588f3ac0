//! One trainer per run folder: an advisory lock on `<run>/.lock`, held for the life of the
//! process and released by the operating system however the process ends (Ctrl-C, a crash,
//! `kill -9`). Holding it, the trainer may also sweep away what a killed predecessor left
//! half-written.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of `run` (which must exist), or fails with an error that says another
    /// process holds it. Then removes the temporary files of interrupted atomic writes in
    /// `run` and `run/resume`.
    pub fn acquire(run: &Path) -> Result<Self> {
        let path = run.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("another process (pid {holder})")
                };
                bail!(
                    "{} is in use by {who}: two trainers writing one run folder would corrupt \
                     it. Wait for that run to finish or stop it, or choose another --out",
                    run.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        for folder in [run.to_path_buf(), run.join("resume")] {
            remove_temporaries(&folder);
        }
        Ok(Self { _file: file })
    }
}

/// Removes `.<name>.<pid>.tmp` files (see [`crate::files::write_atomically`]) from `dir`.
fn remove_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            // Best effort: a file that cannot be removed is only wasted space.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_leftover_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("resume")).unwrap();
        let stale = [
            dir.path().join(".checkpoint.safetensors.123.tmp"),
            dir.path().join("resume/.model-4.bpk.123.tmp"),
        ];
        for path in &stale {
            std::fs::write(path, b"half").unwrap();
        }
        std::fs::write(dir.path().join("state.json"), b"{}").unwrap();
        let held = RunLock::acquire(dir.path()).unwrap();
        assert!(stale.iter().all(|p| !p.exists()));
        assert!(dir.path().join("state.json").exists());
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("in use by another process (pid ") && err.contains("--out"),
            "{err}"
        );
        drop(held);
        RunLock::acquire(dir.path()).expect("free again once released");
    }
}
