//! The real `cxr-msn` binary's `ehr` subcommand on the fixture tree in `tests/data/`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn cxr_msn<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxr-msn"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn ehr_writes_the_expected_table_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ehr.csv");
    let output = cxr_msn(&[
        OsStr::new("ehr"),
        OsStr::new("--mimic-cxr"),
        fixture("mimic-cxr/mimic-cxr-2.0.0-metadata.csv.gz").as_os_str(),
        OsStr::new("--mimic-iv"),
        fixture("mimic-iv-1.0").as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("MIMIC-IV (v1: core/, icu/)"), "{stdout}");
    assert!(
        stdout.contains("read 14 rows, kept 10, dropped 4"),
        "{stdout}"
    );
    assert!(stdout.contains("wrote 10 images to"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        std::fs::read_to_string(fixture("expected/ehr.csv")).unwrap()
    );
}

#[test]
fn a_bad_row_fails_with_file_row_and_field_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = dir.path().join("metadata.csv");
    std::fs::write(
        &metadata,
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,\
         StudyDate,PatientOrientationCodeSequence_CodeMeaning\n\
         d1,10000032,50414267,CHEST (PA AND LAT),PA,21800506,Erect\n\
         d2,10000032,50414267,CHEST (PA AND LAT),PA,2180-05-xx,Erect\n",
    )
    .unwrap();
    let out = dir.path().join("ehr.csv");
    let mimic_iv = fixture("mimic-iv-2.2");
    let run = |skip: bool| {
        let mut args = vec![
            OsStr::new("ehr"),
            OsStr::new("--mimic-cxr"),
            metadata.as_os_str(),
            OsStr::new("--mimic-iv"),
            mimic_iv.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
        ];
        if skip {
            args.push(OsStr::new("--skip-bad-rows"));
        }
        cxr_msn(&args)
    };

    let failed = run(false);
    let stderr = text(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        stderr.contains(&format!(
            "{}: row 3, field 'StudyDate': expected a date YYYYMMDD, found '2180-05-xx'",
            metadata.display()
        )),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written on failure");

    let skipped = run(true);
    let stdout = text(&skipped.stdout);
    assert!(skipped.status.success(), "{}", text(&skipped.stderr));
    assert!(
        stdout.contains("read 2 rows, kept 1, dropped 1"),
        "{stdout}"
    );
    assert!(stdout.contains("bad value in 'StudyDate'"), "{stdout}");
    assert!(stdout.contains("row 3, field 'StudyDate'"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
}

#[test]
fn ehr_help_explains_the_rules_and_gives_an_example() {
    let output = cxr_msn(&["ehr", "--help"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success());
    for needle in [
        "--mimic-cxr <DIR_OR_CSV>",
        "--mimic-iv <DIR>",
        "--out <CSV>",
        "--skip-bad-rows",
        "PerformedProcedureStepDescription",
        "Example: cxr-msn ehr --mimic-cxr",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
}
