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
    /// NIH: the folder holding the images (images_*/images/ inside are searched; default:
    /// the table's folder when it holds images_* folders); CheXpert: the folder the Path
    /// column is relative to (default: derived from the CSV's place).
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
    /// NIH: the share of train_val_list.txt's patients held out as the validation split
    /// (NIH names none), chosen by a hash of the patient id: the same patients everywhere.
    #[arg(long, value_name = "FRACTION", default_value_t = nih::VALIDATION_FRACTION)]
    pub validation_fraction: f64,
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
    /// Decode every image first and leave out (and count) those that cannot be read,
    /// instead of stopping at the first one met.
    #[arg(long)]
    pub skip_bad_images: bool,
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
            validation_fraction: nih::VALIDATION_FRACTION,
            remove_no_finding: false,
            uncertain: FillArg::Zero,
            blank: FillArg::Zero,
            skip_bad_rows: false,
            skip_bad_images: false,
        }
    }

    /// The label policy these flags ask for.
    pub fn policy(&self) -> LabelPolicy {
        LabelPolicy {
            uncertain: self.uncertain.into(),
            blank: self.blank.into(),
        }
    }

    /// Loads the dataset; errors say which dataset and what went wrong. With
    /// `--skip-bad-images`, every image is decoded once and those that fail are left out,
    /// counted in the report and listed on standard error.
    pub fn load(&self) -> Result<Dataset> {
        let mut data = self.load_inner().with_context(|| {
            format!(
                "cannot read the {} dataset at {}",
                self.format
                    .to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_string()),
                self.data.display()
            )
        })?;
        if self.skip_bad_images {
            let failures = data.drop_unreadable_images(&cxr_msn::decode::DecodeLimits::default());
            if !failures.is_empty() {
                eprintln!(
                    "left out {} images that cannot be read (--skip-bad-images):",
                    failures.len()
                );
                for (_, message) in failures.iter().take(20) {
                    eprintln!("  {message}");
                }
            }
            if data.records.is_empty() {
                bail!("{}: no image can be read", self.data.display());
            }
        }
        Ok(data)
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
                if !(0.0..1.0).contains(&self.validation_fraction) {
                    bail!(
                        "--validation-fraction must be at least 0 and below 1, got {}",
                        self.validation_fraction
                    );
                }
                let splits = self.nih_split_lists()?;
                let data = nih::load(
                    &self.data,
                    &NihOptions {
                        image_root: self.images.clone().or_else(|| self.nih_images_beside()),
                        splits: splits.clone(),
                        validation_fraction: self.validation_fraction,
                        remove_no_finding: self.remove_no_finding,
                        on_bad_row: on_bad,
                    },
                )?;
                if splits.is_none() {
                    eprintln!(
                        "note: no train_val_list.txt and test_list.txt beside {}: the images \
                         have no split (pretraining takes them all, the official test images \
                         included; probe, fine-tune and eval need the lists: --split-lists DIR)",
                        self.data.display()
                    );
                }
                data
            }
        };
        if data.records.is_empty() {
            bail!("{}: no usable images\n{}", self.data.display(), data.report);
        }
        Ok(data)
    }
}

impl DataArgs {
    /// The table's own folder when it holds NIH's `images_*` folders (as NIH ships them):
    /// where the images are when `--images` is not given.
    fn nih_images_beside(&self) -> Option<PathBuf> {
        let folder = self.data.parent().filter(|p| !p.as_os_str().is_empty());
        let folder = folder.unwrap_or(std::path::Path::new("."));
        let has_images = std::fs::read_dir(folder).ok()?.flatten().any(|entry| {
            entry.path().is_dir() && entry.file_name().to_string_lossy().starts_with("images")
        });
        has_images.then(|| folder.to_path_buf())
    }

    /// NIH's split lists: those in `--split-lists`, which must be there, else those next to
    /// the table when both are there.
    fn nih_split_lists(&self) -> Result<Option<NihSplits>> {
        let present = |s: &NihSplits| s.train_val.is_file() && s.test.is_file();
        if let Some(dir) = &self.split_lists {
            let lists = NihSplits::in_folder(dir);
            if !present(&lists) {
                let missing: Vec<String> = [&lists.train_val, &lists.test]
                    .into_iter()
                    .filter(|p| !p.is_file())
                    .map(|p| p.display().to_string())
                    .collect();
                bail!(
                    "--split-lists {}: {} not found (NIH ships train_val_list.txt and \
                     test_list.txt beside Data_Entry_2017.csv)",
                    dir.display(),
                    missing.join(" and ")
                );
            }
            return Ok(Some(lists));
        }
        let beside = NihSplits::in_folder(self.data.parent().unwrap_or(std::path::Path::new("")));
        Ok(present(&beside).then_some(beside))
    }
}

/// The error for a split that holds no images, saying which splits do (a CheXpert
/// `valid.csv` is the validate split, so `--split validate` scores it).
pub fn empty_split(data: &Dataset, asked: &str, path: &std::path::Path) -> anyhow::Error {
    let held: Vec<String> = [Split::Train, Split::Validate, Split::Test]
        .into_iter()
        .map(|s| (s, data.records_in(s).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{} ({n} images)", s.name()))
        .collect();
    let hint = match held.as_slice() {
        [] => "it has no split at all: --split all takes every image".to_string(),
        [one] => format!(
            "it holds only {one}: choose it with --split {}",
            one.split(' ').next().unwrap_or_default()
        ),
        many => format!("it holds {}", many.join(", ")),
    };
    anyhow::anyhow!("the {asked} split of {} is empty; {hint}", path.display())
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
            100.0 * pos as f64 / n.max(1) as f64
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
