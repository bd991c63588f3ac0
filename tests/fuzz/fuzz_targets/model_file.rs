//! The model-file reader: metadata, architecture checks and weights, for every kind of
//! model file (classifier, and the pretraining model of each method), on the CPU backend.
#![no_main]

use burn::tensor::Device;
use cxr_msn::checkpoint::{load_classifier, load_pretraining, read_meta};
use cxr_msn::pretrained::load_pretrained;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let device = Device::flex();
    let meta = read_meta(data);
    let classifier = load_classifier(data, &device);
    let msn = load_pretraining(data, &device);
    let any_method = load_pretrained(data, &device);
    // The loaders read the same metadata: when it is bad, all say so.
    if meta.is_err() {
        assert!(classifier.is_err() && msn.is_err() && any_method.is_err());
    }
    // An MSN file loads through both pretraining loaders or through neither.
    assert_eq!(
        msn.is_ok(),
        any_method
            .as_ref()
            .is_ok_and(|(m, _)| m.method() == cxr_msn::Method::Msn)
    );
    for message in [classifier.err(), msn.err(), any_method.err()]
        .into_iter()
        .flatten()
    {
        assert!(!message.to_string().trim().is_empty());
    }
});
