//! The MIMIC-CXR to MIMIC-IV linkage: `mimic-cxr-2.0.0-metadata.csv` with MIMIC-IV's
//! `patients`, `admissions` and `icustays`. The input holds the four files separated by
//! `\0|\0`. What is linked is written as a linkage CSV and read back: the same EHR facts
//! must come out.
#![no_main]

use cxr_msn_fuzz::{check_message, parts, put, scratch};
use cxr_msn_trainer::data::OnBadRow;
use cxr_msn_trainer::data::mimic_ehr::{link, read_csv, write_csv};
use cxr_msn_trainer::data::mimic_iv::{Layout, MimicIvPaths};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let files = parts(data, 4);
    let metadata = put("link/mimic-cxr-2.0.0-metadata.csv", files[0]);
    let paths = MimicIvPaths {
        layout: Layout::V2,
        patients: put("link/hosp/patients.csv", files[1]),
        admissions: put("link/hosp/admissions.csv", files[2]),
        icustays: put("link/icu/icustays.csv", files[3]),
    };
    for on_bad in [OnBadRow::Fail, OnBadRow::Skip] {
        let linkage = match link(&metadata, &paths, on_bad) {
            Ok(linkage) => linkage,
            Err(e) => {
                check_message(&e);
                continue;
            }
        };
        let r = &linkage.report;
        assert_eq!(r.kept, linkage.images.len());
        assert_eq!(r.rows_read, r.kept + r.dropped_total());
        let out = scratch().join("link/ehr.csv");
        write_csv(&linkage.images, &out).expect("the linkage CSV is written");
        let (read, pass) =
            read_csv(&out, OnBadRow::Fail).expect("a written linkage CSV reads back");
        assert_eq!(pass.rows, linkage.images.len());
        for image in &linkage.images {
            let back = read
                .get(&image.dicom_id)
                .expect("every linked image reads back");
            assert_eq!(
                back,
                &image.ehr(),
                "the EHR facts of {} survive the CSV",
                image.dicom_id
            );
        }
    }
});
