//! `cxr-msn ehr`: links MIMIC-CXR images to MIMIC-IV and writes the EHR table that
//! pretraining reads (rules in [`crate::data::mimic_ehr`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::data::OnBadRow;
use crate::data::mimic_ehr::{find_metadata, link, write_csv};
use crate::data::mimic_iv::{Layout, MimicIvPaths};

/// The arguments of `cxr-msn ehr`.
#[derive(Args, Debug, Clone)]
pub struct EhrArgs {
    /// The MIMIC-CXR-JPG folder holding mimic-cxr-2.0.0-metadata.csv(.gz), or that file.
    #[arg(long, value_name = "DIR_OR_CSV")]
    pub mimic_cxr: PathBuf,
    /// The MIMIC-IV release folder: hosp/ and icu/ (v2 and later) or core/ and icu/ (v1);
    /// tables as .csv or .csv.gz.
    #[arg(long, value_name = "DIR")]
    pub mimic_iv: PathBuf,
    /// The CSV to write (replaced atomically): dicom_id, subject_id, study_id, sex, age,
    /// view, orientation, mortality, icu, view_imputed, orientation_imputed.
    #[arg(long, value_name = "CSV")]
    pub out: PathBuf,
    /// Skip and count rows that cannot be read (unparsable dates or ids, impossible ages,
    /// unknown genders or orientations) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
}

/// Runs the linkage and writes the CSV; returns the summary to print.
pub fn run(args: &EhrArgs) -> Result<String> {
    let metadata = find_metadata(&args.mimic_cxr)?;
    let mimic_iv = MimicIvPaths::find(&args.mimic_iv)?;
    let on_bad = if args.skip_bad_rows {
        OnBadRow::Skip
    } else {
        OnBadRow::Fail
    };
    let linkage = link(&metadata, &mimic_iv, on_bad).context("EHR linkage failed")?;
    write_csv(&linkage.images, &args.out)?;
    let layout = match mimic_iv.layout {
        Layout::V1 => "v1: core/, icu/",
        Layout::V2 => "v2+: hosp/, icu/",
    };
    Ok(format!(
        "MIMIC-CXR metadata: {}\nMIMIC-IV ({layout}): {}, {}, {}\n{}wrote {} images to {}\n",
        metadata.display(),
        mimic_iv.patients.display(),
        mimic_iv.admissions.display(),
        mimic_iv.icustays.display(),
        linkage.report,
        linkage.images.len(),
        args.out.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::mimic_ehr::tests::fixture;

    #[test]
    fn the_ehr_command_writes_the_expected_csv_for_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let expected = std::fs::read_to_string(fixture("expected/ehr.csv")).unwrap();
        for layout in ["mimic-iv-1.0", "mimic-iv-2.2"] {
            let out = dir.path().join(format!("{layout}.csv"));
            let args = EhrArgs {
                mimic_cxr: fixture("mimic-cxr"),
                mimic_iv: fixture(layout),
                out: out.clone(),
                skip_bad_rows: false,
            };
            let summary = run(&args).unwrap();
            assert_eq!(std::fs::read_to_string(&out).unwrap(), expected, "{layout}");
            for line in [
                "read 14 rows, kept 10, dropped 4",
                "rare view 'AP AXIAL'",
                "rare view 'SWIMMERS'",
                "no sex in MIMIC-IV patients",
                "subject not in MIMIC-IV patients",
                "imputed        2  orientation",
                "imputed        2  view",
                "wrote 10 images to",
            ] {
                assert!(summary.contains(line), "{line:?} missing from:\n{summary}");
            }
        }
    }

    #[test]
    fn a_failed_linkage_leaves_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ehr.csv");
        let args = EhrArgs {
            mimic_cxr: fixture("mimic-cxr"),
            mimic_iv: fixture("nih"),
            out: out.clone(),
            skip_bad_rows: false,
        };
        let err = format!("{:#}", run(&args).unwrap_err());
        assert!(err.contains("MIMIC-IV patients table not found"), "{err}");
        assert!(!out.exists());
    }
}
