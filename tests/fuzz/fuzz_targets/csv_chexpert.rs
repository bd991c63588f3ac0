//! A CheXpert table (`train.csv` / `valid.csv`), and its labels put in MIMIC order.
#![no_main]

use cxr_msn_fuzz::{check_both, check_dataset, put};
use cxr_msn_trainer::data::chexpert::{self, ChexpertOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = put("CheXpert-v1.0-small/train.csv", data);
    check_both(|on_bad_row| {
        let options = ChexpertOptions {
            on_bad_row,
            ..ChexpertOptions::default()
        };
        chexpert::load(&path, &options)
    });
    if let Ok(mut dataset) = chexpert::load(&path, &ChexpertOptions::default()) {
        if chexpert::to_mimic_order(&mut dataset).is_ok() {
            check_dataset(&dataset);
        }
    }
});
