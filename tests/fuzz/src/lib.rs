//! What the fuzz targets share: a scratch folder for the files the readers open, the split
//! of one fuzz input into several files, and the invariants every loaded dataset keeps.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cxr_msn_trainer::data::{DataError, Dataset, OnBadRow};

/// Separates the files of one input for targets that read several tables: `\0|\0` never
/// appears in a CSV a user would write, and libFuzzer's comparison tracing finds it fast.
pub const SEPARATOR: &[u8] = b"\0|\0";

/// A scratch folder for this fuzzing process, in memory (`/dev/shm`) where there is one.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let builder = tempfile::Builder::new()
            .prefix("cxr-msn-fuzz-")
            .tempdir_in(shm);
        builder
            .or_else(|_| tempfile::tempdir())
            .expect("a scratch folder")
    })
    .path()
}

/// Writes `bytes` to `name` (which may hold folders) in the scratch folder.
pub fn put(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("scratch folders");
    }
    std::fs::write(&path, bytes).expect("scratch file");
    path
}

/// The first `n` parts of `data` split at [`SEPARATOR`]; missing parts are empty.
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(n, &[]);
    out
}

/// Runs `load` under both bad-row policies and checks what must hold for any input:
/// the row accounting adds up, every error message names a file, and a load that
/// succeeds when bad rows fail it gives the same dataset when they are skipped.
pub fn check_both(load: impl Fn(OnBadRow) -> Result<Dataset, DataError>) {
    let strict = load(OnBadRow::Fail);
    let lenient = load(OnBadRow::Skip);
    for result in [&strict, &lenient] {
        match result {
            Ok(data) => check_dataset(data),
            Err(e) => check_message(e),
        }
    }
    if let (Ok(strict), Ok(lenient)) = (&strict, &lenient) {
        assert_eq!(
            strict, lenient,
            "no bad rows, so skipping must change nothing"
        );
    }
}

/// The invariants of a loaded dataset.
pub fn check_dataset(data: &Dataset) {
    let r = &data.report;
    assert_eq!(r.kept, data.records.len(), "kept = records");
    assert_eq!(
        r.rows_read,
        r.kept + r.dropped_total(),
        "rows read = kept + dropped"
    );
    for record in &data.records {
        assert_eq!(
            record.labels.len(),
            data.label_names.len(),
            "one label per name"
        );
    }
}

/// An error message must say which file it is about.
pub fn check_message(e: &DataError) {
    let text = e.to_string();
    assert!(!text.trim().is_empty(), "an empty error message");
    assert!(
        text.contains(&scratch().display().to_string())
            || text.contains(".csv")
            || text.contains(".txt"),
        "the message names no file: {text}"
    );
}
