//! MIMIC-CXR-JPG 2.0.0 (METHOD.md section 8).
//!
//! The images are listed by the split table (`mimic-cxr-2.0.0-split.csv(.gz)`: dicom_id,
//! study_id, subject_id, split, or a custom table with the same columns) and found at
//! `files/p{first two digits of subject_id}/p{subject_id}/s{study_id}/{dicom_id}.jpg`
//! under the root. Labels come per study from `mimic-cxr-2.0.0-chexpert.csv(.gz)` or
//! `-negbio.csv(.gz)` (subject_id, study_id, the 14 findings as 1.0 / 0.0 / -1.0 / blank)
//! and apply to every image of the study; an image whose study has no label row is
//! dropped ("study has no label row"). Labels come out in [`MIMIC_LABELS`] order.
//!
//! EHR facts are optional: given a linkage CSV (written by `cxr-msn ehr`,
//! [`super::mimic_ehr`]), each image takes its row by dicom_id, and an image without one
//! is dropped ("not in the EHR linkage"): the linkage left it out for a reason (no sex,
//! a rare view, an unknown subject). Without it every EHR record is empty.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

use cxr_msn::labels::MIMIC_LABELS;

use super::mimic_ehr::read_csv as read_linkage;
use super::mimic_iv::subject_id;
use super::table::{Column, Row, Table, find_csv};
use super::{DataError, Dataset, Label, LoadReport, OnBadRow, Record, Split};

/// What a label cell must hold.
pub const LABEL_EXPECTED: &str = "1.0, 0.0, -1.0 or blank";
/// Drop reason: the study has no row in the label table.
pub const NO_LABELS: &str = "study has no label row";
/// Drop reason: the image has no row in the EHR linkage.
pub const NO_EHR: &str = "not in the EHR linkage";

/// Which labeller's table to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Labeler {
    /// `mimic-cxr-2.0.0-chexpert.csv` (default; the paper's labels).
    #[default]
    Chexpert,
    /// `mimic-cxr-2.0.0-negbio.csv`.
    Negbio,
}

impl Labeler {
    /// The table's name, without extension.
    pub fn table_name(self) -> &'static str {
        match self {
            Self::Chexpert => "mimic-cxr-2.0.0-chexpert",
            Self::Negbio => "mimic-cxr-2.0.0-negbio",
        }
    }
}

/// Where the parts of MIMIC-CXR-JPG are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimicCxrFiles {
    /// The folder that holds `files/`.
    pub image_root: PathBuf,
    /// The label table (CheXpert or NegBio labeller).
    pub labels: PathBuf,
    /// The split table: the official one or a custom one with the same columns.
    pub split: PathBuf,
    /// The EHR linkage CSV, if any.
    pub ehr: Option<PathBuf>,
}

impl MimicCxrFiles {
    /// The official layout: label and split tables (`.csv` or `.csv.gz`) next to `files/`
    /// in `root`; no EHR linkage.
    pub fn in_folder(root: &Path, labeler: Labeler) -> Result<Self, DataError> {
        Ok(Self {
            image_root: root.to_path_buf(),
            labels: find_csv(root, &[labeler.table_name()], "MIMIC-CXR label table")?,
            split: find_csv(root, &["mimic-cxr-2.0.0-split"], "MIMIC-CXR split table")?,
            ehr: None,
        })
    }
}

/// `{root}/files/p{first two digits}/p{subject_id}/s{study_id}/{dicom_id}.jpg`.
pub fn image_path(root: &Path, subject_id: u64, study_id: u64, dicom_id: &str) -> PathBuf {
    let subject = subject_id.to_string();
    let prefix: String = subject.chars().take(2).collect();
    root.join("files")
        .join(format!("p{prefix}"))
        .join(format!("p{subject}"))
        .join(format!("s{study_id}"))
        .join(format!("{dicom_id}.jpg"))
}

/// Reads MIMIC-CXR-JPG as the module docs describe.
pub fn load(files: &MimicCxrFiles, on_bad: OnBadRow) -> Result<Dataset, DataError> {
    let mut report = LoadReport::default();
    let labels = read_labels(&files.labels, on_bad, &mut report)?;
    let ehr = match &files.ehr {
        Some(path) => {
            let (records, pass) = read_linkage(path, on_bad)?;
            pass.into_secondary(&mut report);
            Some(records)
        }
        None => None,
    };

    let mut table = Table::open(&files.split)?;
    let [dicom, study, subject, split] =
        table.columns(["dicom_id", "study_id", "subject_id", "split"])?;
    let mut records = Vec::new();
    let pass = table.for_each_row(on_bad, |row| {
        let dicom_id = row.get(&dicom);
        if dicom_id.is_empty() {
            return Err(row.bad(&dicom, "a dicom_id"));
        }
        let subject_id = subject_id(row, &subject)?;
        let study_id = study_id(row, &study)?;
        let split = Split::parse(row.get(&split))
            .ok_or_else(|| row.bad(&split, "train, validate or test"))?;
        let Some(study_labels) = labels.get(&(subject_id, study_id)) else {
            report.drop_row(NO_LABELS);
            return Ok(());
        };
        let ehr = match &ehr {
            None => Default::default(),
            Some(map) => match map.get(dicom_id) {
                Some(record) => record.clone(),
                None => {
                    report.drop_row(NO_EHR);
                    return Ok(());
                }
            },
        };
        records.push(Record {
            image: image_path(&files.image_root, subject_id, study_id, dicom_id),
            labels: study_labels.clone(),
            ehr,
            patient: Some(subject_id.to_string()),
            study: Some(study_id.to_string()),
            split: Some(split),
        });
        Ok(())
    })?;
    pass.into_primary(&mut report);
    report.kept = records.len();
    Ok(Dataset {
        label_names: MIMIC_LABELS.iter().map(|s| s.to_string()).collect(),
        records,
        report,
    })
}

fn study_id(row: &Row<'_>, column: &Column) -> Result<u64, DataError> {
    row.parse(column, "a study_id (a whole number)")
}

/// The label table: labels in [`MIMIC_LABELS`] order by (subject_id, study_id).
fn read_labels(
    path: &Path,
    on_bad: OnBadRow,
    report: &mut LoadReport,
) -> Result<HashMap<(u64, u64), Vec<Label>>, DataError> {
    let mut table = Table::open(path)?;
    let [subject, study] = table.columns(["subject_id", "study_id"])?;
    let columns = table.require(&MIMIC_LABELS)?;
    let mut labels = HashMap::new();
    let pass = table.for_each_row(on_bad, |row| {
        let key = (subject_id(row, &subject)?, study_id(row, &study)?);
        let values = columns
            .iter()
            .map(|c| Label::parse(row.get(c)).ok_or_else(|| row.bad(c, LABEL_EXPECTED)))
            .collect::<Result<Vec<_>, _>>()?;
        match labels.entry(key) {
            Entry::Occupied(_) => Err(row.bad(&study, "one label row per study")),
            Entry::Vacant(slot) => {
                slot.insert(values);
                Ok(())
            }
        }
    })?;
    pass.into_secondary(report);
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use cxr_msn::ehr::{EhrRecord, Orientation, Sex, ViewPosition};

    use super::*;
    use crate::data::mimic_ehr::tests::fixture;
    use crate::data::table::tests::write;

    fn label(data: &Dataset, record: &Record, name: &str) -> Label {
        let i = data.label_names.iter().position(|n| n == name).unwrap();
        record.labels[i]
    }

    #[test]
    fn images_get_their_study_labels_paths_and_splits() {
        let files = MimicCxrFiles::in_folder(&fixture("mimic-cxr"), Labeler::Chexpert).unwrap();
        let data = load(&files, OnBadRow::Fail).unwrap();
        assert_eq!(data.label_names, MIMIC_LABELS);
        assert_eq!((data.report.rows_read, data.report.kept), (14, 13));
        assert_eq!(data.report.dropped[NO_LABELS], 1, "study 58000001");
        let first = &data.records[0];
        assert_eq!(
            first.image,
            fixture(
                "mimic-cxr/files/p10/p10000032/s50414267/\
                 02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
            )
        );
        assert_eq!(first.patient.as_deref(), Some("10000032"));
        assert_eq!(first.study.as_deref(), Some("50414267"));
        assert_eq!(first.ehr, EhrRecord::default(), "no linkage given");
        // Study labels apply to both images of study 50414267.
        assert_eq!(first.labels, data.records[1].labels);
        assert_eq!(label(&data, first, "No Finding"), Label::Positive);
        assert_eq!(label(&data, first, "Edema"), Label::Blank);
        // Study 53189527: Cardiomegaly 1.0, Edema -1.0.
        let third = &data.records[2];
        assert_eq!(label(&data, third, "Cardiomegaly"), Label::Positive);
        assert_eq!(label(&data, third, "Edema"), Label::Uncertain);
        assert_eq!(
            third.targets(&Default::default())[3],
            Some(0.0),
            "paper: -1 -> 0"
        );
        assert_eq!(data.records_in(Split::Validate).count(), 1);
        assert_eq!(data.records_in(Split::Test).count(), 2);
        assert_eq!(data.records_in(Split::Train).count(), 10);
    }

    #[test]
    fn the_ehr_linkage_joins_by_dicom_id_and_negbio_labels_read_from_gzip() {
        let mut files = MimicCxrFiles::in_folder(&fixture("mimic-cxr"), Labeler::Negbio).unwrap();
        assert!(files.labels.ends_with("mimic-cxr-2.0.0-negbio.csv.gz"));
        files.ehr = Some(fixture("expected/ehr.csv"));
        let data = load(&files, OnBadRow::Fail).unwrap();
        // Dropped: study 58000001 has no labels; two rare views, a patient without sex
        // and an unknown subject are not in the linkage.
        assert_eq!((data.report.rows_read, data.report.kept), (14, 9));
        assert_eq!(data.report.dropped[NO_LABELS], 1);
        assert_eq!(data.report.dropped[NO_EHR], 4);
        let third = &data.records[2];
        assert_eq!(
            label(&data, third, "Edema"),
            Label::Negative,
            "NegBio differs"
        );
        assert_eq!(
            third.ehr,
            EhrRecord {
                sex: Some(Sex::Female),
                age: Some(52.0),
                view: Some(ViewPosition::Pa),
                orientation: Some(Orientation::Erect),
                died_in_hospital: Some(false),
                in_icu: Some(false),
            }
        );
    }

    #[test]
    fn bad_label_and_split_rows_name_file_row_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let labels = MIMIC_LABELS.join(",");
        let blanks = ",".repeat(13);
        let label_file = write(
            dir.path(),
            "labels.csv",
            &format!("subject_id,study_id,{labels}\n1,2,{blanks}\n1,3,0.5{blanks}\n"),
        );
        let split = write(
            dir.path(),
            "split.csv",
            "dicom_id,study_id,subject_id,split\na,2,1,train\nb,2,1,holdout\n",
        );
        let mut files = MimicCxrFiles {
            image_root: dir.path().to_path_buf(),
            labels: label_file,
            split,
            ehr: None,
        };
        let err = load(&files, OnBadRow::Fail).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "labels.csv: row 3, field 'Atelectasis': expected 1.0, 0.0, -1.0 or blank, \
                 found '0.5'"
            ),
            "{err}"
        );
        let data = load(&files, OnBadRow::Skip).unwrap();
        assert_eq!((data.report.rows_read, data.report.kept), (2, 1));
        assert_eq!(data.report.dropped["bad value in 'split'"], 1);
        assert_eq!(
            data.report.skipped_elsewhere["labels.csv: bad value in 'Atelectasis'"],
            1
        );
        assert_eq!(
            data.records[0].image,
            dir.path().join("files/p1/p1/s2/a.jpg")
        );

        files.labels = write(dir.path(), "cut.csv", "subject_id,study_id,Atelectasis\n");
        let err = load(&files, OnBadRow::Fail).unwrap_err().to_string();
        assert!(
            err.contains("cut.csv: missing column(s) 'Cardiomegaly', "),
            "{err}"
        );
    }
}
