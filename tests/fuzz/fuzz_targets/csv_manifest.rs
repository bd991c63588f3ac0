//! The plain manifest (`path,<label>...,split,patient_id,<EHR columns>`).
#![no_main]

use cxr_msn_fuzz::{check_both, put};
use cxr_msn_trainer::data::manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = put("manifest.csv", data);
    check_both(|on_bad| manifest::load(&path, on_bad));
});
