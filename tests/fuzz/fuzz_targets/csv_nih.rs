//! NIH ChestX-ray14: `Data_Entry_2017.csv` with the two official split lists. The input
//! holds the three files separated by `\0|\0`.
#![no_main]

use cxr_msn_fuzz::{check_both, parts, put};
use cxr_msn_trainer::data::nih::{self, NihOptions, NihSplits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let files = parts(data, 3);
    let table = put("nih/Data_Entry_2017.csv", files[0]);
    put("nih/train_val_list.txt", files[1]);
    put("nih/test_list.txt", files[2]);
    let folder = table.parent().expect("a folder").to_path_buf();
    for remove_no_finding in [false, true] {
        check_both(|on_bad_row| {
            let options = NihOptions {
                image_root: None,
                splits: Some(NihSplits::in_folder(&folder)),
                validation_fraction: nih::VALIDATION_FRACTION,
                remove_no_finding,
                on_bad_row,
            };
            nih::load(&table, &options)
        });
    }
});
