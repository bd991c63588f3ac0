//! The model-file reader: metadata, architecture checks and weights, for both kinds of
//! model file, on the CPU backend.
#![no_main]

use burn::tensor::Device;
use cxr_msn::checkpoint::{load_classifier, load_pretraining, read_meta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let device = Device::flex();
    let meta = read_meta(data);
    let classifier = load_classifier(data, &device);
    let pretraining = load_pretraining(data, &device);
    // The loaders read the same metadata: when it is bad, both say so.
    if meta.is_err() {
        assert!(classifier.is_err() && pretraining.is_err());
    }
    for message in [classifier.err(), pretraining.err()].into_iter().flatten() {
        assert!(!message.to_string().trim().is_empty());
    }
});
