//! CheXpert (METHOD.md section 8): `train.csv` / `valid.csv` (Path, Sex, Age,
//! Frontal/Lateral, AP/PA, then the 14 findings) and `test.csv` (Path and the 14
//! findings). Labels are found by name and come out in [`CHEXPERT_LABELS`] order;
//! [`to_mimic_order`] puts them in the MIMIC order a MIMIC-trained head scores.
//!
//! EHR facts: Sex Male / Female (Unknown or blank = missing); Age in years; the view is
//! LATERAL when Frontal/Lateral is Lateral, AP or PA for a Frontal image whose AP/PA is
//! AP or PA, and missing otherwise (e.g. Frontal with LL, RL or blank). The columns Sex,
//! Age, Frontal/Lateral and AP/PA are each optional (test.csv has none of them).
//!
//! Image paths in the files start with the dataset folder (`CheXpert-v1.0-small/train/
//! patient00001/study1/view1_frontal.jpg`). By default they are resolved against the
//! folder above the CSV's folder when their first component is the CSV's folder name,
//! and against the CSV's folder otherwise; [`ChexpertOptions::image_root`] overrides it.

use std::path::{Component, Path, PathBuf};

use cxr_msn::ehr::{EhrRecord, Sex, ViewPosition};
use cxr_msn::labels::{CHEXPERT_LABELS, MIMIC_LABELS};

use super::ehr_fields;
use super::mimic::LABEL_EXPECTED;
use super::table::Table;
use super::{DataError, Dataset, Label, LoadReport, OnBadRow, Record, Split};

/// How to read a CheXpert table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChexpertOptions {
    /// The folder the `Path` column is relative to. Default (`None`): derived from the
    /// CSV's location as the module docs say.
    pub image_root: Option<PathBuf>,
    /// The split of every record. Default (`None`): from the file name (`train` ->
    /// train, `valid` -> validate, `test` -> test, anything else -> no split).
    pub split: Option<Split>,
    /// What to do with a bad row. Default: fail.
    pub on_bad_row: OnBadRow,
}

/// Reads one CheXpert CSV.
pub fn load(csv: &Path, options: &ChexpertOptions) -> Result<Dataset, DataError> {
    let folder = csv.parent().unwrap_or(Path::new("")).to_path_buf();
    let split = options.split.or_else(|| {
        csv.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.split('.').next())
            .and_then(Split::parse)
    });
    let mut table = Table::open(csv)?;
    let [path_column] = table.columns(["Path"])?;
    let label_columns = table.require(&CHEXPERT_LABELS)?;
    let sex = table.find("Sex");
    let age = table.find("Age");
    let frontal = table.find("Frontal/Lateral");
    let ap_pa = table.find("AP/PA");

    let mut records = Vec::new();
    let pass = table.for_each_row(options.on_bad_row, |row| {
        let relative = row.get(&path_column);
        if relative.is_empty() {
            return Err(row.bad(&path_column, "an image path"));
        }
        let sex = match &sex {
            Some(c) => match row.get(c).to_ascii_lowercase().as_str() {
                "male" => Some(Sex::Male),
                "female" => Some(Sex::Female),
                "unknown" | "" => None,
                _ => return Err(row.bad(c, "Male, Female or Unknown")),
            },
            None => None,
        };
        let age = match &age {
            Some(c) => ehr_fields::age(row, c)?,
            None => None,
        };
        let lateral = match &frontal {
            Some(c) => match row.get(c).to_ascii_lowercase().as_str() {
                "frontal" => Some(false),
                "lateral" => Some(true),
                "" => None,
                _ => return Err(row.bad(c, "Frontal or Lateral (or blank)")),
            },
            None => None,
        };
        let projection = ap_pa.as_ref().map_or("", |c| row.get(c));
        let view = match (lateral, projection.to_ascii_uppercase().as_str()) {
            (Some(true), _) => Some(ViewPosition::Lateral),
            (Some(false), "AP") => Some(ViewPosition::Ap),
            (Some(false), "PA") => Some(ViewPosition::Pa),
            _ => None,
        };
        let labels = label_columns
            .iter()
            .map(|c| Label::parse(row.get(c)).ok_or_else(|| row.bad(c, LABEL_EXPECTED)))
            .collect::<Result<Vec<_>, _>>()?;
        let (patient, study) = patient_and_study(relative);
        let image = match &options.image_root {
            Some(root) => root.join(relative),
            None => resolve(&folder, relative),
        };
        records.push(Record {
            image,
            labels,
            ehr: EhrRecord {
                sex,
                age,
                view,
                ..Default::default()
            },
            patient,
            study,
            split,
        });
        Ok(())
    })?;
    let mut report = LoadReport::default();
    pass.into_primary(&mut report);
    report.kept = records.len();
    Ok(Dataset {
        label_names: CHEXPERT_LABELS.iter().map(|s| s.to_string()).collect(),
        records,
        report,
    })
}

/// Puts a CheXpert dataset's labels in the MIMIC order ([`MIMIC_LABELS`]), the output
/// order of a MIMIC-trained head.
pub fn to_mimic_order(dataset: &mut Dataset) -> Result<(), DataError> {
    dataset.reorder_labels(&MIMIC_LABELS)
}

/// The image path for `relative`, read from a CSV in `folder`.
fn resolve(folder: &Path, relative: &str) -> PathBuf {
    let relative = Path::new(relative);
    let first = relative.components().next();
    let starts_with_folder = matches!(
        (first, folder.file_name()),
        (Some(Component::Normal(a)), Some(b)) if a == b
    );
    match folder.parent() {
        Some(parent) if starts_with_folder => parent.join(relative),
        _ => folder.join(relative),
    }
}

/// The `patientNNNNN` component of a path, and `patientNNNNN/studyN` as the study.
fn patient_and_study(relative: &str) -> (Option<String>, Option<String>) {
    let parts: Vec<&str> = relative.split(['/', '\\']).collect();
    let Some(i) = parts.iter().position(|p| p.starts_with("patient")) else {
        return (None, None);
    };
    let patient = parts[i].to_string();
    let study = parts
        .get(i + 1)
        .filter(|s| s.starts_with("study"))
        .map(|s| format!("{patient}/{s}"));
    (Some(patient), study)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/chexpert")
            .join(name)
    }

    #[test]
    fn train_csv_gives_sex_age_view_and_labels_in_chexpert_order() {
        let csv = fixture("CheXpert-v1.0-small/train.csv");
        let data = load(&csv, &ChexpertOptions::default()).unwrap();
        assert_eq!(data.label_names, CHEXPERT_LABELS);
        assert_eq!(data.report.rows_read, 6);
        assert_eq!(data.report.kept, 6);
        let r = &data.records;
        // Row 2: Female, 68, Frontal AP; No Finding blank, Lung Opacity 1, Pleural
        // Effusion -1, Support Devices 1.
        assert_eq!(
            r[0].image,
            fixture("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
        );
        assert_eq!(r[0].patient.as_deref(), Some("patient00001"));
        assert_eq!(r[0].study.as_deref(), Some("patient00001/study1"));
        assert_eq!(r[0].split, Some(Split::Train));
        assert_eq!(r[0].ehr.sex, Some(Sex::Female));
        assert_eq!(r[0].ehr.age, Some(68.0));
        assert_eq!(r[0].ehr.view, Some(ViewPosition::Ap));
        assert_eq!(r[0].labels[0], Label::Blank, "No Finding");
        assert_eq!(r[0].labels[3], Label::Positive, "Lung Opacity");
        assert_eq!(r[0].labels[10], Label::Uncertain, "Pleural Effusion");
        assert_eq!(r[0].labels[13], Label::Positive, "Support Devices");
        // Row 3: Male, Frontal PA, No Finding 1.0.
        assert_eq!(
            (r[1].ehr.sex, r[1].ehr.view, r[1].labels[0]),
            (Some(Sex::Male), Some(ViewPosition::Pa), Label::Positive)
        );
        // Row 4: Lateral with a blank AP/PA.
        assert_eq!(r[2].ehr.view, Some(ViewPosition::Lateral));
        // Row 5: Unknown sex, Frontal with LL: view missing.
        assert_eq!((r[3].ehr.sex, r[3].ehr.view), (None, None));
        // Row 6: Frontal with RL: missing. Row 7: Frontal with a blank AP/PA: missing.
        assert_eq!((r[4].ehr.view, r[5].ehr.view), (None, None));
    }

    #[test]
    fn valid_and_test_csv_take_their_split_and_reorder_to_mimic() {
        let valid = load(
            &fixture("CheXpert-v1.0-small/valid.csv"),
            &ChexpertOptions::default(),
        )
        .unwrap();
        assert!(
            valid
                .records
                .iter()
                .all(|r| r.split == Some(Split::Validate))
        );
        assert_eq!(valid.records.len(), 2);

        let mut test = load(&fixture("test/test.csv"), &ChexpertOptions::default()).unwrap();
        assert_eq!(test.records.len(), 3);
        let first = &test.records[0];
        assert_eq!(first.split, Some(Split::Test));
        assert_eq!(
            first.ehr,
            EhrRecord::default(),
            "test.csv has no EHR columns"
        );
        // test.csv paths ("test/patient64741/...") start with the CSV's folder name.
        assert_eq!(
            first.image,
            fixture("test/patient64741/study1/view1_frontal.jpg")
        );
        // Row 2 of test.csv: Cardiomegaly (CheXpert column 2) and Edema (5) positive,
        // written as integers.
        assert_eq!(first.labels[2], Label::Positive);
        assert_eq!(first.labels[5], Label::Positive);
        assert_eq!(first.labels[0], Label::Negative);
        to_mimic_order(&mut test).unwrap();
        assert_eq!(test.label_names, MIMIC_LABELS);
        let first = &test.records[0];
        assert_eq!(
            first.labels[1],
            Label::Positive,
            "Cardiomegaly, MIMIC column 1"
        );
        assert_eq!(first.labels[3], Label::Positive, "Edema, MIMIC column 3");
        assert_eq!(
            first.labels[8],
            Label::Negative,
            "No Finding, MIMIC column 8"
        );
        assert_eq!(
            first
                .labels
                .iter()
                .filter(|l| **l == Label::Positive)
                .count(),
            2
        );
    }

    #[test]
    fn an_explicit_root_and_split_override_the_defaults() {
        let options = ChexpertOptions {
            image_root: Some(PathBuf::from("/data/chexpert")),
            split: Some(Split::Test),
            ..Default::default()
        };
        let data = load(&fixture("CheXpert-v1.0-small/valid.csv"), &options).unwrap();
        assert!(
            data.records[0]
                .image
                .starts_with("/data/chexpert/CheXpert-v1.0-small/valid")
        );
        assert_eq!(data.records[0].split, Some(Split::Test));
    }

    #[test]
    fn bad_values_name_file_row_and_field() {
        use crate::data::table::tests::write;
        let dir = tempfile::tempdir().unwrap();
        let labels = CHEXPERT_LABELS.join(",");
        let blank = ",".repeat(13);
        let cases = [
            (
                "Other,50,Frontal,AP",
                "field 'Sex': expected Male, Female or Unknown, found 'Other'",
            ),
            (
                "Male,-3,Frontal,AP",
                "field 'Age': expected an age in years between 0 and 120, found '-3'",
            ),
            (
                "Male,50,Oblique,AP",
                "field 'Frontal/Lateral': expected Frontal or Lateral (or blank), found 'Oblique'",
            ),
        ];
        for (meta, want) in cases {
            let text = format!(
                "Path,Sex,Age,Frontal/Lateral,AP/PA,{labels}\n\
                 x/train/patient1/study1/view1.jpg,Male,50,Frontal,PA,{blank}\n\
                 x/train/patient1/study1/view2.jpg,{meta},{blank}\n"
            );
            let csv = write(dir.path(), "train.csv", &text);
            let err = load(&csv, &ChexpertOptions::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.ends_with(want) && err.contains("train.csv: row 3, "),
                "{err}"
            );
        }
        let text = format!("Path,{labels}\nx/test/patient1/study1/view1.jpg,2{blank}\n");
        let csv = write(dir.path(), "test.csv", &text);
        let err = load(&csv, &ChexpertOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("row 2, field 'No Finding': expected 1.0, 0.0, -1.0 or blank, found '2'"),
            "{err}"
        );
        let skipped = load(
            &csv,
            &ChexpertOptions {
                on_bad_row: OnBadRow::Skip,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(skipped.report.rows_read, 1);
        assert_eq!(skipped.report.dropped["bad value in 'No Finding'"], 1);

        let csv = write(dir.path(), "cut.csv", "Path,Sex,No Finding\n");
        let err = load(&csv, &ChexpertOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cut.csv: missing column(s) 'Enlarged Cardiomediastinum', 'Cardiomegaly'"),
            "{err}"
        );
    }
}
