//! A plain manifest CSV for any other data (one's own images, the synthetic generator's).
//!
//! Schema (column names exact, in any order):
//! - `path` (required): the image file, relative to the manifest's folder, or absolute;
//! - reserved EHR columns, each optional: `sex` (M / F / Male / Female), `age` (years,
//!   0 to 120), `view` (PA / AP / LATERAL / LL), `orientation` (Erect / Recumbent), `icu`
//!   and `mortality` (1 / 0 / true / false); blank = missing;
//! - `split` (train / validate / test; blank = none) and `patient_id` (blank = none),
//!   optional;
//! - every other column is a label: 1 / 0 / -1 / blank (also 1.0 / 0.0 / -1.0), in the
//!   manifest's column order. A manifest without label columns is valid (pretraining).

use std::path::Path;

use cxr_msn::ehr::EhrRecord;

use super::ehr_fields;
use super::table::{Column, Table};
use super::{DataError, Dataset, Label, LoadReport, OnBadRow, Record, Split};

/// The columns that are not labels.
pub const RESERVED: [&str; 9] = [
    "path",
    "sex",
    "age",
    "view",
    "orientation",
    "icu",
    "mortality",
    "split",
    "patient_id",
];

/// What a label cell of a manifest must hold.
pub const LABEL_EXPECTED: &str = "1, 0, -1 or blank";

/// Reads a manifest as the module docs describe.
pub fn load(manifest: &Path, on_bad: OnBadRow) -> Result<Dataset, DataError> {
    let folder = manifest.parent().unwrap_or(Path::new(""));
    let mut table = Table::open(manifest)?;
    let [path] = table.columns(["path"])?;
    let [sex, age, view, orientation, icu, mortality, split, patient] = [
        "sex",
        "age",
        "view",
        "orientation",
        "icu",
        "mortality",
        "split",
        "patient_id",
    ]
    .map(|name| table.find(name));
    let labels: Vec<Column> = table
        .header()
        .iter()
        .enumerate()
        .filter(|(_, name)| !RESERVED.contains(&name.as_str()))
        .map(|(index, name)| Column {
            index,
            name: name.clone(),
        })
        .collect();
    if let Some(unnamed) = labels.iter().find(|c| c.name.is_empty()) {
        return Err(DataError::BadValue {
            path: manifest.to_path_buf(),
            row: 1,
            field: format!("column {}", unnamed.index + 1),
            value: String::new(),
            expected: "a column name (a label name or one of the reserved names)".to_string(),
        });
    }

    let mut records = Vec::new();
    let pass = table.for_each_row(on_bad, |row| {
        let relative = row.get(&path);
        if relative.is_empty() {
            return Err(row.bad(&path, "an image path"));
        }
        let optional = |column: &Option<Column>| column.as_ref().map_or("", |c| row.get(c));
        let ehr = EhrRecord {
            sex: sex
                .as_ref()
                .map(|c| ehr_fields::sex(row, c))
                .transpose()?
                .flatten(),
            age: age
                .as_ref()
                .map(|c| ehr_fields::age(row, c))
                .transpose()?
                .flatten(),
            view: view
                .as_ref()
                .map(|c| ehr_fields::view(row, c))
                .transpose()?
                .flatten(),
            orientation: orientation
                .as_ref()
                .map(|c| ehr_fields::orientation(row, c))
                .transpose()?
                .flatten(),
            died_in_hospital: mortality
                .as_ref()
                .map(|c| ehr_fields::flag(row, c))
                .transpose()?
                .flatten(),
            in_icu: icu
                .as_ref()
                .map(|c| ehr_fields::flag(row, c))
                .transpose()?
                .flatten(),
        };
        let split = match (optional(&split), &split) {
            ("", _) | (_, None) => None,
            (text, Some(c)) => {
                Some(Split::parse(text).ok_or_else(|| row.bad(c, "train, validate or test"))?)
            }
        };
        let labels = labels
            .iter()
            .map(|c| Label::parse(row.get(c)).ok_or_else(|| row.bad(c, LABEL_EXPECTED)))
            .collect::<Result<Vec<_>, _>>()?;
        let patient = Some(optional(&patient)).filter(|p| !p.is_empty());
        records.push(Record {
            image: folder.join(relative),
            labels,
            ehr,
            patient: patient.map(str::to_string),
            study: None,
            split,
        });
        Ok(())
    })?;
    let mut report = LoadReport::default();
    pass.into_primary(&mut report);
    report.kept = records.len();
    Ok(Dataset {
        label_names: labels.into_iter().map(|c| c.name).collect(),
        records,
        report,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use cxr_msn::ehr::{Orientation, Sex, ViewPosition};

    use super::*;
    use crate::data::table::tests::write;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/manifest")
            .join(name)
    }

    #[test]
    fn every_unreserved_column_is_a_label_and_paths_are_relative_to_the_manifest() {
        let data = load(&fixture("manifest.csv"), OnBadRow::Fail).unwrap();
        assert_eq!(data.label_names, ["Cardiomegaly", "Edema", "Pneumonia"]);
        assert_eq!((data.report.rows_read, data.report.kept), (4, 4));
        let r = &data.records;
        assert_eq!(r[0].image, fixture("images/a.png"));
        assert_eq!(
            r[1].image,
            PathBuf::from("/srv/xray/b.png"),
            "absolute stays"
        );
        assert_eq!(
            r[0].ehr,
            EhrRecord {
                sex: Some(Sex::Male),
                age: Some(64.0),
                view: Some(ViewPosition::Pa),
                orientation: Some(Orientation::Erect),
                died_in_hospital: Some(false),
                in_icu: Some(true),
            }
        );
        assert_eq!(
            r[0].labels,
            [Label::Positive, Label::Negative, Label::Uncertain]
        );
        assert_eq!(
            r[1].labels,
            [Label::Blank, Label::Positive, Label::Negative]
        );
        assert_eq!(r[0].split, Some(Split::Train));
        assert_eq!(r[0].patient.as_deref(), Some("p1"));
        // Row 4: every reserved value blank.
        assert_eq!(r[2].ehr, EhrRecord::default());
        assert_eq!((r[2].split, r[2].patient.as_deref()), (None, None));
        assert_eq!(r[3].ehr.sex, Some(Sex::Female), "Female spelled out");
        assert_eq!(r[3].ehr.view, Some(ViewPosition::Lateral));
    }

    #[test]
    fn a_path_only_manifest_has_no_labels_and_no_ehr() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(dir.path(), "m.csv", "path\nx.png\n");
        let data = load(&csv, OnBadRow::Fail).unwrap();
        assert!(data.label_names.is_empty());
        assert_eq!(data.records[0].image, dir.path().join("x.png"));
        assert!(data.records[0].labels.is_empty());
    }

    #[test]
    fn errors_name_file_row_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(dir.path(), "m.csv", "image,sex\nx.png,M\n");
        let err = load(&csv, OnBadRow::Fail).unwrap_err().to_string();
        assert!(
            err.contains("m.csv: missing column(s) 'path'; the header has: image, sex"),
            "{err}"
        );

        let cases = [
            (
                "x.png,M,OBLIQUE,1",
                "row 3, field 'view': expected PA, AP, LATERAL or LL (or blank), found 'OBLIQUE'",
            ),
            (
                "x.png,M,PA,yes",
                "row 3, field 'Edema': expected 1, 0, -1 or blank, found 'yes'",
            ),
            (
                "x.png,Q,PA,1",
                "row 3, field 'sex': expected M, F, Male or Female (or blank), found 'Q'",
            ),
            (
                ",M,PA,1",
                "row 3, field 'path': expected an image path, found ''",
            ),
            (
                "x.png,M,PA",
                "row 3: expected 4 fields (as the header), found 3",
            ),
        ];
        for (line, want) in cases {
            let csv = write(
                dir.path(),
                "m.csv",
                &format!("path,sex,view,Edema\ny.png,F,AP,0\n{line}\n"),
            );
            let err = load(&csv, OnBadRow::Fail).unwrap_err().to_string();
            assert!(err.contains("m.csv: ") && err.ends_with(want), "{err}");
            let data = load(&csv, OnBadRow::Skip).unwrap();
            assert_eq!(
                (
                    data.report.rows_read,
                    data.report.kept,
                    data.report.dropped_total()
                ),
                (2, 1, 1)
            );
        }
        let csv = write(dir.path(), "m.csv", "path,,Edema\nx.png,,1\n");
        let err = load(&csv, OnBadRow::Fail).unwrap_err().to_string();
        assert!(
            err.contains("row 1, field 'column 2': expected a column name"),
            "{err}"
        );
        let csv = write(dir.path(), "m.csv", "path,split\nx.png,holdout\n");
        let err = load(&csv, OnBadRow::Fail).unwrap_err().to_string();
        assert!(
            err.ends_with("field 'split': expected train, validate or test, found 'holdout'"),
            "{err}"
        );
    }
}
