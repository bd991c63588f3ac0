//! File helpers: writes that never leave a half-written file behind.

use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `path` atomically with what `fill` writes: the content goes to a hidden temporary
/// sibling, is flushed to disk, then renamed over `path`, so readers see the old file or the
/// complete new one. On any error the temporary file is removed and `path` is left as it was.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?
        .to_string_lossy();
    let mut temp = TempFile {
        path: path.with_file_name(format!(".{name}.{}.tmp", std::process::id())),
        keep: false,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp.path)?;
    let mut writer = BufWriter::new(file);
    fill(&mut writer)?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&temp.path, path)?;
    temp.keep = true;
    Ok(())
}

/// [`write_atomically`] of a byte buffer, with the path in the error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |w| w.write_all(bytes))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Advice for an error caused by a full disk, a read-only file system or missing write
/// permission (the first such cause in the chain), to print after the error itself.
pub fn advice(err: &anyhow::Error) -> Option<&'static str> {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .find_map(|e| match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Some(
                "the disk is full: free some space (or choose a folder on another disk) and run \
                 the same command again; a training run continues from its last checkpoint",
            ),
            io::ErrorKind::ReadOnlyFilesystem => Some(
                "that file system is mounted read-only: choose an output folder on a writable one",
            ),
            io::ErrorKind::PermissionDenied => Some(
                "no permission to write there: choose an output folder you own, or fix its \
                 permissions",
            ),
            _ => None,
        })
}

/// Removes the temporary file when dropped, unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            // The file may not exist (creation failed); nothing else to do then.
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write_atomic(&dir.path().join("missing/b.txt"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("missing/b.txt"));
    }

    #[test]
    fn disk_full_and_read_only_errors_come_with_advice() {
        // ENOSPC and EROFS as the operating system reports them (Linux numbers).
        let full = Err::<(), _>(io::Error::from_raw_os_error(28))
            .context("cannot write run/checkpoint.safetensors")
            .unwrap_err();
        assert!(advice(&full).unwrap().contains("disk is full"));
        let read_only = Err::<(), _>(io::Error::from_raw_os_error(30))
            .context("cannot create run")
            .unwrap_err();
        assert!(advice(&read_only).unwrap().contains("read-only"));
        assert!(advice(&anyhow::anyhow!("a bad row")).is_none());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.csv");
        fs::write(&out, "old\n").unwrap();
        let err = write_atomically(&out, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"));
        assert_eq!(fs::read_to_string(&out).unwrap(), "old\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
