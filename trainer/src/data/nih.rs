//! NIH ChestX-ray14 (METHOD.md section 8): `Data_Entry_2017*.csv`.
//!
//! The header's last two names hold commas inside brackets
//! (`OriginalImage[Width,Height]`, `OriginalImagePixelSpacing[x,y]`), so a data row has 11
//! fields, often followed by a trailing comma. Whether the header writes those names
//! plainly (two fields each) or quoted (one field each), each counts for as many fields
//! as it has comma-separated parts.
//!
//! Read: `Image Index`, `Finding Labels` (`|`-separated over [`NIH_LABELS`], or
//! `No Finding` alone; an unknown finding is an error), `Patient ID`, `Patient Age`
//! (years, also `058Y`; 0 to 120, as the original 2017 file has a few impossible ages),
//! `Patient Gender` or `Patient Sex` (M / F) and `View Position` (PA / AP). Labels come
//! out in [`NIH_LABELS`] order, each positive or negative.
//!
//! Splits: the official `train_val_list.txt` and `test_list.txt` (-> [`Split::Test`]).
//! NIH names no validation set, so [`NihOptions::validation_fraction`] of the train_val
//! patients (10 % by default) become [`Split::Validate`] and the rest [`Split::Train`],
//! chosen by a hash of the patient id: no patient is on both sides, and the same patients
//! are chosen on every machine, in every run and whatever rows the table holds. With the
//! lists, an image in neither is dropped (and counted). Images
//! (NIH ships `images_001/images/...`) are found by file name in the given root, its
//! `images*/` subfolders and their `images/` subfolders.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use cxr_msn::ehr::{EhrRecord, Sex, ViewPosition};
use cxr_msn::labels::NIH_LABELS;

use super::ehr_fields::{AGE_EXPECTED, check_age};
use super::table::{Column, Row, Table, open_maybe_gzip};
use super::{DataError, Dataset, Label, LoadReport, OnBadRow, Record, Split};

/// The value of `Finding Labels` for an image with none of the 14 findings.
pub const NO_FINDING: &str = "No Finding";
/// Drop reason with [`NihOptions::remove_no_finding`].
pub const REMOVED_NO_FINDING: &str = "No Finding (removed)";
/// Drop reason when an image root is given and the file is not under it.
pub const IMAGE_NOT_FOUND: &str = "image file not found";
/// Drop reason when split lists are given and the image is in neither.
pub const IN_NO_LIST: &str = "in neither train_val_list.txt nor test_list.txt";
/// The default [`NihOptions::validation_fraction`].
pub const VALIDATION_FRACTION: f64 = 0.1;

/// The official split lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NihSplits {
    /// `train_val_list.txt`: one image name per line.
    pub train_val: PathBuf,
    /// `test_list.txt`: one image name per line.
    pub test: PathBuf,
}

impl NihSplits {
    /// The official file names in `folder`.
    pub fn in_folder(folder: &Path) -> Self {
        Self {
            train_val: folder.join("train_val_list.txt"),
            test: folder.join("test_list.txt"),
        }
    }
}

/// How to read the NIH table.
#[derive(Debug, Clone, PartialEq)]
pub struct NihOptions {
    /// Where the images are. Default (`None`): not looked for; each record's image is
    /// the bare `Image Index` file name.
    pub image_root: Option<PathBuf>,
    /// The split lists. Default (`None`): records have no split.
    pub splits: Option<NihSplits>,
    /// With the lists: the share of the train_val patients whose images form the
    /// validation split (0 for none, 1 or more for all). Default [`VALIDATION_FRACTION`]
    /// (0.1).
    pub validation_fraction: f64,
    /// Drop the "No Finding" images (as the paper's NIH evaluation does). Default: keep.
    pub remove_no_finding: bool,
    /// What to do with a bad row. Default: fail.
    pub on_bad_row: OnBadRow,
}

impl Default for NihOptions {
    fn default() -> Self {
        Self {
            image_root: None,
            splits: None,
            validation_fraction: VALIDATION_FRACTION,
            remove_no_finding: false,
            on_bad_row: OnBadRow::default(),
        }
    }
}

/// Whether a train_val patient belongs to the validation split: the id's 64-bit FNV-1a
/// hash, mixed by SplitMix64's finaliser (FNV's high bits alone are uneven over short ids
/// such as NIH's numbers) and scaled to [0, 1), below `fraction`. A fixed function of the
/// id alone, so the choice does not depend on the machine, the run or the other rows.
pub fn in_validation(patient: &str, fraction: f64) -> bool {
    let mut z = patient.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// One column name per field of a data row: a (quoted) header name with commas inside
/// brackets, such as `OriginalImage[Width,Height]`, becomes one name per part.
pub fn split_bracketed(header: Vec<String>) -> Vec<String> {
    header
        .into_iter()
        .flat_map(|name| {
            if name.contains('[') && name.contains(',') {
                name.split(',').map(|p| p.trim().to_string()).collect()
            } else {
                vec![name]
            }
        })
        .collect()
}

/// Reads the NIH table as the module docs describe.
pub fn load(csv: &Path, options: &NihOptions) -> Result<Dataset, DataError> {
    let splits = match &options.splits {
        Some(lists) => Some((read_list(&lists.train_val)?, read_list(&lists.test)?)),
        None => None,
    };
    let images = match &options.image_root {
        Some(root) => Some(index_images(root)?),
        None => None,
    };

    let mut table = Table::open_with(csv, split_bracketed)?;
    let [name, findings, patient, age, view] = table.columns([
        "Image Index",
        "Finding Labels",
        "Patient ID",
        "Patient Age",
        "View Position",
    ])?;
    let sex = table.require_one_of(&["Patient Gender", "Patient Sex"])?;
    let mut report = LoadReport::default();
    let mut records = Vec::new();
    let pass = table.for_each_row(options.on_bad_row, |row| {
        let file = row.get(&name);
        if file.is_empty() {
            return Err(row.bad(&name, "an image file name"));
        }
        let labels = parse_findings(row, &findings)?;
        let patient_id = row.get(&patient);
        if patient_id.is_empty() {
            return Err(row.bad(&patient, "a patient id"));
        }
        let age = parse_age(row.get(&age))
            .ok_or_else(|| row.bad(&age, format!("{AGE_EXPECTED} (e.g. 58 or 058Y)")))?;
        let sex = match row.get(&sex) {
            "M" | "m" => Sex::Male,
            "F" | "f" => Sex::Female,
            _ => return Err(row.bad(&sex, "M or F")),
        };
        let view = match row.get(&view).to_ascii_uppercase().as_str() {
            "PA" => ViewPosition::Pa,
            "AP" => ViewPosition::Ap,
            _ => return Err(row.bad(&view, "PA or AP")),
        };
        if options.remove_no_finding && labels.iter().all(|l| *l == Label::Negative) {
            report.drop_row(REMOVED_NO_FINDING);
            return Ok(());
        }
        let image = match &images {
            None => PathBuf::from(file),
            Some(index) => match index.get(file) {
                Some(path) => path.clone(),
                None => {
                    report.drop_row(IMAGE_NOT_FOUND);
                    return Ok(());
                }
            },
        };
        let split = match &splits {
            None => None,
            Some((_, test)) if test.contains(file) => Some(Split::Test),
            Some((train_val, _)) if train_val.contains(file) => {
                if in_validation(patient_id, options.validation_fraction) {
                    Some(Split::Validate)
                } else {
                    Some(Split::Train)
                }
            }
            Some(_) => {
                report.drop_row(IN_NO_LIST);
                return Ok(());
            }
        };
        records.push(Record {
            image,
            labels,
            ehr: EhrRecord {
                sex: Some(sex),
                age: Some(age),
                view: Some(view),
                ..Default::default()
            },
            patient: Some(patient_id.to_string()),
            study: None,
            split,
        });
        Ok(())
    })?;
    pass.into_primary(&mut report);
    report.kept = records.len();
    Ok(Dataset {
        label_names: NIH_LABELS.iter().map(|s| s.to_string()).collect(),
        records,
        report,
    })
}

/// `Finding Labels` as 14 positive / negative labels in [`NIH_LABELS`] order.
fn parse_findings(row: &Row<'_>, column: &Column) -> Result<Vec<Label>, DataError> {
    let text = row.get(column);
    let mut labels = vec![Label::Negative; NIH_LABELS.len()];
    if text == NO_FINDING {
        return Ok(labels);
    }
    for finding in text.split('|').map(str::trim) {
        let Some(index) = NIH_LABELS.iter().position(|l| *l == finding) else {
            return Err(row.bad_value(
                &column.name,
                finding,
                format!(
                    "'|'-separated findings among {} (or '{NO_FINDING}' alone)",
                    NIH_LABELS.join(", ")
                ),
            ));
        };
        labels[index] = Label::Positive;
    }
    Ok(labels)
}

/// An age in years: `58` or `058Y`, within 0..=120.
fn parse_age(text: &str) -> Option<f32> {
    let digits = text.strip_suffix(['Y', 'y']).unwrap_or(text);
    let age: f32 = digits.parse().ok()?;
    check_age(age).then_some(age)
}

/// The image names of a split list (one per line; blank lines ignored).
fn read_list(path: &Path) -> Result<HashSet<String>, DataError> {
    let reader = BufReader::new(open_maybe_gzip(path)?);
    let mut names = HashSet::new();
    for line in reader.lines() {
        let line = line.map_err(|e| DataError::io(path, e))?;
        let line = line.trim();
        if !line.is_empty() {
            names.insert(line.to_string());
        }
    }
    Ok(names)
}

/// Every file in `root`, in its `images*/` subfolders and in their `images/` subfolders,
/// by file name. When two folders hold the same name, the first in sorted order wins.
pub fn index_images(root: &Path) -> Result<HashMap<String, PathBuf>, DataError> {
    let mut folders = vec![root.to_path_buf()];
    for entry in sorted_entries(root)? {
        let is_images = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("images"));
        if is_images && entry.is_dir() {
            folders.push(entry.clone());
            let inner = entry.join("images");
            if inner.is_dir() {
                folders.push(inner);
            }
        }
    }
    let mut index = HashMap::new();
    for folder in folders {
        for path in sorted_entries(&folder)? {
            if let Some(name) = path.file_name().and_then(|n| n.to_str())
                && path.is_file()
            {
                index.entry(name.to_string()).or_insert(path);
            }
        }
    }
    Ok(index)
}

fn sorted_entries(folder: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries = std::fs::read_dir(folder)
        .map_err(|e| DataError::io(folder, e))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataError::io(folder, e))?;
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::table::tests::write;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/nih")
            .join(name)
    }

    #[test]
    fn the_bracketed_header_and_trailing_commas_are_read() {
        let data = load(&fixture("Data_Entry_2017.csv"), &NihOptions::default()).unwrap();
        assert_eq!(data.label_names, NIH_LABELS);
        assert_eq!((data.report.rows_read, data.report.kept), (6, 6));
        let r = &data.records[0];
        assert_eq!(r.image, PathBuf::from("00000001_000.png"));
        assert_eq!(r.patient.as_deref(), Some("1"));
        assert_eq!(r.ehr.age, Some(58.0), "058Y");
        assert_eq!(r.ehr.sex, Some(Sex::Male));
        assert_eq!(r.ehr.view, Some(ViewPosition::Pa));
        assert_eq!(r.split, None);
        // Cardiomegaly|Emphysema.
        let positives: Vec<usize> = (0..14)
            .filter(|&i| r.labels[i] == Label::Positive)
            .collect();
        assert_eq!(positives, [1, 10]);
        assert!(
            data.records[2].labels.iter().all(|l| *l == Label::Negative),
            "No Finding"
        );
        assert_eq!(data.records[3].ehr.view, Some(ViewPosition::Ap));
    }

    #[test]
    fn patient_sex_quoted_brackets_splits_images_and_no_finding_removal() {
        let options = NihOptions {
            image_root: Some(fixture("")),
            splits: Some(NihSplits::in_folder(&fixture(""))),
            // Every train_val patient trains (the next test covers validation).
            validation_fraction: 0.0,
            remove_no_finding: true,
            ..Default::default()
        };
        let data = load(&fixture("Data_Entry_2017_patient_sex.csv"), &options).unwrap();
        // 5 rows: one No Finding removed, one image absent from the image folders, one in
        // neither list.
        assert_eq!(data.report.rows_read, 5);
        assert_eq!(data.report.dropped[REMOVED_NO_FINDING], 1);
        assert_eq!(data.report.dropped[IMAGE_NOT_FOUND], 1);
        assert_eq!(data.report.dropped[IN_NO_LIST], 1);
        assert_eq!(data.report.kept, 2);
        let by_name = |n: &str| {
            data.records
                .iter()
                .find(|r| r.image.file_name().unwrap() == n)
                .unwrap()
        };
        let a = by_name("00000003_000.png");
        assert_eq!(a.image, fixture("images_001/images/00000003_000.png"));
        assert_eq!(a.split, Some(Split::Test));
        assert_eq!(a.ehr.sex, Some(Sex::Female));
        let b = by_name("00000004_000.png");
        assert_eq!(b.image, fixture("images_002/images/00000004_000.png"));
        assert_eq!(b.split, Some(Split::Train));
        // Without the lists the image in neither is kept, found directly in the root.
        let all = load(
            &fixture("Data_Entry_2017_patient_sex.csv"),
            &NihOptions {
                splits: None,
                ..options
            },
        )
        .unwrap();
        let c = all
            .records
            .iter()
            .find(|r| r.image.file_name().unwrap() == "00000005_000.png")
            .unwrap();
        assert_eq!(c.image, fixture("00000005_000.png"), "directly in the root");
        assert_eq!(c.split, None);
    }

    #[test]
    fn a_tenth_of_the_train_val_patients_validate_the_same_way_everywhere() {
        // FNV-1a 64 of "1" is 0xaf63ac4c86019afc (the published offset basis and prime,
        // one byte 0x31), mixed 0x4687cd939adeafdf: scaled, 0.27551 (computed in Python).
        assert!(!in_validation("1", 0.1));
        assert!(in_validation("1", 0.3));
        assert!(!in_validation("1", 0.2755));
        assert!(in_validation("1", 0.2756));
        // Over many ids the share is the fraction, and a patient's side never depends on
        // anything but its id.
        let ids: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
        let share = ids.iter().filter(|id| in_validation(id, 0.1)).count() as f64 / 20_000.0;
        assert!((share - 0.1).abs() < 0.01, "{share}");
        assert!(!ids.iter().any(|id| in_validation(id, 0.0)));
        // Every train_val image of a patient is on the same side.
        let dir = tempfile::tempdir().unwrap();
        let mut table = String::from(
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,\
             View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n",
        );
        let mut train_val = String::new();
        for p in 0..200 {
            for f in 0..3 {
                let name = format!("{p:08}_{f:03}.png");
                table += &format!("{name},No Finding,{f},{p},40,M,PA,2048,2500,0.14,0.14\n");
                train_val += &format!("{name}\n");
            }
        }
        let csv = write(dir.path(), "Data_Entry_2017.csv", &table);
        write(dir.path(), "train_val_list.txt", &train_val);
        write(dir.path(), "test_list.txt", "");
        let options = NihOptions {
            splits: Some(NihSplits::in_folder(dir.path())),
            ..Default::default()
        };
        let data = load(&csv, &options).unwrap();
        let mut side: HashMap<String, Split> = HashMap::new();
        for r in &data.records {
            let s = r.split.unwrap();
            assert_ne!(s, Split::Test);
            let seen = *side.entry(r.patient.clone().unwrap()).or_insert(s);
            assert_eq!(seen, s, "patient {:?} on both sides", r.patient);
        }
        let validating = side.values().filter(|s| **s == Split::Validate).count();
        assert!(
            (8..=35).contains(&validating),
            "{validating} of 200 patients"
        );
    }

    // Hand-checked counts for the real excerpt (see the test below for the command).
    const EXCERPT_MALE: usize = 169; // F 131
    const EXCERPT_PA: usize = 168; // AP 132
    const EXCERPT_NO_FINDING: usize = 111;
    const EXCERPT_PATIENTS: usize = 69;
    /// Positives per finding, in NIH_LABELS order.
    const EXCERPT_PER_LABEL: [usize; 14] = [27, 40, 52, 77, 18, 12, 5, 21, 11, 24, 25, 9, 12, 8];

    /// The first 300 data rows of the real `Data_Entry_2017_v2020.csv.gz`. The expected
    /// counts were computed independently of this code with
    /// `head -301 tests/data/nih/Data_Entry_2017_v2020_first300.csv | python3 -c "import
    /// csv,sys,collections as c; r=list(csv.DictReader(sys.stdin)); print(len(r),
    /// c.Counter(x['Patient Gender'] for x in r), c.Counter(x['View Position'] for x in r),
    /// sum(x['Finding Labels']=='No Finding' for x in r), len({x['Patient ID'] for x in r}),
    /// c.Counter(f for x in r for f in x['Finding Labels'].split('|')))"`.
    #[test]
    fn the_real_excerpt_gives_the_hand_checked_counts() {
        let data = load(
            &fixture("Data_Entry_2017_v2020_first300.csv"),
            &NihOptions::default(),
        )
        .unwrap();
        assert_eq!(data.report.rows_read, 300);
        assert_eq!(data.report.kept, 300);
        let count = |f: &dyn Fn(&Record) -> bool| data.records.iter().filter(|r| f(r)).count();
        assert_eq!(count(&|r| r.ehr.sex == Some(Sex::Male)), EXCERPT_MALE);
        assert_eq!(count(&|r| r.ehr.view == Some(ViewPosition::Pa)), EXCERPT_PA);
        assert_eq!(
            count(&|r| r.labels.iter().all(|l| *l == Label::Negative)),
            EXCERPT_NO_FINDING
        );
        let patients: HashSet<_> = data.records.iter().map(|r| r.patient.clone()).collect();
        assert_eq!(patients.len(), EXCERPT_PATIENTS);
        let per_label: Vec<usize> = (0..14)
            .map(|i| count(&|r| r.labels[i] == Label::Positive))
            .collect();
        assert_eq!(per_label, EXCERPT_PER_LABEL);

        let removed = load(
            &fixture("Data_Entry_2017_v2020_first300.csv"),
            &NihOptions {
                remove_no_finding: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(removed.report.kept, 300 - EXCERPT_NO_FINDING);
        assert_eq!(
            removed.report.dropped[REMOVED_NO_FINDING],
            EXCERPT_NO_FINDING
        );
    }

    #[test]
    fn bad_rows_name_file_row_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,\
                      Patient Gender,View Position,OriginalImage[Width,Height],\
                      OriginalImagePixelSpacing[x,y],";
        let good = "a.png,No Finding,0,1,58,M,PA,2500,2048,0.168,0.168,";
        let cases = [
            (
                "b.png,Cardiomegaly|Flu,0,1,58,M,PA,2500,2048,0.168,0.168,",
                "row 3, field 'Finding Labels': expected '|'-separated findings among \
                 Atelectasis, Cardiomegaly",
            ),
            (
                "b.png,No Finding,0,1,413,M,PA,2500,2048,0.168,0.168,",
                "row 3, field 'Patient Age': expected an age in years between 0 and 120 \
                 (e.g. 58 or 058Y), found '413'",
            ),
            (
                "b.png,No Finding,0,1,58,M,LL,2500,2048,0.168,0.168,",
                "row 3, field 'View Position': expected PA or AP, found 'LL'",
            ),
            (
                "b.png,No Finding,0,1,58,U,PA,2500,2048,0.168,0.168,",
                "row 3, field 'Patient Gender': expected M or F, found 'U'",
            ),
            (
                "b.png,No Finding,0,1,58,M,PA,2500,2048,",
                "row 3: expected 11 fields (as the header), found 10",
            ),
            (
                "b.png,No Finding,0,1,58,M,PA,2500,2048,0.168,0.168,7,",
                "row 3: expected 11 fields (as the header), found 13",
            ),
        ];
        for (line, want) in cases {
            let csv = write(
                dir.path(),
                "Data_Entry_2017.csv",
                &format!("{header}\n{good}\n{line}\n"),
            );
            let err = load(&csv, &NihOptions::default()).unwrap_err().to_string();
            assert!(
                err.contains("Data_Entry_2017.csv: ") && err.contains(want),
                "{err}"
            );
            let skip = NihOptions {
                on_bad_row: OnBadRow::Skip,
                ..Default::default()
            };
            let data = load(&csv, &skip).unwrap();
            assert_eq!((data.report.rows_read, data.report.kept), (2, 1));
            assert_eq!(data.report.examples.len(), 1);
        }
        let csv = write(
            dir.path(),
            "x.csv",
            "Image Index,Finding Labels,Patient ID,Patient Age,View Position\n",
        );
        let err = load(&csv, &NihOptions::default()).unwrap_err().to_string();
        assert!(
            err.contains("missing column(s) 'Patient Gender' or 'Patient Sex'"),
            "{err}"
        );
    }

    #[test]
    fn ages_accept_the_years_suffix_only_within_bounds() {
        assert_eq!(parse_age("58"), Some(58.0));
        assert_eq!(parse_age("058Y"), Some(58.0));
        assert_eq!(parse_age("0"), Some(0.0));
        assert_eq!(parse_age("121"), None);
        assert_eq!(parse_age("-1"), None);
        assert_eq!(parse_age("058M"), None);
        assert_eq!(parse_age(""), None);
    }
}
