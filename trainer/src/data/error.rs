//! The errors of the dataset readers. Each names the file and, for a row, the row number
//! (1-based, the header is row 1), the field, what was found and what was expected.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Something in a data file that cannot be read.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file cannot be opened or read (includes a corrupt gzip stream). The reason is
    /// the error's source, which a report of the chain (`{:#}`) prints after the path.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file holds no bytes at all.
    #[error("{}: the file is empty; expected a CSV table with a header row", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The text is not UTF-8 (a spreadsheet's "Unicode" export is UTF-16).
    #[error(
        "{}: {found}; save it as UTF-8 (in a spreadsheet: CSV UTF-8)",
        path.display()
    )]
    Encoding {
        /// The file.
        path: PathBuf,
        /// The row (header = 1), when one row is at fault rather than the whole file.
        row: Option<usize>,
        /// What was found instead, with the row.
        found: String,
    },
    /// A file the loader needs is not there.
    #[error("{what} not found: looked for {}", list_paths(candidates))]
    NotFound {
        /// What was looked for, e.g. "MIMIC-IV patients table".
        what: String,
        /// The paths tried, in order.
        candidates: Vec<PathBuf>,
    },
    /// The header lacks required columns.
    #[error(
        "{}: missing column(s) {}; the header has: {}",
        path.display(),
        quote_all(missing),
        header.join(", ")
    )]
    MissingColumns {
        /// The file.
        path: PathBuf,
        /// The required columns not found.
        missing: Vec<String>,
        /// The column names found.
        header: Vec<String>,
    },
    /// A row that is not valid CSV (bad UTF-8, bad quoting).
    #[error("{}: row {row}: {message}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The row number (header = 1).
        row: usize,
        /// What the CSV reader said.
        message: String,
    },
    /// A row with more or fewer fields than the header.
    #[error(
        "{}: row {row}: expected {expected} fields (as the header), found {found}",
        path.display()
    )]
    FieldCount {
        /// The file.
        path: PathBuf,
        /// The row number (header = 1).
        row: usize,
        /// The number of fields the header implies.
        expected: usize,
        /// The number of fields in the row.
        found: usize,
    },
    /// A field whose value cannot be used.
    #[error(
        "{}: row {row}, field '{field}': expected {expected}, found '{value}'",
        path.display()
    )]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The row number (header = 1).
        row: usize,
        /// The column name.
        field: String,
        /// The value found.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A label order names labels the dataset does not have.
    #[error(
        "label(s) {} are not in this dataset's labels: {}",
        quote_all(missing),
        available.join(", ")
    )]
    MissingLabels {
        /// The labels asked for and not found.
        missing: Vec<String>,
        /// The dataset's labels.
        available: Vec<String>,
    },
}

impl DataError {
    /// Builds a [`DataError::Io`].
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// For an error confined to one row (one that [`super::OnBadRow::Skip`] may skip),
    /// a short reason to count it under; `None` for errors that stop any load.
    pub fn skip_reason(&self) -> Option<String> {
        match self {
            Self::BadValue { field, .. } => Some(format!("bad value in '{field}'")),
            Self::FieldCount { .. } => Some("wrong number of fields".to_string()),
            Self::Malformed { .. } => Some("malformed row".to_string()),
            Self::Encoding { row: Some(_), .. } => Some("not UTF-8".to_string()),
            Self::Io { .. }
            | Self::Empty { .. }
            | Self::Encoding { row: None, .. }
            | Self::NotFound { .. }
            | Self::MissingColumns { .. }
            | Self::MissingLabels { .. } => None,
        }
    }
}

fn quote_all(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
