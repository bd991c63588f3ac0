//! The `cxr-msn` binary on model files written by the model crate.

use std::path::{Path, PathBuf};
use std::process::Command;

use cxr_msn_e2e::binary;

use burn::tensor::Device;
use cxr_msn::checkpoint::{ModelMeta, write_model};
use cxr_msn::classifier::Classifier;
use cxr_msn::config::{MsnConfig, VitPreset};
use cxr_msn::ehr::FeatureSet;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cxr-msn-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn model_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let device = Device::flex();
    let mut config = MsnConfig::paper(VitPreset::Tiny)
        .with_ehr(FeatureSet::from_name("demographic").unwrap())
        .with_channels(1);
    config.vit.depth = 1;
    let clf = Classifier::init(&config.vit, 2, config.ehr.as_ref(), &device);
    let meta = ModelMeta::classifier(config, vec!["Edema".into(), "Pneumothorax".into()]);
    let bytes = write_model(&clf, &meta).unwrap();
    let path = dir.join("model.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[test]
fn inspect_describes_a_model_file_written_by_the_model_crate() {
    let dir = scratch("inspect");
    let (path, bytes) = model_file(&dir);
    let out = Command::new(binary())
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "classifier",
        "paper",
        "demographic (3 values",
        "Pneumothorax",
        "1 channel",
    ] {
        assert!(
            stdout.contains(expected),
            "'{expected}' missing from:\n{stdout}"
        );
    }
    // The web crate accepts the same bytes and shows the same summary.
    let summary = cxr_msn_web::describe_model(&bytes).unwrap();
    assert!(stdout.contains(&summary));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn inspect_names_the_file_and_the_problem_for_a_truncated_model() {
    let dir = scratch("truncated");
    let (path, bytes) = model_file(&dir);
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = Command::new(binary())
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let missing = dir.join("nope.safetensors");
    let out = Command::new(binary())
        .arg("inspect")
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot read") && stderr.contains("nope.safetensors"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}
