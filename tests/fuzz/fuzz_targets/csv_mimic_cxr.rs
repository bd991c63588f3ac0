//! MIMIC-CXR-JPG: the label table, the split table and an EHR linkage CSV. The input holds
//! the three files separated by `\0|\0`.
#![no_main]

use cxr_msn_fuzz::{check_both, parts, put};
use cxr_msn_trainer::data::mimic::{self, MimicCxrFiles};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let files = parts(data, 3);
    let labels = put("mimic/mimic-cxr-2.0.0-chexpert.csv", files[0]);
    let split = put("mimic/mimic-cxr-2.0.0-split.csv", files[1]);
    let ehr = put("mimic/ehr.csv", files[2]);
    let image_root = labels.parent().expect("a folder").to_path_buf();
    for ehr in [None, Some(ehr)] {
        let files = MimicCxrFiles {
            image_root: image_root.clone(),
            labels: labels.clone(),
            split: split.clone(),
            ehr,
        };
        check_both(|on_bad| mimic::load(&files, on_bad));
    }
});
