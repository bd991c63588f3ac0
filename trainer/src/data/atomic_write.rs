//! Writing a file so that readers see either the old file or the complete new one: the
//! content goes to a hidden temporary file in the same folder, is flushed to disk, then
//! renamed over the target. On any error the temporary file is removed and the target is
//! left as it was.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::DataError;

/// Writes `path` atomically with what `fill` writes.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), DataError> {
    let name = path
        .file_name()
        .ok_or_else(|| {
            DataError::io(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
            )
        })?
        .to_string_lossy();
    let mut temp = TempFile {
        path: path.with_file_name(format!(".{name}.{}.tmp", std::process::id())),
        keep: false,
    };
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp.path)?;
        let mut writer = BufWriter::new(file);
        fill(&mut writer)?;
        let file: File = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&temp.path, path)
    })();
    result.map_err(|e| DataError::io(path, e))?;
    temp.keep = true;
    Ok(())
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
    fn the_target_is_replaced_whole_or_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.csv");
        fs::write(&out, "old\n").unwrap();
        let err = write_atomically(&out, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("out.csv") && err.contains("disk full"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&out).unwrap(), "old\n");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );

        write_atomically(&out, |w| w.write_all(b"new\n")).unwrap();
        assert_eq!(fs::read_to_string(&out).unwrap(), "new\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let err = write_atomically(&dir.path().join("no/such/dir/x.csv"), |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no/such/dir/x.csv"), "{err}");
    }
}
