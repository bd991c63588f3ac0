//! Choosing a dataset on the command line: one set of flags shared by every subcommand that
//! reads data (`data`, and the training and evaluation commands).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::data::chexpert::{self, ChexpertOptions};
use crate::data::mimic::{self, Labeler, MimicCxrFiles};
use crate::data::nih::{self, NihOptions, NihSplits};
use crate::data::{Dataset, Fill, LabelPolicy, OnBadRow, Split, manifest};

/// The published formats the trainer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A manifest CSV: `path`, label columns, optional EHR columns (also what `synth` writes).
    Manifest,
    /// MIMIC-CXR-JPG 2.0.0: the folder holding files/, the label and split tables.
    Mimic,
    /// CheXpert: train.csv, valid.csv or test.csv.
    Chexpert,
    /// NIH ChestX-ray14: Data_Entry_2017*.csv.
    Nih,
}

/// What to do with an uncertain (-1) or blank label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FillArg {
    /// Negative (the paper).
    Zero,
    /// Positive.
    One,
    /// Left out of the loss and the metrics.
    Ignore,
}

impl From<FillArg> for Fill {
    fn from(f: FillArg) -> Self {
        match f {
            FillArg::Zero => Fill::Zero,
            FillArg::One => Fill::One,
            FillArg::Ignore => Fill::Ignore,
        }
    }
}

/// The dataset flags.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Format of the dataset.
    #[arg(long, value_enum, default_value = "manifest")]
    pub format: Format,
    /// The manifest CSV; the MIMIC-CXR-JPG folder; the CheXpert CSV; the NIH
    /// Data_Entry_2017 CSV (.csv or .csv.gz).
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// NIH: the folder holding the images (images_*/images/ inside are searched); CheXpert:
    /// the folder the Path column is relative to (default: derived from the CSV's place).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// MIMIC: the EHR table written by `cxr-msn ehr`.
    #[arg(long, value_name = "CSV")]
    pub ehr_table: Option<PathBuf>,
    /// MIMIC: which labeller's labels to use.
    #[arg(long, value_enum, default_value = "chexpert")]
    pub labeler: LabelerArg,
    /// MIMIC: a custom split table (same columns as mimic-cxr-2.0.0-split.csv).
    #[arg(long, value_name = "CSV")]
    pub split_table: Option<PathBuf>,
    /// NIH: the folder holding train_val_list.txt and test_list.txt (default: next to the
    /// table, when there).
    #[arg(long, value_name = "DIR")]
    pub split_lists: Option<PathBuf>,
    /// NIH: drop "No Finding" images (the paper's NIH evaluation).
    #[arg(long)]
    pub remove_no_finding: bool,
    /// Uncertain (-1) labels become...
    #[arg(long, value_enum, default_value = "zero")]
    pub uncertain: FillArg,
    /// Blank labels become...
    #[arg(long, value_enum, default_value = "zero")]
    pub blank: FillArg,
    /// Skip and count unreadable rows instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
}

/// MIMIC labeller choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LabelerArg {
    /// mimic-cxr-2.0.0-chexpert.csv (the paper's).
    Chexpert,
    /// mimic-cxr-2.0.0-negbio.csv.
    Negbio,
}

impl DataArgs {
    /// A manifest CSV with every other flag at its default.
    pub fn manifest(path: PathBuf) -> Self {
        Self {
            format: Format::Manifest,
            data: path,
            images: None,
            ehr_table: None,
            labeler: LabelerArg::Chexpert,
            split_table: None,
            split_lists: None,
            remove_no_finding: false,
            uncertain: FillArg::Zero,
            blank: FillArg::Zero,
            skip_bad_rows: false,
        }
    }

    /// The label policy these flags ask for.
    pub fn policy(&self) -> LabelPolicy {
        LabelPolicy {
            uncertain: self.uncertain.into(),
            blank: self.blank.into(),
        }
    }

    /// Loads the dataset; errors say which dataset and what went wrong.
    pub fn load(&self) -> Result<Dataset> {
        self.load_inner().with_context(|| {
            format!(
                "cannot read the {} dataset at {}",
                self.format
                    .to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_string()),
                self.data.display()
            )
        })
    }

    fn load_inner(&self) -> Result<Dataset> {
        let on_bad = if self.skip_bad_rows {
            OnBadRow::Skip
        } else {
            OnBadRow::Fail
        };
        let data = match self.format {
            Format::Manifest => manifest::load(&self.data, on_bad)?,
            Format::Mimic => {
                let labeler = match self.labeler {
                    LabelerArg::Chexpert => Labeler::Chexpert,
                    LabelerArg::Negbio => Labeler::Negbio,
                };
                let mut files = MimicCxrFiles::in_folder(&self.data, labeler)?;
                files.ehr = self.ehr_table.clone();
                if let Some(split) = &self.split_table {
                    files.split = split.clone();
                }
                mimic::load(&files, on_bad)?
            }
            Format::Chexpert => chexpert::load(
                &self.data,
                &ChexpertOptions {
                    image_root: self.images.clone(),
                    split: None,
                    on_bad_row: on_bad,
                },
            )?,
            Format::Nih => {
                let lists = self
                    .split_lists
                    .clone()
                    .or_else(|| self.data.parent().map(PathBuf::from));
                let splits = lists
                    .map(|dir| NihSplits::in_folder(&dir))
                    .filter(|s| s.train_val.is_file() && s.test.is_file());
                nih::load(
                    &self.data,
                    &NihOptions {
                        image_root: self.images.clone(),
                        splits,
                        remove_no_finding: self.remove_no_finding,
                        on_bad_row: on_bad,
                    },
                )?
            }
        };
        if data.records.is_empty() {
            bail!("{}: no usable images\n{}", self.data.display(), data.report);
        }
        Ok(data)
    }
}

/// A printable overview of a dataset: the load report, splits, label prevalence under a
/// policy, and how complete each EHR field is.
pub fn describe(data: &Dataset, policy: &LabelPolicy) -> String {
    let mut out = format!("{}", data.report);
    let n = data.records.len();
    let _ = writeln!(out, "images: {n}");
    for split in [Split::Train, Split::Validate, Split::Test] {
        let _ = writeln!(
            out,
            "  {:9} {}",
            split.name(),
            data.records_in(split).count()
        );
    }
    let _ = writeln!(out, "labels (positive / ignored):");
    for (i, name) in data.label_names.iter().enumerate() {
        let (mut pos, mut ignored) = (0, 0);
        for r in &data.records {
            match r.labels[i].value(policy) {
                Some(v) if v > 0.5 => pos += 1,
                Some(_) => {}
                None => ignored += 1,
            }
        }
        let _ = writeln!(
            out,
            "  {name:28} {pos:7} ({:5.1}%) {ignored:7}",
            100.0 * pos as f64 / n as f64
        );
    }
    let present =
        |f: &dyn Fn(&crate::data::Record) -> bool| data.records.iter().filter(|r| f(r)).count();
    let _ = writeln!(out, "EHR fields present:");
    for (name, count) in [
        ("sex", present(&|r| r.ehr.sex.is_some())),
        ("age", present(&|r| r.ehr.age.is_some())),
        ("view", present(&|r| r.ehr.view.is_some())),
        ("orientation", present(&|r| r.ehr.orientation.is_some())),
        ("mortality", present(&|r| r.ehr.died_in_hospital.is_some())),
        ("icu", present(&|r| r.ehr.in_icu.is_some())),
    ] {
        let _ = writeln!(out, "  {name:12} {count:7} of {n}");
    }
    out
}
