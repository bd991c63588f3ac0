//! The MIMIC-CXR to MIMIC-IV EHR linkage (METHOD.md section 5): one row of EHR facts per
//! MIMIC-CXR image, read from `mimic-cxr-2.0.0-metadata.csv(.gz)` and the MIMIC-IV
//! `patients`, `admissions` and `icustays` tables ([`super::mimic_iv`]).
//!
//! The rules, per metadata row:
//! - The image links to its patient by `subject_id`. An image whose subject is not in
//!   `patients` is dropped ("subject not in MIMIC-IV patients"), and so is one whose
//!   patient has a blank `gender` ("no sex in MIMIC-IV patients").
//! - Sex: `gender` M / F.
//! - Age at scan = year of `StudyDate` - `anchor_year` + `anchor_age`; an age outside
//!   0..=120 is an error on the row's `StudyDate`.
//! - View: `ViewPosition` PA, LATERAL, AP or LL. Any other non-blank view (AP AXIAL,
//!   SWIMMERS, ...) drops the image, counted per value ("rare view 'SWIMMERS'"). A blank
//!   view is imputed.
//! - Orientation: `PatientOrientationCodeSequence_CodeMeaning` Erect or Recumbent; blank is
//!   imputed; any other value is an error.
//! - Mortality: `hospital_expire_flag` of the admission that contains the scan, an
//!   admission containing the scan when the scan's calendar date lies within
//!   [admit date, discharge date], both included, time of day ignored; when several do,
//!   the last in the admissions file wins. With no containing admission (an outpatient or
//!   emergency-department scan) the patient is counted alive: the scan was not taken
//!   during a hospital stay that ended in death.
//! - ICU: 1 when an ICU stay's [intime date, outtime date] contains the scan date.
//! - Imputation of a missing view or orientation: the conditional mode of
//!   [`super::impute`], grouping images by `PerformedProcedureStepDescription`, over the
//!   kept images' observed values. Imputed values are flagged (`view_imputed`,
//!   `orientation_imputed`). If no kept image has an observed value, the value stays
//!   missing (blank in the CSV).
//!
//! Unparsable ids and dates, impossible ages and unknown genders or orientations are
//! errors naming the file, row and field, or skipped and counted with [`OnBadRow::Skip`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use cxr_msn::ehr::{EhrRecord, Orientation, Sex, ViewPosition};

use super::date::Date;
use super::ehr_fields::{
    self, ORIENTATIONS, VIEWS, check_age, orientation_name, sex_code, view_name,
};
use super::impute::ModeImputer;
use super::mimic_iv::{MimicIv, MimicIvPaths, subject_id};
use super::table::{Pass, Table, find_csv};
use super::{DataError, LoadReport, OnBadRow};
use crate::files::write_atomically;

/// The MIMIC-CXR-JPG metadata table's name, without extension.
pub const METADATA_NAME: &str = "mimic-cxr-2.0.0-metadata";

/// The columns of the linkage CSV, in order.
pub const COLUMNS: [&str; 11] = [
    "dicom_id",
    "subject_id",
    "study_id",
    "sex",
    "age",
    "view",
    "orientation",
    "mortality",
    "icu",
    "view_imputed",
    "orientation_imputed",
];

/// Drop reason: the subject has no row in `patients`.
pub const NO_PATIENT: &str = "subject not in MIMIC-IV patients";
/// Drop reason: the patient's `gender` is blank.
pub const NO_SEX: &str = "no sex in MIMIC-IV patients";

/// `path` itself when it is a file, else the metadata table inside the folder `path`.
pub fn find_metadata(path: &Path) -> Result<PathBuf, DataError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else if path.is_dir() {
        find_csv(path, &[METADATA_NAME], "MIMIC-CXR metadata table")
    } else {
        Err(DataError::NotFound {
            what: "MIMIC-CXR metadata table or folder".to_string(),
            candidates: vec![path.to_path_buf()],
        })
    }
}

/// The EHR facts of one MIMIC-CXR image.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkedImage {
    /// The image's `dicom_id`.
    pub dicom_id: String,
    /// The patient.
    pub subject_id: u64,
    /// The study.
    pub study_id: u64,
    /// From `patients.gender`.
    pub sex: Sex,
    /// Age in years at the scan.
    pub age: i32,
    /// View position, observed or imputed (`None` only when nothing could be imputed).
    pub view: Option<ViewPosition>,
    /// Orientation, observed or imputed (`None` only when nothing could be imputed).
    pub orientation: Option<Orientation>,
    /// Died during the containing admission (false without one).
    pub died_in_hospital: bool,
    /// Scan taken during an ICU stay.
    pub in_icu: bool,
    /// The view was imputed.
    pub view_imputed: bool,
    /// The orientation was imputed.
    pub orientation_imputed: bool,
}

impl LinkedImage {
    /// The record the model's EHR encoder takes.
    pub fn ehr(&self) -> EhrRecord {
        EhrRecord {
            sex: Some(self.sex),
            age: Some(self.age as f32),
            view: self.view,
            orientation: self.orientation,
            died_in_hospital: Some(self.died_in_hospital),
            in_icu: Some(self.in_icu),
        }
    }
}

/// The linked images, in metadata order, and what happened to every metadata row.
#[derive(Debug, Clone, PartialEq)]
pub struct Linkage {
    /// One entry per kept image.
    pub images: Vec<LinkedImage>,
    /// Rows read, kept, dropped by reason, imputed by field, skipped in MIMIC-IV tables.
    pub report: LoadReport,
}

/// Links every image of the metadata table to MIMIC-IV by the rules of the module docs.
pub fn link(
    metadata: &Path,
    mimic_iv: &MimicIvPaths,
    on_bad: OnBadRow,
) -> Result<Linkage, DataError> {
    let mut report = LoadReport::default();
    let iv = MimicIv::read(mimic_iv, on_bad, &mut report)?;
    let patients_file = file_name(&mimic_iv.patients);

    let mut table = Table::open(metadata)?;
    let [dicom, subject, study, description, view, date, orientation] = table.columns([
        "dicom_id",
        "subject_id",
        "study_id",
        "PerformedProcedureStepDescription",
        "ViewPosition",
        "StudyDate",
        "PatientOrientationCodeSequence_CodeMeaning",
    ])?;
    let mut images = Vec::new();
    let mut groups = Vec::new();
    let mut seen = HashSet::new();
    let mut views = ModeImputer::new(&VIEWS);
    let mut orientations = ModeImputer::new(&ORIENTATIONS);
    let pass: Pass = table.for_each_row(on_bad, |row| {
        let dicom_id = row.get(&dicom);
        if dicom_id.is_empty() {
            return Err(row.bad(&dicom, "a dicom_id"));
        }
        if !seen.insert(dicom_id.to_string()) {
            return Err(row.bad(&dicom, "each dicom_id once"));
        }
        let subject_id = subject_id(row, &subject)?;
        let study_id: u64 = row.parse(&study, "a study_id (a whole number)")?;
        let day = Date::parse(row.get(&date)).ok_or_else(|| row.bad(&date, "a date YYYYMMDD"))?;
        let orientation_seen = ehr_fields::orientation(row, &orientation)?;
        let view_text = row.get(&view);
        let view_seen = match view_text {
            "" => None,
            text => match ViewPosition::parse(text) {
                Ok(v) => Some(v),
                Err(_) => {
                    report.drop_row(format!("rare view '{text}'"));
                    return Ok(());
                }
            },
        };
        let Some(patient) = iv.patients.get(&subject_id) else {
            report.drop_row(NO_PATIENT);
            return Ok(());
        };
        let Some(sex) = patient.sex else {
            report.drop_row(NO_SEX);
            return Ok(());
        };
        let age = patient.age_in(day.year);
        if !check_age(age as f32) {
            return Err(row.bad(
                &date,
                format!(
                    "a date at which the patient is 0 to 120 years old ({patients_file} row {}: \
                     anchor_age {} in anchor_year {} gives {age} in {})",
                    patient.row, patient.anchor_age, patient.anchor_year, day.year
                ),
            ));
        }
        let group = row.get(&description);
        if let Some(v) = view_seen {
            views.observe(group, v);
        }
        if let Some(o) = orientation_seen {
            orientations.observe(group, o);
        }
        groups.push(group.to_string());
        images.push(LinkedImage {
            dicom_id: dicom_id.to_string(),
            subject_id,
            study_id,
            sex,
            age,
            view: view_seen,
            orientation: orientation_seen,
            died_in_hospital: iv.admission_at(subject_id, day).is_some_and(|a| a.died),
            in_icu: iv.in_icu_at(subject_id, day),
            view_imputed: false,
            orientation_imputed: false,
        });
        Ok(())
    })?;
    pass.into_primary(&mut report);

    for (image, group) in images.iter_mut().zip(&groups) {
        if image.view.is_none() {
            image.view = views.impute(group);
            image.view_imputed = image.view.is_some();
        }
        if image.orientation.is_none() {
            image.orientation = orientations.impute(group);
            image.orientation_imputed = image.orientation.is_some();
        }
    }
    for (field, n) in [
        ("view", images.iter().filter(|i| i.view_imputed).count()),
        (
            "orientation",
            images.iter().filter(|i| i.orientation_imputed).count(),
        ),
    ] {
        if n > 0 {
            report.imputed.insert(field.to_string(), n);
        }
    }
    report.kept = images.len();
    Ok(Linkage { images, report })
}

/// Writes the linkage CSV ([`COLUMNS`]) atomically: `out` is either left as it was or
/// replaced whole.
pub fn write_csv(images: &[LinkedImage], out: &Path) -> Result<(), DataError> {
    write_atomically(out, |sink| {
        let mut writer = csv::Writer::from_writer(sink);
        writer.write_record(COLUMNS).map_err(csv_to_io)?;
        for image in images {
            let flag = |b: bool| if b { "1" } else { "0" };
            writer
                .write_record([
                    image.dicom_id.as_str(),
                    &image.subject_id.to_string(),
                    &image.study_id.to_string(),
                    sex_code(image.sex),
                    &image.age.to_string(),
                    image.view.map_or("", view_name),
                    image.orientation.map_or("", orientation_name),
                    flag(image.died_in_hospital),
                    flag(image.in_icu),
                    flag(image.view_imputed),
                    flag(image.orientation_imputed),
                ])
                .map_err(csv_to_io)?;
        }
        writer.flush()?;
        Ok(())
    })
    .map_err(|e| DataError::io(out, e))
}

/// The I/O error inside a CSV writer error (the writer writes strings only, so any other
/// kind is unexpected and passed on as "other").
fn csv_to_io(error: csv::Error) -> io::Error {
    let message = error.to_string();
    match error.into_kind() {
        csv::ErrorKind::Io(e) => e,
        _ => io::Error::other(message),
    }
}

/// Reads a linkage CSV (as [`write_csv`] writes it) into EHR records by `dicom_id`.
/// The columns `dicom_id`, `sex`, `age`, `view`, `orientation`, `mortality` and `icu` are
/// required; blank cells are missing values. The returned [`Pass`] counts rows and skips.
pub fn read_csv(
    path: &Path,
    on_bad: OnBadRow,
) -> Result<(HashMap<String, EhrRecord>, Pass), DataError> {
    let mut table = Table::open(path)?;
    let [dicom, sex, age, view, orientation, mortality, icu] = table.columns([
        "dicom_id",
        "sex",
        "age",
        "view",
        "orientation",
        "mortality",
        "icu",
    ])?;
    let mut records = HashMap::new();
    let pass = table.for_each_row(on_bad, |row| {
        let id = row.get(&dicom);
        if id.is_empty() {
            return Err(row.bad(&dicom, "a dicom_id"));
        }
        let record = EhrRecord {
            sex: ehr_fields::sex(row, &sex)?,
            age: ehr_fields::age(row, &age)?,
            view: ehr_fields::view(row, &view)?,
            orientation: ehr_fields::orientation(row, &orientation)?,
            died_in_hospital: ehr_fields::flag(row, &mortality)?,
            in_icu: ehr_fields::flag(row, &icu)?,
        };
        match records.entry(id.to_string()) {
            Entry::Occupied(_) => Err(row.bad(&dicom, "each dicom_id once")),
            Entry::Vacant(slot) => {
                slot.insert(record);
                Ok(())
            }
        }
    })?;
    Ok((records, pass))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::table::tests::write;

    pub(crate) fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    fn link_fixture(mimic_iv: &str) -> Linkage {
        let metadata = find_metadata(&fixture("mimic-cxr")).unwrap();
        let paths = MimicIvPaths::find(&fixture(mimic_iv)).unwrap();
        link(&metadata, &paths, OnBadRow::Fail).unwrap()
    }

    fn by_dicom<'a>(linkage: &'a Linkage, prefix: &str) -> &'a LinkedImage {
        linkage
            .images
            .iter()
            .find(|i| i.dicom_id.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} not kept"))
    }

    #[test]
    fn the_fixture_links_as_derived_by_hand_in_both_layouts() {
        let v1 = link_fixture("mimic-iv-1.0");
        let v2 = link_fixture("mimic-iv-2.2");
        assert_eq!(v1, v2, "v1 and v2 layouts hold the same rows");
        let report = &v2.report;
        assert_eq!((report.rows_read, report.kept), (14, 10));
        assert_eq!(report.dropped["rare view 'AP AXIAL'"], 1);
        assert_eq!(report.dropped["rare view 'SWIMMERS'"], 1);
        assert_eq!(report.dropped[NO_SEX], 1);
        assert_eq!(report.dropped[NO_PATIENT], 1);
        assert_eq!(report.dropped.len(), 4);
        assert_eq!(report.imputed["view"], 2);
        assert_eq!(report.imputed["orientation"], 2);
        assert!(report.skipped_elsewhere.is_empty() && report.examples.is_empty());

        // ICU stay on the scan date (2180-07-23), inside admission 25742920.
        let icu = by_dicom(&v2, "68b5c4b1");
        assert!(icu.in_icu && !icu.died_in_hospital);
        assert_eq!((icu.sex, icu.age), (Sex::Female, 52));
        // The admission's discharge day (2180-07-25, scanned after the discharge time)
        // contains the scan; the ICU stay ended two days before. Orientation imputed from
        // "CHEST (PORTABLE AP)" (Recumbent 3 of 3).
        let discharge_day = by_dicom(&v2, "fffabebf");
        assert!(!discharge_day.in_icu && !discharge_day.died_in_hospital);
        assert_eq!(discharge_day.orientation, Some(Orientation::Recumbent));
        assert!(discharge_day.orientation_imputed && !discharge_day.view_imputed);
        // Admission 29079034 ended in death.
        assert!(by_dicom(&v2, "096052b7").died_in_hospital);
        // Two overlapping admissions contain 2132-10-19: the last listed (died) wins.
        let overlap = by_dicom(&v2, "6d7e8f9a");
        assert!(overlap.died_in_hospital && !overlap.in_icu);
        // The same patient, outside both admissions.
        assert!(!by_dicom(&v2, "4b4d7f4a").died_in_hospital);
        // Two years after the anchor year.
        assert_eq!(by_dicom(&v2, "7e8f9a0b").age, 88);
        assert_eq!(by_dicom(&v2, "7e8f9a0b").view, Some(ViewPosition::Ll));
        // A missing view imputed from its group ("CHEST (PA AND LAT)": PA 2 of 4).
        let group = by_dicom(&v2, "2a2277a9");
        assert_eq!(group.view, Some(ViewPosition::Pa));
        assert!(group.view_imputed && !group.orientation_imputed);
        // No containing admission, a group seen nowhere else: global modes, alive.
        let global = by_dicom(&v2, "8959e402");
        assert_eq!(
            (global.view, global.orientation),
            (Some(ViewPosition::Ap), Some(Orientation::Erect))
        );
        assert!(global.view_imputed && global.orientation_imputed);
        assert!(!global.died_in_hospital && !global.in_icu);
        assert_eq!(
            global.ehr(),
            EhrRecord {
                sex: Some(Sex::Female),
                age: Some(52.0),
                view: Some(ViewPosition::Ap),
                orientation: Some(Orientation::Erect),
                died_in_hospital: Some(false),
                in_icu: Some(false),
            }
        );
    }

    #[test]
    fn metadata_is_found_as_a_file_or_in_its_folder() {
        let in_folder = find_metadata(&fixture("mimic-cxr")).unwrap();
        assert!(in_folder.ends_with("mimic-cxr/mimic-cxr-2.0.0-metadata.csv.gz"));
        assert_eq!(find_metadata(&in_folder).unwrap(), in_folder);
        let err = find_metadata(&fixture("nih")).unwrap_err().to_string();
        assert!(err.contains("mimic-cxr-2.0.0-metadata.csv.gz"), "{err}");
        let err = find_metadata(&fixture("no-such")).unwrap_err().to_string();
        assert!(err.contains("no-such"), "{err}");
    }

    const HEADER: &str = "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,\
                          ViewPosition,Rows,Columns,StudyDate,StudyTime,\
                          ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,\
                          PatientOrientationCodeSequence_CodeMeaning";
    const GOOD: &str = "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,\
                        213014.531,CHEST (PA AND LAT),postero-anterior,Erect";

    #[test]
    fn bad_metadata_rows_name_file_row_and_field_or_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let paths = MimicIvPaths::find(&fixture("mimic-iv-2.2")).unwrap();
        let cases = [
            (
                "d2,10000032,50414267,X,PA,1,1,2180-05-33,0,X,x,Erect",
                "row 3, field 'StudyDate': expected a date YYYYMMDD, found '2180-05-33'",
            ),
            (
                "d2,10000032,50414267,X,PA,1,1,23100506,0,X,x,Erect",
                "row 3, field 'StudyDate': expected a date at which the patient is 0 to 120 \
                 years old (patients.csv.gz row 2: anchor_age 52 in anchor_year 2180 gives \
                 182 in 2310), found '23100506'",
            ),
            (
                "d2,10000032,50414267,X,PA,1,1,21000506,0,X,x,Erect",
                "gives -28 in 2100), found '21000506'",
            ),
            (
                "d2,10000032,50414267,X,PA,1,1,21800506,0,X,x,Sitting",
                "row 3, field 'PatientOrientationCodeSequence_CodeMeaning': expected Erect or \
                 Recumbent (or blank), found 'Sitting'",
            ),
            (
                "d2,p10000032,50414267,X,PA,1,1,21800506,0,X,x,Erect",
                "row 3, field 'subject_id': expected a subject_id (a whole number), found \
                 'p10000032'",
            ),
            (
                "d2,10000032,50414267,X,PA,1,1,21800506,0,X,x",
                "row 3: expected 12 fields (as the header), found 11",
            ),
            (
                "d1,10000032,50414267,X,PA,1,1,21800506,0,X,x,Erect",
                "row 3, field 'dicom_id': expected each dicom_id once, found 'd1'",
            ),
        ];
        for (line, want) in cases {
            let metadata = write(
                dir.path(),
                "mimic-cxr-2.0.0-metadata.csv.gz",
                &format!("{HEADER}\n{GOOD}\n{line}\n"),
            );
            let err = link(&metadata, &paths, OnBadRow::Fail)
                .unwrap_err()
                .to_string();
            let prefix = format!("{}: ", metadata.display());
            assert!(err.starts_with(&prefix) && err.ends_with(want), "{err}");
            let linkage = link(&metadata, &paths, OnBadRow::Skip).unwrap();
            let report = &linkage.report;
            assert_eq!((report.rows_read, report.kept), (2, 1), "{line}");
            assert_eq!(report.dropped_total(), 1);
            assert_eq!(report.examples, [err]);
        }
        let metadata = write(dir.path(), "m.csv", "dicom_id,subject_id,StudyDate\n");
        let err = link(&metadata, &paths, OnBadRow::Skip)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "m.csv: missing column(s) 'study_id', 'PerformedProcedureStepDescription', \
                 'ViewPosition', 'PatientOrientationCodeSequence_CodeMeaning'"
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_mimic_iv_rows_stop_the_linkage_or_are_counted_apart() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "hosp/patients.csv",
            "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod\n\
             10000032,F,52,2180,2014 - 2016,\n10000033,U,52,2180,2014 - 2016,\n",
        );
        write(
            dir.path(),
            "hosp/admissions.csv",
            "subject_id,hadm_id,admittime,dischtime,hospital_expire_flag\n",
        );
        write(
            dir.path(),
            "icu/icustays.csv",
            "subject_id,hadm_id,stay_id,intime,outtime\n",
        );
        let paths = MimicIvPaths::find(dir.path()).unwrap();
        let metadata = write(dir.path(), "meta.csv", &format!("{HEADER}\n{GOOD}\n"));
        let err = link(&metadata, &paths, OnBadRow::Fail)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(
                "patients.csv: row 3, field 'gender': expected M or F (or blank), found 'U'"
            ),
            "{err}"
        );
        let linkage = link(&metadata, &paths, OnBadRow::Skip).unwrap();
        assert_eq!((linkage.report.rows_read, linkage.report.kept), (1, 1));
        assert_eq!(
            linkage.report.skipped_elsewhere["patients.csv: bad value in 'gender'"],
            1
        );
        assert!(linkage.report.to_string().contains("skipped"));
    }

    #[test]
    fn the_written_csv_reads_back_and_unknown_views_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let linkage = link_fixture("mimic-iv-2.2");
        let out = dir.path().join("ehr.csv");
        write_csv(&linkage.images, &out).unwrap();
        let (records, pass) = read_csv(&out, OnBadRow::Fail).unwrap();
        assert_eq!((records.len(), pass.rows), (10, 10));
        for image in &linkage.images {
            assert_eq!(records[&image.dicom_id], image.ehr());
        }
        let bad = write(
            dir.path(),
            "bad.csv",
            "dicom_id,sex,age,view,orientation,mortality,icu\nd1,F,52,AP AXIAL,Erect,0,0\n",
        );
        let err = read_csv(&bad, OnBadRow::Fail).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "bad.csv: row 2, field 'view': expected PA, AP, LATERAL or LL (or blank), \
                 found 'AP AXIAL'"
            ),
            "{err}"
        );
    }
}
