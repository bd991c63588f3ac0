//! The model file: round trips of both kinds, and a clear error (never a panic) for
//! truncated, foreign, outdated or mismatched files.

mod common;

use std::collections::BTreeMap;

use burn::tensor::{Device, Distribution, Tensor};
use common::{assert_close, values};
use cxr_msn::checkpoint::{
    FORMAT_VERSION, ModelKind, ModelMeta, WeightPrecision, load_classifier, load_pretraining,
    read_meta, write_model, write_model_as,
};
use cxr_msn::classifier::Classifier;
use cxr_msn::config::{EhrConfig, MsnConfig, VitConfig, VitPreset};
use cxr_msn::ehr::FeatureSet;
use cxr_msn::error::CheckpointError;
use cxr_msn::labels::MIMIC_LABELS as LABELS;
use safetensors::SafeTensors;

fn mini_config() -> MsnConfig {
    let mut c = MsnConfig::msn(VitPreset::Tiny).with_ehr(FeatureSet::from_name("all").unwrap());
    c.vit = VitConfig {
        dim: 48,
        depth: 2,
        heads: 6,
        channels: 1,
        ..c.vit
    };
    c.head.d_in = 48;
    c.head.hidden = 64;
    c.head.d_out = 32;
    c.num_prototypes = 16;
    c
}

fn classifier_file(device: &Device) -> (Classifier, ModelMeta, Vec<u8>) {
    let config = mini_config();
    let ehr = config.ehr.clone().unwrap();
    let clf = Classifier::init(&config.vit, 14, Some(&ehr), device);
    let mut meta = ModelMeta::classifier(config, LABELS.map(String::from).to_vec());
    meta.operating_points = (0..14).map(|i| 0.3 + i as f32 * 0.01).collect();
    meta.training = BTreeMap::from([("seed".to_string(), "24".to_string())]);
    let bytes = write_model(&clf, &meta).unwrap();
    (clf, meta, bytes)
}

/// Every tensor of two model files, by name: same names, shapes and bytes.
fn same_tensors(a: &[u8], b: &[u8]) {
    let (a, b) = (
        SafeTensors::deserialize(a).unwrap(),
        SafeTensors::deserialize(b).unwrap(),
    );
    let mut names_a = a.names();
    let mut names_b = b.names();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b);
    for name in names_a {
        let (ta, tb) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!(ta.shape(), tb.shape(), "{name}");
        assert_eq!(ta.data(), tb.data(), "{name}");
    }
}

#[test]
fn the_same_model_and_metadata_always_give_the_same_bytes() {
    let device = Device::flex();
    device.seed(3);
    let (clf, meta, first) = classifier_file(&device);
    // The store's metadata map orders its keys differently from one map to the next; the
    // written header does not.
    for _ in 0..6 {
        assert!(
            write_model(&clf, &meta).unwrap() == first,
            "another header order"
        );
    }
    let (n, rest) = first.split_at(8);
    let n = u64::from_le_bytes(n.try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "the data start 8-byte aligned");
    let header: serde_json::Value = serde_json::from_slice(&rest[..n]).unwrap();
    let keys: Vec<&String> = header["__metadata__"].as_object().unwrap().keys().collect();
    assert!(keys.windows(2).all(|k| k[0] < k[1]), "{keys:?}");
    assert_eq!(read_meta(&first).unwrap(), meta);
}

#[test]
fn a_classifier_round_trips_with_its_metadata_and_scores_the_same() {
    let device = Device::flex();
    device.seed(1);
    let (clf, meta, bytes) = classifier_file(&device);
    assert_eq!(read_meta(&bytes).unwrap(), meta);
    let (loaded, loaded_meta) = load_classifier(&bytes, &device).unwrap();
    assert_eq!(loaded_meta, meta);
    assert_eq!(loaded_meta.format_version, FORMAT_VERSION);
    assert_eq!(loaded_meta.labels[8], "No Finding");
    same_tensors(&bytes, &write_model(&loaded, &loaded_meta).unwrap());

    let x = Tensor::random([2, 1, 224, 224], Distribution::Normal(0.0, 1.0), &device);
    let e = Tensor::random([2, 13], Distribution::Uniform(0.0, 1.0), &device);
    let a = clf.forward(x.clone(), Some(e.clone()), false).unwrap();
    let b = loaded.forward(x, Some(e), false).unwrap();
    assert_close(
        "image scores",
        &values(b.image_probs),
        &values(a.image_probs),
        0.0,
    );
    assert_close(
        "image + EHR scores",
        &values(b.fused_probs.unwrap()),
        &values(a.fused_probs.unwrap()),
        0.0,
    );
    // Tensor names are the module paths, so other tools can read the file.
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.names().contains(&"encoder.blocks.1.attn.qkv.weight"));
    assert!(st.names().contains(&"fused_head.fusion.f_ehr.weight"));
}

#[test]
fn an_f16_file_is_about_half_the_size_and_scores_within_half_precision() {
    let device = Device::flex();
    device.seed(2);
    let (clf, meta, bytes) = classifier_file(&device);
    let half = write_model_as(&clf, &meta, WeightPrecision::F16).unwrap();
    let ratio = half.len() as f64 / bytes.len() as f64;
    assert!((0.45..0.6).contains(&ratio), "f16 / f32 size {ratio}");
    let st = SafeTensors::deserialize(&half).unwrap();
    let dtype = |name: &str| st.tensor(name).unwrap().dtype();
    assert_eq!(
        dtype("encoder.blocks.1.attn.qkv.weight"),
        safetensors::Dtype::F16
    );
    assert_eq!(dtype("encoder.cls_token"), safetensors::Dtype::F32);
    let (loaded, loaded_meta) = load_classifier(&half, &device).unwrap();
    assert_eq!(loaded_meta, meta);
    let x = Tensor::random([2, 1, 224, 224], Distribution::Normal(0.0, 1.0), &device);
    let e = Tensor::random([2, 13], Distribution::Uniform(0.0, 1.0), &device);
    let a = clf.forward(x.clone(), Some(e.clone()), false).unwrap();
    let b = loaded.forward(x, Some(e), false).unwrap();
    let (a, b) = (values(a.image_probs), values(b.image_probs));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(
        worst > 0.0,
        "the weights were rounded, so scores move a little"
    );
    assert!(worst < 5e-3, "probabilities move by {worst}");
}

#[test]
fn a_pretraining_model_round_trips_including_prototypes_and_bn_statistics() {
    let device = Device::flex();
    device.seed(2);
    let config = mini_config();
    let mut model = config.init(&device).unwrap();
    model.anchor_vit = config.vit.init(&device); // anchor and target differ
    let meta = ModelMeta::pretraining(config.clone());
    let bytes = write_model(&model, &meta).unwrap();
    let (loaded, loaded_meta) = load_pretraining(&bytes, &device).unwrap();
    assert_eq!(loaded_meta.kind, ModelKind::Pretraining);
    same_tensors(&bytes, &write_model(&loaded, &loaded_meta).unwrap());
    assert_close(
        "prototypes",
        &values(loaded.prototypes.val()),
        &values(model.prototypes.val()),
        0.0,
    );
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for name in [
        "prototypes",
        "target_head.bn1.running_var",
        "ehr.g.weight",
        "anchor_vit.pos_embed",
    ] {
        assert!(st.names().contains(&name), "{name} is saved");
    }
}

fn err(result: Result<impl std::fmt::Debug, CheckpointError>) -> String {
    result.expect_err("a bad file must be rejected").to_string()
}

#[test]
fn truncated_and_foreign_files_give_clear_errors_without_panicking() {
    let device = Device::flex();
    let (_, _, bytes) = classifier_file(&device);
    // Every prefix length around the header and a spread through the tensor data.
    let mut cuts: Vec<usize> = (0..200).collect();
    cuts.extend((1..100).map(|i| bytes.len() * i / 100));
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        let msg = err(load_classifier(&bytes[..cut], &device));
        assert!(
            msg.contains("not a readable cxr-msn model file"),
            "cut {cut}: {msg}"
        );
    }
    assert!(err(read_meta(b"")).contains("not a readable"));
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x00\0\0\0";
    assert!(err(read_meta(png)).contains("not a readable"));
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    assert!(err(read_meta(&garbage)).contains("not a readable"));

    // A valid safetensors file from elsewhere (no cxr-msn metadata).
    let data = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    let foreign = safetensors::serialize([("w", view)], None).unwrap();
    assert!(err(read_meta(&foreign)).contains("not a cxr-msn model file"));
}

/// `bytes` with `value` written over element `index` of tensor `name` (whose elements are
/// `value.len()` bytes each).
fn with_element(bytes: &[u8], name: &str, index: usize, value: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + n + start + index * value.len();
    let mut out = bytes.to_vec();
    out[at..at + value.len()].copy_from_slice(value);
    out
}

#[test]
fn weights_that_are_nan_or_infinite_are_refused_by_name() {
    let device = Device::flex();
    let (clf, meta, bytes) = classifier_file(&device);
    let qkv = "encoder.blocks.1.attn.qkv.weight";
    // One NaN (a quiet NaN's bits) in an f32 file.
    let nan = with_element(&bytes, qkv, 5, &0x7FC0_0000u32.to_le_bytes());
    let msg = err(load_classifier(&nan, &device));
    assert!(
        msg.contains(&format!("tensor '{qkv}' holds 1 NaN or infinite")),
        "{msg}"
    );
    assert!(err(read_meta(&nan)).contains(qkv));
    // Two infinities, one of each sign, in an f16 file.
    let half = write_model_as(&clf, &meta, WeightPrecision::F16).unwrap();
    let inf = with_element(&half, qkv, 0, &0x7C00u16.to_le_bytes());
    let inf = with_element(&inf, qkv, 3, &0xFC00u16.to_le_bytes());
    let msg = err(load_classifier(&inf, &device));
    assert!(
        msg.contains(&format!("tensor '{qkv}' holds 2 NaN or infinite")),
        "{msg}"
    );
    // The largest finite values are not refused.
    let big = with_element(&bytes, qkv, 5, &f32::MAX.to_le_bytes());
    assert!(load_classifier(&big, &device).is_ok());
    let big = with_element(&half, qkv, 0, &0x7BFFu16.to_le_bytes());
    assert!(load_classifier(&big, &device).is_ok());
}

/// Rewrites one metadata entry of a model file.
fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"][key] = serde_json::Value::String(value.into());
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    out
}

#[test]
fn outdated_malformed_wrong_kind_and_mismatched_files_are_named_as_such() {
    let device = Device::flex();
    let (clf, meta, bytes) = classifier_file(&device);

    let newer = with_metadata(&bytes, "cxr_msn.format_version", "99");
    let msg = err(read_meta(&newer));
    assert!(
        msg.contains("version 99") && msg.contains("reads version 1"),
        "{msg}"
    );

    let broken = with_metadata(&bytes, "cxr_msn.meta", "{\"kind\": ");
    assert!(err(read_meta(&broken)).contains("metadata is malformed"));

    let mut bad_meta = meta.clone();
    bad_meta.operating_points.pop();
    let json = serde_json::to_string(&bad_meta).unwrap();
    let msg = err(read_meta(&with_metadata(&bytes, "cxr_msn.meta", &json)));
    assert!(msg.contains("13 operating points for 14 labels"), "{msg}");

    let msg = err(load_pretraining(&bytes, &device));
    assert!(
        msg.contains("'classifier'") && msg.contains("'pretraining'"),
        "{msg}"
    );

    // Metadata that promises another architecture than the weights hold.
    let mut wider = meta.clone();
    wider.config.vit.dim = 96;
    wider.config.head.d_in = 96;
    let json = serde_json::to_string(&wider).unwrap();
    let msg = err(load_classifier(
        &with_metadata(&bytes, "cxr_msn.meta", &json),
        &device,
    ));
    assert!(msg.contains("do not match the architecture"), "{msg}");
    assert!(
        msg.contains(
            "'encoder.patch_embed.proj.weight' has shape [48, 1, 16, 16] in the file, \
             the architecture expects [96, 1, 16, 16]"
        ),
        "names the tensor and both shapes: {msg}"
    );
    assert!(msg.contains("more"), "{msg}");

    // A classifier without its image + EHR head: tensors left over are an error too.
    let mut no_ehr = meta.clone();
    no_ehr.config.ehr = None;
    let json = serde_json::to_string(&no_ehr).unwrap();
    let msg = err(load_classifier(
        &with_metadata(&bytes, "cxr_msn.meta", &json),
        &device,
    ));
    assert!(
        msg.contains("'fused_head.") && msg.contains("has no place in the architecture"),
        "{msg}"
    );

    // Writing refuses inconsistent metadata up front.
    let mut unlabeled = meta;
    unlabeled.labels.clear();
    unlabeled.operating_points.clear();
    assert!(err(write_model(&clf, &unlabeled)).contains("at least one label"));
}

#[test]
fn feature_set_and_profile_travel_in_the_metadata() {
    let mut config = MsnConfig::paper(VitPreset::Small);
    config.ehr = Some(EhrConfig::new(
        FeatureSet::from_name("demographic-age10+scan").unwrap(),
    ));
    let meta = ModelMeta::pretraining(config);
    let json = serde_json::to_string(&meta).unwrap();
    assert!(json.contains("\"demographic-age10+scan\""));
    assert!(json.contains("\"paper\""));
    let back: ModelMeta = serde_json::from_str(&json).unwrap();
    assert_eq!(back, meta);
}

#[test]
fn every_methods_model_file_round_trips_and_hands_over_the_right_encoder() {
    use cxr_msn::config::{DinoConfig, MaeConfig, Method};
    use cxr_msn::pretrained::{Pretrained, load_pretrained};
    let device = Device::flex();
    let x: Tensor<4> = Tensor::random([2, 1, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    for method in Method::ALL {
        let mut config = mini_config().with_method(method);
        if let Some(d) = config.dino.as_mut() {
            *d = DinoConfig {
                hidden: 32,
                bottleneck: 16,
                out_dim: 24,
                ..DinoConfig::default()
            };
        }
        if let Some(m) = config.mae.as_mut() {
            *m = MaeConfig {
                decoder_dim: 16,
                decoder_depth: 1,
                decoder_heads: 2,
                ..MaeConfig::default()
            };
        }
        device.seed(5);
        let model = Pretrained::init(&config, &device).unwrap();
        assert_eq!(model.method(), method);
        let meta = ModelMeta::pretraining(config.clone());
        let bytes = model.to_model_file(&meta).unwrap();
        let names = SafeTensors::deserialize(&bytes).unwrap().names().join(" ");
        let prefix = match method {
            Method::Msn => "target_vit.",
            Method::Dino => "teacher_vit.",
            Method::Mae => "encoder.",
            Method::Random => "patch_embed.",
        };
        assert!(names.contains(prefix), "{method:?}: {names}");
        assert!(
            !names.contains("Msn.") && !names.contains("Dino."),
            "{names}"
        );
        let (back, back_meta) = load_pretrained(&bytes, &device).unwrap();
        assert_eq!(back_meta.config.method, method);
        assert_eq!(back_meta.config, config);
        let a = values(model.encoder().forward(x.clone(), None));
        let b = values(back.encoder().forward(x.clone(), None));
        assert_close(&format!("{method:?} encoder"), &b, &a, 1e-6);
        // A classifier file refuses to load as a pretraining model.
        if method == Method::Random {
            let (_, _, clf) = classifier_file(&device);
            assert!(load_pretrained(&clf, &device).is_err());
        }
    }
}
