//! The three MIMIC-IV tables the EHR linkage reads (METHOD.md section 8): `patients`,
//! `admissions` and `icustays`, as `.csv` or `.csv.gz`, in either layout:
//! v1 (`core/patients`, `core/admissions`, `icu/icustays`) or v2 and later
//! (`hosp/patients`, `hosp/admissions`, `icu/icustays`). Only the columns the linkage
//! uses are required; v1's `ethnicity` and v2's `race` are both ignored.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

use cxr_msn::ehr::Sex;

use super::date::Date;
use super::ehr_fields::{AGE_EXPECTED, check_age};
use super::table::{Column, Row, Table, find_csv};
use super::{DataError, LoadReport, OnBadRow};

/// What a subject_id cell must hold.
pub const SUBJECT_EXPECTED: &str = "a subject_id (a whole number)";
/// What a MIMIC-IV timestamp cell must hold.
const TIMESTAMP_EXPECTED: &str = "a timestamp YYYY-MM-DD HH:MM:SS";

/// Which MIMIC-IV release layout a folder has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// MIMIC-IV 1.0: `core/` and `icu/`.
    V1,
    /// MIMIC-IV 2.0 and later: `hosp/` and `icu/`.
    V2,
}

/// The three tables of one MIMIC-IV folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimicIvPaths {
    /// The layout found.
    pub layout: Layout,
    /// `hosp/patients.csv(.gz)` or `core/patients.csv(.gz)`.
    pub patients: PathBuf,
    /// `hosp/admissions.csv(.gz)` or `core/admissions.csv(.gz)`.
    pub admissions: PathBuf,
    /// `icu/icustays.csv(.gz)`.
    pub icustays: PathBuf,
}

impl MimicIvPaths {
    /// Finds the tables under `dir` (the release folder, e.g. `mimiciv/2.2`). The v2+
    /// layout is tried first; within a folder `.csv` is preferred to `.csv.gz`.
    pub fn find(dir: &Path) -> Result<Self, DataError> {
        let patients = find_csv(
            dir,
            &["hosp/patients", "core/patients"],
            "MIMIC-IV patients table",
        )?;
        let (layout, folder) = if patients.parent().is_some_and(|p| p.ends_with("hosp")) {
            (Layout::V2, "hosp")
        } else {
            (Layout::V1, "core")
        };
        let admissions = find_csv(
            dir,
            &[&format!("{folder}/admissions")],
            "MIMIC-IV admissions table",
        )?;
        let icustays = find_csv(dir, &["icu/icustays"], "MIMIC-IV icustays table")?;
        Ok(Self {
            layout,
            patients,
            admissions,
            icustays,
        })
    }
}

/// One row of `patients`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patient {
    /// From `gender` (M / F); `None` where blank.
    pub sex: Option<Sex>,
    /// `anchor_age`: the age in `anchor_year` (0 to 120).
    pub anchor_age: i32,
    /// `anchor_year` (shifted).
    pub anchor_year: i32,
    /// The row of `patients` this came from, for error messages.
    pub row: usize,
}

impl Patient {
    /// Age in a given (shifted) year: `year - anchor_year + anchor_age`.
    pub fn age_in(&self, year: i32) -> i32 {
        year - self.anchor_year + self.anchor_age
    }
}

/// A span of calendar days, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First day.
    pub start: Date,
    /// Last day.
    pub end: Date,
}

impl Span {
    /// Whether `day` lies within the span (a span that ends before it starts holds no day).
    pub fn contains(&self, day: Date) -> bool {
        self.start <= day && day <= self.end
    }
}

/// One row of `admissions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// admittime to dischtime, as calendar days.
    pub span: Span,
    /// `hospital_expire_flag` = 1: the patient died during this admission.
    pub died: bool,
}

/// The patients, admissions and ICU stays of one MIMIC-IV folder, by subject_id.
#[derive(Debug, Clone, Default)]
pub struct MimicIv {
    /// Patients by subject_id.
    pub patients: HashMap<u64, Patient>,
    /// Admissions by subject_id, in file order.
    pub admissions: HashMap<u64, Vec<Admission>>,
    /// ICU stays (intime to outtime) by subject_id, in file order.
    pub icu_stays: HashMap<u64, Vec<Span>>,
}

impl MimicIv {
    /// Reads the three tables. Rows skipped under [`OnBadRow::Skip`] are counted in
    /// `report.skipped_elsewhere`.
    pub fn read(
        paths: &MimicIvPaths,
        on_bad: OnBadRow,
        report: &mut LoadReport,
    ) -> Result<Self, DataError> {
        let mut iv = Self::default();
        iv.read_patients(&paths.patients, on_bad, report)?;
        iv.read_admissions(&paths.admissions, on_bad, report)?;
        iv.read_icustays(&paths.icustays, on_bad, report)?;
        Ok(iv)
    }

    /// The admission whose span contains `day`; when several do, the last in file order.
    pub fn admission_at(&self, subject: u64, day: Date) -> Option<&Admission> {
        self.admissions
            .get(&subject)?
            .iter()
            .rev()
            .find(|a| a.span.contains(day))
    }

    /// Whether an ICU stay of the subject contains `day`.
    pub fn in_icu_at(&self, subject: u64, day: Date) -> bool {
        self.icu_stays
            .get(&subject)
            .is_some_and(|stays| stays.iter().any(|s| s.contains(day)))
    }

    fn read_patients(
        &mut self,
        path: &Path,
        on_bad: OnBadRow,
        report: &mut LoadReport,
    ) -> Result<(), DataError> {
        let mut table = Table::open(path)?;
        let [subject, gender, anchor_age, anchor_year] =
            table.columns(["subject_id", "gender", "anchor_age", "anchor_year"])?;
        let patients = &mut self.patients;
        let pass = table.for_each_row(on_bad, |row| {
            let id = subject_id(row, &subject)?;
            let sex = match row.get(&gender) {
                "" => None,
                "M" | "m" => Some(Sex::Male),
                "F" | "f" => Some(Sex::Female),
                _ => return Err(row.bad(&gender, "M or F (or blank)")),
            };
            let age: i32 = row.parse(&anchor_age, AGE_EXPECTED)?;
            if !check_age(age as f32) {
                return Err(row.bad(&anchor_age, AGE_EXPECTED));
            }
            let year = row.parse(&anchor_year, "a year (e.g. 2180)")?;
            match patients.entry(id) {
                Entry::Occupied(first) => Err(row.bad(
                    &subject,
                    format!("one row per subject_id (first at row {})", first.get().row),
                )),
                Entry::Vacant(slot) => {
                    slot.insert(Patient {
                        sex,
                        anchor_age: age,
                        anchor_year: year,
                        row: row.number(),
                    });
                    Ok(())
                }
            }
        })?;
        pass.into_secondary(report);
        Ok(())
    }

    fn read_admissions(
        &mut self,
        path: &Path,
        on_bad: OnBadRow,
        report: &mut LoadReport,
    ) -> Result<(), DataError> {
        let mut table = Table::open(path)?;
        let [subject, admit, discharge, expire] = table.columns([
            "subject_id",
            "admittime",
            "dischtime",
            "hospital_expire_flag",
        ])?;
        let admissions = &mut self.admissions;
        let pass = table.for_each_row(on_bad, |row| {
            let id = subject_id(row, &subject)?;
            let span = Span {
                start: date(row, &admit)?,
                end: date(row, &discharge)?,
            };
            let died = match row.get(&expire) {
                "1" => true,
                "0" => false,
                _ => return Err(row.bad(&expire, "0 or 1")),
            };
            admissions
                .entry(id)
                .or_default()
                .push(Admission { span, died });
            Ok(())
        })?;
        pass.into_secondary(report);
        Ok(())
    }

    fn read_icustays(
        &mut self,
        path: &Path,
        on_bad: OnBadRow,
        report: &mut LoadReport,
    ) -> Result<(), DataError> {
        let mut table = Table::open(path)?;
        let [subject, intime, outtime] = table.columns(["subject_id", "intime", "outtime"])?;
        let stays = &mut self.icu_stays;
        let pass = table.for_each_row(on_bad, |row| {
            let id = subject_id(row, &subject)?;
            let span = Span {
                start: date(row, &intime)?,
                end: date(row, &outtime)?,
            };
            stays.entry(id).or_default().push(span);
            Ok(())
        })?;
        pass.into_secondary(report);
        Ok(())
    }
}

/// A subject_id cell.
pub fn subject_id(row: &Row<'_>, column: &Column) -> Result<u64, DataError> {
    row.parse(column, SUBJECT_EXPECTED)
}

/// The calendar day of a timestamp cell.
fn date(row: &Row<'_>, column: &Column) -> Result<Date, DataError> {
    Date::parse(row.get(column)).ok_or_else(|| row.bad(column, TIMESTAMP_EXPECTED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::table::tests::write;

    fn day(text: &str) -> Date {
        Date::parse(text).unwrap()
    }

    #[test]
    fn both_layouts_are_found_and_a_missing_table_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1");
        write(&v1, "core/patients.csv", "x\n");
        write(&v1, "core/admissions.csv.gz", "x\n");
        write(&v1, "icu/icustays.csv", "x\n");
        let paths = MimicIvPaths::find(&v1).unwrap();
        assert_eq!(paths.layout, Layout::V1);
        assert!(paths.admissions.ends_with("core/admissions.csv.gz"));

        let v2 = dir.path().join("v2");
        write(&v2, "hosp/patients.csv.gz", "x\n");
        write(&v2, "hosp/admissions.csv", "x\n");
        let err = MimicIvPaths::find(&v2).unwrap_err().to_string();
        assert!(
            err.starts_with("MIMIC-IV icustays table not found") && err.contains("icu/icustays"),
            "{err}"
        );
        write(&v2, "icu/icustays.csv.gz", "x\n");
        assert_eq!(MimicIvPaths::find(&v2).unwrap().layout, Layout::V2);

        let err = MimicIvPaths::find(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("hosp/patients.csv") && err.contains("core/patients.csv.gz"),
            "{err}"
        );
    }

    #[test]
    fn the_last_containing_admission_wins_and_spans_include_both_ends() {
        let mut iv = MimicIv::default();
        let span = |a, b| Span {
            start: day(a),
            end: day(b),
        };
        iv.admissions.insert(
            7,
            vec![
                Admission {
                    span: span("2180-01-01", "2180-01-10"),
                    died: false,
                },
                Admission {
                    span: span("2180-01-10", "2180-01-20"),
                    died: true,
                },
            ],
        );
        iv.icu_stays
            .insert(7, vec![span("2180-01-05", "2180-01-05")]);
        assert!(!iv.admission_at(7, day("2180-01-01")).unwrap().died);
        assert!(
            iv.admission_at(7, day("2180-01-10")).unwrap().died,
            "last wins"
        );
        assert!(iv.admission_at(7, day("2180-01-20")).unwrap().died);
        assert!(iv.admission_at(7, day("2180-01-21")).is_none());
        assert!(iv.admission_at(8, day("2180-01-05")).is_none());
        assert!(iv.in_icu_at(7, day("2180-01-05")));
        assert!(!iv.in_icu_at(7, day("2180-01-06")));
        assert!(!span("2180-02-02", "2180-02-01").contains(day("2180-02-01")));
    }

    #[test]
    fn bad_patients_rows_name_file_row_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "7,X,50,2180",
                "field 'gender': expected M or F (or blank), found 'X'",
            ),
            (
                "7,F,150,2180",
                "field 'anchor_age': expected an age in years between 0 and 120, found '150'",
            ),
            (
                "7,F,50,soon",
                "field 'anchor_year': expected a year (e.g. 2180), found 'soon'",
            ),
            (
                "p7,F,50,2180",
                "field 'subject_id': expected a subject_id (a whole number), found 'p7'",
            ),
            (
                "1,F,50,2180",
                "field 'subject_id': expected one row per subject_id (first at row 2), found '1'",
            ),
        ];
        for (line, want) in cases {
            let text = format!(
                "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod\n\
                 1,M,40,2180,2014 - 2016,\n{line},2014 - 2016,\n"
            );
            let patients = write(dir.path(), "hosp/patients.csv", &text);
            let paths = MimicIvPaths {
                layout: Layout::V2,
                patients: patients.clone(),
                admissions: write(
                    dir.path(),
                    "hosp/admissions.csv",
                    "subject_id,admittime,dischtime,hospital_expire_flag\n",
                ),
                icustays: write(
                    dir.path(),
                    "icu/icustays.csv",
                    "subject_id,intime,outtime\n",
                ),
            };
            let mut report = LoadReport::default();
            let err = MimicIv::read(&paths, OnBadRow::Fail, &mut report)
                .unwrap_err()
                .to_string();
            let prefix = format!("{}: row 3, ", patients.display());
            assert!(err.starts_with(&prefix) && err.ends_with(want), "{err}");
            let iv = MimicIv::read(&paths, OnBadRow::Skip, &mut report).unwrap();
            assert_eq!(iv.patients.len(), 1);
            assert_eq!(report.skipped_elsewhere.values().sum::<usize>(), 1);
            assert!(
                report
                    .skipped_elsewhere
                    .keys()
                    .all(|k| k.starts_with("patients.csv: bad value in '"))
            );
        }
    }

    #[test]
    fn unparsable_admission_and_icu_times_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let paths = MimicIvPaths {
            layout: Layout::V1,
            patients: write(
                dir.path(),
                "core/patients.csv",
                "subject_id,gender,anchor_age,anchor_year\n",
            ),
            admissions: write(
                dir.path(),
                "core/admissions.csv.gz",
                "subject_id,hadm_id,admittime,dischtime,hospital_expire_flag\n\
                 1,11,2180-01-01 10:00:00,2180-13-02 10:00:00,0\n\
                 1,12,2180-01-01 10:00:00,2180-01-02 10:00:00,yes\n",
            ),
            icustays: write(
                dir.path(),
                "icu/icustays.csv",
                "subject_id,hadm_id,stay_id,intime,outtime\n1,11,111,2180-01-01 11:00:00,\n",
            ),
        };
        let mut report = LoadReport::default();
        let err = MimicIv::read(&paths, OnBadRow::Fail, &mut report)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(
                "admissions.csv.gz: row 2, field 'dischtime': expected a timestamp \
                 YYYY-MM-DD HH:MM:SS, found '2180-13-02 10:00:00'"
            ),
            "{err}"
        );
        let iv = MimicIv::read(&paths, OnBadRow::Skip, &mut report).unwrap();
        assert!(iv.admissions.is_empty() && iv.icu_stays.is_empty());
        assert_eq!(
            report.skipped_elsewhere["admissions.csv.gz: bad value in 'dischtime'"],
            1
        );
        assert_eq!(
            report.skipped_elsewhere["admissions.csv.gz: bad value in 'hospital_expire_flag'"],
            1
        );
        assert_eq!(
            report.skipped_elsewhere["icustays.csv: bad value in 'outtime'"],
            1
        );
    }
}
