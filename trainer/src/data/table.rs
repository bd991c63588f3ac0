//! CSV tables: plain or gzip-compressed (detected from the content, so `.csv` and
//! `.csv.gz` read the same), columns looked up by name, rows numbered for error messages.
//!
//! Rows are numbered from 1, the header being row 1; blank lines are not rows, and a row
//! whose quoted field holds line breaks is one row (so in a file without either, the row
//! number is the line number that `sed -n Np` or an editor shows). A row may carry trailing empty fields beyond the header
//! (a trailing comma, as in NIH's file); any other difference in the number of fields is
//! an error. Values are trimmed of surrounding white space.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use flate2::bufread::MultiGzDecoder;

use super::{DataError, LoadReport, MAX_EXAMPLES, OnBadRow};

/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens a file for reading, decompressing it on the fly when it is gzip.
pub fn open_maybe_gzip(path: &Path) -> Result<Box<dyn Read>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(|e| DataError::io(path, e))?;
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// The first of `{dir}/{name}.csv`, `{dir}/{name}.csv.gz` that exists, trying each of
/// `names` (relative paths without extension) in turn. `what` names the table in the error.
pub fn find_csv(dir: &Path, names: &[&str], what: &str) -> Result<PathBuf, DataError> {
    let candidates: Vec<PathBuf> = names
        .iter()
        .flat_map(|name| ["csv", "csv.gz"].map(|ext| dir.join(format!("{name}.{ext}"))))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| DataError::NotFound {
            what: what.to_string(),
            candidates,
        })
}

/// A column found in a table's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Position in the row.
    pub index: usize,
    /// The name in the header.
    pub name: String,
}

/// One data row of a [`Table`].
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    path: &'a Path,
    number: usize,
    record: &'a csv::StringRecord,
}

impl<'a> Row<'a> {
    /// The row number (header = 1).
    pub fn number(&self) -> usize {
        self.number
    }

    /// The trimmed value of `column` ("" when the row has no such field).
    pub fn get(&self, column: &Column) -> &'a str {
        self.record.get(column.index).unwrap_or("").trim()
    }

    /// An error saying that `column`'s value here is not what was `expected`.
    pub fn bad(&self, column: &Column, expected: impl Into<String>) -> DataError {
        self.bad_value(&column.name, self.get(column), expected)
    }

    /// An error about `field` of this row, with the `value` found.
    pub fn bad_value(&self, field: &str, value: &str, expected: impl Into<String>) -> DataError {
        DataError::BadValue {
            path: self.path.to_path_buf(),
            row: self.number,
            field: field.to_string(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// Parses `column`'s value, or says it is not what was `expected`.
    pub fn parse<T: FromStr>(&self, column: &Column, expected: &str) -> Result<T, DataError> {
        self.get(column)
            .parse()
            .map_err(|_| self.bad(column, expected))
    }

    /// Like [`Row::parse`], but a blank value gives `None`.
    pub fn parse_opt<T: FromStr>(
        &self,
        column: &Column,
        expected: &str,
    ) -> Result<Option<T>, DataError> {
        if self.get(column).is_empty() {
            Ok(None)
        } else {
            self.parse(column, expected).map(Some)
        }
    }
}

/// What one pass over a table read and skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pass {
    /// Data rows read, skipped ones included.
    pub rows: usize,
    /// Rows skipped as bad (only with [`OnBadRow::Skip`]), by reason.
    pub skipped: BTreeMap<String, usize>,
    /// The first skipped rows' error messages.
    pub examples: Vec<String>,
    /// The file read.
    pub path: PathBuf,
}

impl Pass {
    /// Adds this pass to `report` as the primary table: its rows are the report's rows and
    /// its skipped rows are dropped rows.
    pub fn into_primary(self, report: &mut LoadReport) {
        report.rows_read += self.rows;
        for (reason, n) in self.skipped {
            *report.dropped.entry(reason).or_default() += n;
        }
        for message in self.examples {
            report.note_example(message);
        }
    }

    /// Adds this pass's skipped rows to `report` as skipped in a secondary table.
    pub fn into_secondary(self, report: &mut LoadReport) {
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string());
        for (reason, n) in self.skipped {
            *report
                .skipped_elsewhere
                .entry(format!("{file}: {reason}"))
                .or_default() += n;
        }
        for message in self.examples {
            report.note_example(message);
        }
    }
}

/// A CSV table open for reading, its header read.
pub struct Table {
    path: PathBuf,
    reader: csv::Reader<Box<dyn Read>>,
    header: Vec<String>,
}

impl Table {
    /// Opens `path` (plain or gzip) and reads its header.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        Self::open_with(path, |header| header)
    }

    /// Opens `path` and reads its header, then lets `columns` turn the header's names into
    /// one name per field of a data row (NIH's header needs this: a quoted name such as
    /// `"OriginalImage[Width,Height]"` stands for two fields).
    pub fn open_with(
        path: &Path,
        columns: impl FnOnce(Vec<String>) -> Vec<String>,
    ) -> Result<Self, DataError> {
        let mut input = BufReader::new(open_maybe_gzip(path)?);
        let head = input.fill_buf().map_err(|e| DataError::io(path, e))?;
        if head.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        if let Some(found) = not_utf8(head) {
            return Err(DataError::Encoding {
                path: path.to_path_buf(),
                row: None,
                found: found.to_string(),
            });
        }
        // A UTF-8 byte-order mark (spreadsheets write one) is not part of the first name.
        if head.starts_with(UTF8_BOM) {
            input.consume(UTF8_BOM.len());
        }
        let input: Box<dyn Read> = Box::new(input);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(input);
        let raw = reader
            .headers()
            .map_err(|e| csv_error(path, 1, e))?
            .iter()
            .map(|name| name.trim().to_string())
            .collect();
        let mut header = columns(raw);
        while header.last().is_some_and(String::is_empty) {
            header.pop();
        }
        let mut seen = HashSet::new();
        for name in header.iter().filter(|n| !n.is_empty()) {
            if !seen.insert(name.as_str()) {
                return Err(DataError::BadValue {
                    path: path.to_path_buf(),
                    row: 1,
                    field: name.clone(),
                    value: name.clone(),
                    expected: "each column name once".to_string(),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            header,
        })
    }

    /// The column names, one per field of a data row.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The column named `name`, if the header has it.
    pub fn find(&self, name: &str) -> Option<Column> {
        self.header
            .iter()
            .position(|h| h == name)
            .map(|index| Column {
                index,
                name: name.to_string(),
            })
    }

    /// The columns named `names`, in that order; an error lists every one missing.
    pub fn require(&self, names: &[&str]) -> Result<Vec<Column>, DataError> {
        let found: Vec<Option<Column>> = names.iter().map(|n| self.find(n)).collect();
        let missing: Vec<String> = names
            .iter()
            .zip(&found)
            .filter(|(_, c)| c.is_none())
            .map(|(n, _)| n.to_string())
            .collect();
        if missing.is_empty() {
            Ok(found.into_iter().flatten().collect())
        } else {
            Err(self.missing(missing))
        }
    }

    /// The columns named `names`, as an array (for destructuring).
    pub fn columns<const N: usize>(&self, names: [&str; N]) -> Result<[Column; N], DataError> {
        let found = self.require(&names)?;
        // `require` gives one column per name, so the conversion cannot fail.
        found
            .try_into()
            .map_err(|_| self.missing(names.iter().map(|n| n.to_string()).collect()))
    }

    /// The first column of `alternatives` the header has (e.g. "Patient Gender" or
    /// "Patient Sex"); the error names them all.
    pub fn require_one_of(&self, alternatives: &[&str]) -> Result<Column, DataError> {
        alternatives
            .iter()
            .find_map(|n| self.find(n))
            .ok_or_else(|| self.missing(vec![alternatives.join("' or '")]))
    }

    fn missing(&self, missing: Vec<String>) -> DataError {
        DataError::MissingColumns {
            path: self.path.clone(),
            missing,
            header: self.header.clone(),
        }
    }

    /// Calls `each` on every data row. A row-level error (from the CSV reader, a wrong
    /// number of fields, or returned by `each`) stops the pass with [`OnBadRow::Fail`] and
    /// is counted in the returned [`Pass`] with [`OnBadRow::Skip`]. Errors that are not
    /// about one row (I/O, a corrupt gzip stream) always stop it.
    pub fn for_each_row(
        &mut self,
        on_bad: OnBadRow,
        mut each: impl FnMut(&Row<'_>) -> Result<(), DataError>,
    ) -> Result<Pass, DataError> {
        let mut pass = Pass {
            path: self.path.clone(),
            ..Default::default()
        };
        let mut record = csv::StringRecord::new();
        let width = self.header.len();
        let mut number = 1; // the header
        loop {
            number += 1;
            let result = match self.reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    let extra_blank = record.iter().skip(width).all(|f| f.trim().is_empty());
                    if record.len() < width || !extra_blank {
                        Err(DataError::FieldCount {
                            path: self.path.clone(),
                            row: number,
                            expected: width,
                            found: record.len(),
                        })
                    } else {
                        each(&Row {
                            path: &self.path,
                            number,
                            record: &record,
                        })
                    }
                }
                Err(e) => Err(csv_error(&self.path, number, e)),
            };
            if !matches!(result, Err(DataError::Io { .. })) {
                pass.rows += 1;
            }
            if let Err(error) = result {
                match (on_bad, error.skip_reason()) {
                    (OnBadRow::Skip, Some(reason)) => {
                        *pass.skipped.entry(reason).or_default() += 1;
                        if pass.examples.len() < MAX_EXAMPLES {
                            pass.examples.push(error.to_string());
                        }
                    }
                    _ => return Err(error),
                }
            }
        }
        Ok(pass)
    }
}

/// The UTF-8 byte-order mark.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// What the start of a file says about an encoding other than UTF-8, if anything: a UTF-16
/// or UTF-32 byte-order mark, or the zero bytes between ASCII letters of UTF-16 text.
fn not_utf8(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\xFF\xFE\0\0") || head.starts_with(b"\0\0\xFE\xFF") {
        return Some("the file is UTF-32 text (it starts with a UTF-32 byte-order mark)");
    }
    if head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
        return Some("the file is UTF-16 text (it starts with a UTF-16 byte-order mark)");
    }
    let sample = &head[..head.len().min(64)];
    let zeros = sample.iter().filter(|&&b| b == 0).count();
    if sample.len() >= 8 && zeros * 4 >= sample.len() {
        return Some("the file looks like UTF-16 text (every other byte is zero)");
    }
    None
}

/// Turns a CSV reader error about `row` into a [`DataError`].
fn csv_error(path: &Path, row: usize, error: csv::Error) -> DataError {
    let message = error.to_string();
    match error.into_kind() {
        csv::ErrorKind::Io(e) => DataError::io(path, e),
        csv::ErrorKind::Utf8 { pos, err } => DataError::Encoding {
            path: path.to_path_buf(),
            row: Some(row),
            found: format!(
                "row {row}{} is not UTF-8 text (a byte at position {} of the field cannot \
                 start or continue a UTF-8 character; Latin-1 or Windows-1252 text?)",
                pos.map(|_| format!(", field {}", err.field() + 1))
                    .unwrap_or_default(),
                err.valid_up_to()
            ),
        },
        _ => DataError::Malformed {
            path: path.to_path_buf(),
            row,
            message,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// Writes `text` to `name` in `dir` (gzip-compressed when `name` ends in `.gz`).
    pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let file = File::create(&path).unwrap();
        if name.ends_with(".gz") {
            let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap();
        } else {
            let mut file = file;
            file.write_all(text.as_bytes()).unwrap();
        }
        path
    }

    fn rows(path: &Path, on_bad: OnBadRow) -> Result<(Vec<Vec<String>>, Pass), DataError> {
        let mut table = Table::open(path)?;
        let cols = table.require(&["a", "b"])?;
        let mut out = Vec::new();
        let pass = table.for_each_row(on_bad, |row| {
            out.push(vec![
                row.number().to_string(),
                row.get(&cols[0]).to_string(),
                row.get(&cols[1]).to_string(),
            ]);
            Ok(())
        })?;
        Ok((out, pass))
    }

    #[test]
    fn plain_and_gzip_read_the_same_with_trailing_commas_and_a_bom() {
        let dir = tempfile::tempdir().unwrap();
        let text = "\u{feff}a,b,\n1, x ,\n\n2,\"y,z\"\n";
        let plain = write(dir.path(), "t.csv", text);
        let gz = write(dir.path(), "t.csv.gz", text);
        let (a, pass) = rows(&plain, OnBadRow::Fail).unwrap();
        let (b, _) = rows(&gz, OnBadRow::Fail).unwrap();
        assert_eq!(a, b);
        // The blank line 3 is not a row.
        assert_eq!(a, [["2", "1", "x"], ["3", "2", "y,z"]]);
        assert_eq!(pass.rows, 2);
    }

    #[test]
    fn a_wrong_field_count_names_file_and_row_or_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "t.csv", "a,b\n1,2\n3\n4,5,6\n7,8\n");
        let err = rows(&path, OnBadRow::Fail).unwrap_err().to_string();
        assert!(
            err.contains("t.csv: row 3: expected 2 fields (as the header), found 1"),
            "{err}"
        );
        let (kept, pass) = rows(&path, OnBadRow::Skip).unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(pass.rows, 4);
        assert_eq!(pass.skipped["wrong number of fields"], 2);
        assert!(pass.examples[1].contains("row 4"), "{:?}", pass.examples);
    }

    #[test]
    fn missing_columns_are_all_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "t.csv", "x,y\n1,2\n");
        let table = Table::open(&path).unwrap();
        let err = table.require(&["a", "x", "b"]).unwrap_err().to_string();
        assert!(
            err.contains("t.csv: missing column(s) 'a', 'b'; the header has: x, y"),
            "{err}"
        );
        let err = table.require_one_of(&["P", "Q"]).unwrap_err().to_string();
        assert!(err.contains("'P' or 'Q'"), "{err}");
        let blank = write(dir.path(), "blank.csv", "\n");
        let err = Table::open(&blank)
            .unwrap()
            .require(&["a"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing column(s) 'a'"), "{err}");
    }

    #[test]
    fn bad_utf8_and_duplicate_columns_are_errors_with_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, b"a,b\n1,2\n\xff,3\n").unwrap();
        let err = rows(&path, OnBadRow::Fail).unwrap_err().to_string();
        assert!(
            err.contains("t.csv: row 3, field 1 is not UTF-8 text")
                && err.contains("save it as UTF-8"),
            "{err}"
        );
        let (kept, pass) = rows(&path, OnBadRow::Skip).unwrap();
        assert_eq!((kept.len(), pass.skipped["not UTF-8"]), (1, 1));

        // A spreadsheet's "Unicode text": UTF-16 with or without a byte-order mark.
        let utf16: Vec<u8> = "a,b\n1,2\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        for (name, bytes, says) in [
            (
                "bom.csv",
                [&[0xFF, 0xFE][..], &utf16].concat(),
                "UTF-16 byte-order mark",
            ),
            ("plain.csv", utf16.clone(), "every other byte is zero"),
        ] {
            std::fs::write(dir.path().join(name), bytes).unwrap();
            let err = Table::open(&dir.path().join(name))
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains(says) && err.contains("save it as UTF-8"),
                "{err}"
            );
        }
        std::fs::write(dir.path().join("empty.csv"), b"").unwrap();
        let err = Table::open(&dir.path().join("empty.csv")).err().unwrap();
        assert!(
            err.to_string()
                .ends_with("empty.csv: the file is empty; expected a CSV table with a header row"),
            "{err}"
        );

        let dup = write(dir.path(), "d.csv", "a,b,a\n");
        let err = Table::open(&dup).err().unwrap().to_string();
        assert!(
            err.contains("d.csv: row 1, field 'a': expected each column name once"),
            "{err}"
        );
    }

    #[test]
    fn missing_files_and_corrupt_gzip_are_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = Table::open(&dir.path().join("none.csv"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("none.csv"), "{err}");
        let path = dir.path().join("bad.csv.gz");
        std::fs::write(&path, [0x1f, 0x8b, 0x08, 0x00, 1, 2, 3]).unwrap();
        let err = match Table::open(&path) {
            Err(e) => e,
            Ok(mut t) => t.for_each_row(OnBadRow::Skip, |_| Ok(())).unwrap_err(),
        };
        assert!(matches!(err, DataError::Io { .. }), "{err}");
        assert!(err.to_string().contains("bad.csv.gz"), "{err}");
    }

    #[test]
    fn find_csv_prefers_plain_then_gzip_and_lists_what_it_tried() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "hosp/patients.csv.gz", "a\n");
        let found = find_csv(dir.path(), &["hosp/patients", "core/patients"], "p").unwrap();
        assert!(found.ends_with("hosp/patients.csv.gz"));
        let err = find_csv(dir.path(), &["icu/icustays"], "MIMIC-IV icustays table")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("MIMIC-IV icustays table not found: looked for ")
                && err.contains("icu/icustays.csv, ")
                && err.contains("icu/icustays.csv.gz"),
            "{err}"
        );
    }
}
