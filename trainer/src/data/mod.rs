//! Dataset readers: the published CSV formats of MIMIC-CXR-JPG, CheXpert and NIH
//! ChestX-ray14, a plain manifest for other data, and the MIMIC-CXR to MIMIC-IV EHR
//! linkage (METHOD.md sections 5, 7 and 8).
//!
//! Every adapter returns a [`Dataset`]: the label names in the adapter's order, one
//! [`Record`] per kept image (image path, labels as read, EHR facts, patient, study,
//! split) and a [`LoadReport`] that accounts for every row read: `rows_read = kept +` the
//! sum of `dropped`.
//!
//! Labels are kept as read ([`Label`]); a [`LabelPolicy`] turns them into training targets.
//! A bad row (a value that cannot be parsed, a wrong number of fields) either stops the
//! load with an error naming the file, the row (1-based, the header is row 1) and the
//! field ([`OnBadRow::Fail`], the default), or is skipped and counted
//! ([`OnBadRow::Skip`]). Nothing here panics on user data.

pub mod chexpert;
pub mod date;
pub mod ehr_fields;
pub mod error;
pub mod impute;
pub mod manifest;
pub mod mimic;
pub mod mimic_ehr;
pub mod mimic_iv;
pub mod nih;
pub mod table;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::Context;
use cxr_msn::ehr::{EhrRecord, FeatureSet};

use crate::loader::Item;

pub use error::DataError;

/// How many skipped-row error messages a [`LoadReport`] keeps verbatim.
pub const MAX_EXAMPLES: usize = 10;

/// One label value as read from a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Label {
    /// 1 (or 1.0): the finding is present.
    Positive,
    /// 0 (or 0.0): the finding is absent.
    Negative,
    /// -1 (or -1.0): the labeller was uncertain.
    Uncertain,
    /// An empty cell: the report did not mention the finding.
    Blank,
}

impl Label {
    /// Parses a label cell: `1`, `0`, `-1` (also `1.0`, `0.0`, `-1.0`) or blank.
    /// Returns `None` for anything else.
    pub fn parse(cell: &str) -> Option<Self> {
        let cell = cell.trim();
        if cell.is_empty() {
            return Some(Self::Blank);
        }
        let value = cell.parse::<f32>().ok()?;
        if value == 1.0 {
            Some(Self::Positive)
        } else if value == 0.0 {
            Some(Self::Negative)
        } else if value == -1.0 {
            Some(Self::Uncertain)
        } else {
            None
        }
    }

    /// The training target of this label under `policy`; `None` means "mask it out of
    /// the loss".
    pub fn value(&self, policy: &LabelPolicy) -> Option<f32> {
        match self {
            Self::Positive => Some(1.0),
            Self::Negative => Some(0.0),
            Self::Uncertain => policy.uncertain.value(),
            Self::Blank => policy.blank.value(),
        }
    }
}

/// What an uncertain or blank label becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fill {
    /// Target 0 (the paper's choice for both).
    #[default]
    Zero,
    /// Target 1.
    One,
    /// No target: the label is masked out of the loss.
    Ignore,
}

impl Fill {
    /// The target this fill gives (`None` for [`Fill::Ignore`]).
    pub fn value(self) -> Option<f32> {
        match self {
            Self::Zero => Some(0.0),
            Self::One => Some(1.0),
            Self::Ignore => None,
        }
    }
}

/// How uncertain (-1) and blank labels turn into targets. The default, zero for both,
/// is the paper's (METHOD.md section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LabelPolicy {
    /// What -1 becomes. Default: [`Fill::Zero`].
    pub uncertain: Fill,
    /// What a blank cell becomes. Default: [`Fill::Zero`].
    pub blank: Fill,
}

/// A data split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Training images.
    Train,
    /// Validation images (MIMIC's `validate`, CheXpert's `valid`).
    Validate,
    /// Test images.
    Test,
}

impl Split {
    /// Parses `train`, `validate` (also `valid`, `val`) or `test`, in any case.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "train" => Some(Self::Train),
            "validate" | "valid" | "val" | "validation" => Some(Self::Validate),
            "test" => Some(Self::Test),
            _ => None,
        }
    }

    /// The name written in files: `train`, `validate`, `test`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Validate => "validate",
            Self::Test => "test",
        }
    }
}

/// One image with what the files say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The image file: absolute, or relative to the current folder when the dataset root
    /// was given relative. Only the NIH adapter, given an image root, looks for the file;
    /// the others do not check that it exists (see [`Dataset::drop_missing_images`]).
    pub image: PathBuf,
    /// Labels as read, in the order of [`Dataset::label_names`].
    pub labels: Vec<Label>,
    /// EHR facts; fields the source does not provide are `None`.
    pub ehr: EhrRecord,
    /// Patient identifier, where the source has one.
    pub patient: Option<String>,
    /// Study identifier, where the source has one.
    pub study: Option<String>,
    /// The split, where the source assigns one.
    pub split: Option<Split>,
}

impl Record {
    /// The training targets of this record's labels under `policy` (`None` = masked).
    pub fn targets(&self, policy: &LabelPolicy) -> Vec<Option<f32>> {
        self.labels.iter().map(|l| l.value(policy)).collect()
    }
}

/// What a loader read, kept, dropped (and why) and imputed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Data rows read from the primary table: the one whose rows become records.
    pub rows_read: usize,
    /// Records kept.
    pub kept: usize,
    /// Rows of the primary table not kept, by reason. `rows_read = kept + sum(dropped)`.
    pub dropped: BTreeMap<String, usize>,
    /// Values filled in by imputation, by field name.
    pub imputed: BTreeMap<String, usize>,
    /// Malformed rows skipped in secondary tables (labels, splits, MIMIC-IV tables), by
    /// file name and reason. Only [`OnBadRow::Skip`] fills this.
    pub skipped_elsewhere: BTreeMap<String, usize>,
    /// The first [`MAX_EXAMPLES`] skipped-row error messages, verbatim.
    pub examples: Vec<String>,
}

impl LoadReport {
    /// Counts one dropped row of the primary table.
    pub fn drop_row(&mut self, reason: impl Into<String>) {
        *self.dropped.entry(reason.into()).or_default() += 1;
    }

    /// Number of dropped rows of the primary table.
    pub fn dropped_total(&self) -> usize {
        self.dropped.values().sum()
    }

    /// Keeps an error message as an example, up to [`MAX_EXAMPLES`].
    fn note_example(&mut self, message: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(message);
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "read {} rows, kept {}, dropped {}",
            self.rows_read,
            self.kept,
            self.dropped_total()
        )?;
        for (reason, n) in &self.dropped {
            writeln!(f, "  dropped {n:>8}  {reason}")?;
        }
        for (field, n) in &self.imputed {
            writeln!(f, "  imputed {n:>8}  {field}")?;
        }
        for (what, n) in &self.skipped_elsewhere {
            writeln!(f, "  skipped {n:>8}  {what}")?;
        }
        if !self.examples.is_empty() {
            writeln!(f, "first skipped rows:")?;
            for message in &self.examples {
                writeln!(f, "  {message}")?;
            }
        }
        Ok(())
    }
}

/// What to do with a row that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadRow {
    /// Stop with an error naming the file, the row and the field (default).
    #[default]
    Fail,
    /// Skip the row, count it in the [`LoadReport`] and keep its message as an example.
    Skip,
}

/// Images with their labels and EHR facts, as one adapter read them.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Label names, in the order of every [`Record::labels`].
    pub label_names: Vec<String>,
    /// The kept images.
    pub records: Vec<Record>,
    /// What was read, kept and dropped.
    pub report: LoadReport,
}

impl Dataset {
    /// Puts the label columns in the order `order` (e.g. [`cxr_msn::labels::MIMIC_LABELS`]).
    /// Every name of `order` must be one of this dataset's labels; labels not in `order`
    /// are removed.
    pub fn reorder_labels(&mut self, order: &[&str]) -> Result<(), DataError> {
        let names: Vec<&str> = self.label_names.iter().map(String::as_str).collect();
        let map = cxr_msn::labels::reorder(&names, order);
        let missing: Vec<String> = order
            .iter()
            .zip(&map)
            .filter(|(_, index)| index.is_none())
            .map(|(name, _)| name.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(DataError::MissingLabels {
                missing,
                available: self.label_names.clone(),
            });
        }
        let map: Vec<usize> = map.into_iter().flatten().collect();
        for record in &mut self.records {
            record.labels = map.iter().map(|&i| record.labels[i]).collect();
        }
        self.label_names = order.iter().map(|s| s.to_string()).collect();
        Ok(())
    }

    /// Loader items for the records of `split` (every record when `None`): the EHR encoded
    /// with `features` (empty when `None`, for vanilla MSN) and the label targets under
    /// `policy`. A record that lacks an EHR field the feature set needs is an error naming
    /// its image and the field.
    pub fn items(
        &self,
        split: Option<Split>,
        features: Option<&FeatureSet>,
        policy: &LabelPolicy,
    ) -> anyhow::Result<Vec<Item>> {
        self.records
            .iter()
            .filter(|r| split.is_none() || r.split == split)
            .map(|r| {
                let ehr = match features {
                    Some(set) => set
                        .encode(&r.ehr)
                        .with_context(|| format!("{}", r.image.display()))?,
                    None => Vec::new(),
                };
                Ok(Item {
                    path: r.image.clone(),
                    ehr,
                    labels: r.targets(policy),
                })
            })
            .collect()
    }

    /// The records of one split.
    pub fn records_in(&self, split: Split) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(move |r| r.split == Some(split))
    }

    /// Removes the records whose image file does not exist, counting them in the report
    /// as "image file not found".
    pub fn drop_missing_images(&mut self) {
        let before = self.records.len();
        self.records.retain(|r| r.image.is_file());
        let gone = before - self.records.len();
        if gone > 0 {
            *self
                .report
                .dropped
                .entry("image file not found".to_string())
                .or_default() += gone;
            self.report.kept = self.report.kept.saturating_sub(gone);
        }
    }

    /// Decodes every image (on all cores) and removes the records whose file is missing or
    /// cannot be decoded, counting them in the report as "image cannot be read"; returns
    /// the failures (path and message) so they can be shown. Use it before a long run to
    /// skip bad files instead of stopping at the first.
    pub fn drop_unreadable_images(
        &mut self,
        limits: &cxr_msn::decode::DecodeLimits,
    ) -> Vec<(PathBuf, String)> {
        let paths: Vec<&std::path::Path> = self.records.iter().map(|r| r.image.as_path()).collect();
        let failures = crate::images::check_all(&paths, limits, 0);
        let bad: std::collections::BTreeSet<usize> = failures.iter().map(|(i, _)| *i).collect();
        let report: Vec<(PathBuf, String)> = failures
            .into_iter()
            .map(|(i, message)| (self.records[i].image.clone(), message))
            .collect();
        let mut index = 0;
        self.records.retain(|_| {
            index += 1;
            !bad.contains(&(index - 1))
        });
        if !bad.is_empty() {
            *self
                .report
                .dropped
                .entry("image cannot be read".to_string())
                .or_default() += bad.len();
            self.report.kept = self.report.kept.saturating_sub(bad.len());
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_in_both_spellings_and_follow_the_policy() {
        assert_eq!(Label::parse("1.0"), Some(Label::Positive));
        assert_eq!(Label::parse("1"), Some(Label::Positive));
        assert_eq!(Label::parse(" 0.0 "), Some(Label::Negative));
        assert_eq!(Label::parse("-1"), Some(Label::Uncertain));
        assert_eq!(Label::parse("-1.0"), Some(Label::Uncertain));
        assert_eq!(Label::parse(""), Some(Label::Blank));
        assert_eq!(Label::parse("2"), None);
        assert_eq!(Label::parse("yes"), None);

        let paper = LabelPolicy::default();
        assert_eq!(Label::Uncertain.value(&paper), Some(0.0));
        assert_eq!(Label::Blank.value(&paper), Some(0.0));
        assert_eq!(Label::Positive.value(&paper), Some(1.0));
        let ones_ignore = LabelPolicy {
            uncertain: Fill::One,
            blank: Fill::Ignore,
        };
        assert_eq!(Label::Uncertain.value(&ones_ignore), Some(1.0));
        assert_eq!(Label::Blank.value(&ones_ignore), None);
        assert_eq!(Label::Negative.value(&ones_ignore), Some(0.0));
    }

    #[test]
    fn splits_parse_the_spellings_of_the_three_datasets() {
        assert_eq!(Split::parse("train"), Some(Split::Train));
        assert_eq!(Split::parse("validate"), Some(Split::Validate));
        assert_eq!(Split::parse("Valid"), Some(Split::Validate));
        assert_eq!(Split::parse("TEST"), Some(Split::Test));
        assert_eq!(Split::parse("dev"), None);
        assert_eq!(Split::Validate.name(), "validate");
    }

    fn two_label_dataset() -> Dataset {
        Dataset {
            label_names: vec!["B".into(), "A".into()],
            records: vec![Record {
                image: PathBuf::from("/nonexistent/x.png"),
                labels: vec![Label::Positive, Label::Uncertain],
                ehr: EhrRecord::default(),
                patient: None,
                study: None,
                split: Some(Split::Test),
            }],
            report: LoadReport {
                rows_read: 1,
                kept: 1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn reordering_moves_every_record_and_names_missing_labels() {
        let mut data = two_label_dataset();
        data.reorder_labels(&["A", "B"]).unwrap();
        assert_eq!(data.label_names, ["A", "B"]);
        assert_eq!(data.records[0].labels, [Label::Uncertain, Label::Positive]);
        let err = data.reorder_labels(&["A", "C"]).unwrap_err().to_string();
        assert!(err.contains("'C'") && err.contains("A, B"), "{err}");
        assert_eq!(data.label_names, ["A", "B"], "unchanged after an error");
    }

    #[test]
    fn missing_images_are_dropped_and_counted() {
        let mut data = two_label_dataset();
        assert_eq!(data.records_in(Split::Test).count(), 1);
        assert_eq!(data.records_in(Split::Train).count(), 0);
        data.drop_missing_images();
        assert!(data.records.is_empty());
        assert_eq!(data.report.kept, 0);
        assert_eq!(data.report.dropped["image file not found"], 1);
        assert_eq!(
            data.report.rows_read,
            data.report.kept + data.report.dropped_total()
        );
    }

    #[test]
    fn the_report_prints_every_reason() {
        let mut report = LoadReport {
            rows_read: 5,
            kept: 3,
            ..Default::default()
        };
        report.drop_row("rare view 'SWIMMERS'");
        report.drop_row("rare view 'SWIMMERS'");
        report.imputed.insert("view".into(), 1);
        let text = report.to_string();
        assert!(
            text.starts_with("read 5 rows, kept 3, dropped 2\n"),
            "{text}"
        );
        assert!(text.contains("2  rare view 'SWIMMERS'"), "{text}");
        assert!(text.contains("1  view"), "{text}");
    }
}
