//! The `cxr-msn` binary on model files written by the model crate.

use std::path::{Path, PathBuf};
use std::process::Command;

use cxr_msn_e2e::{Succeeds, binary};

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
    let stdout = Command::new(binary()).arg("inspect").arg(&path).succeeds();
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

#[test]
fn demo_and_compare_run_the_whole_pipeline_on_a_fresh_synthetic_world() {
    let dir = std::env::temp_dir().join(format!("cxr-msn-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let small = [
        "--count",
        "60",
        "--depth",
        "1",
        "--batch-size",
        "8",
        "--focal-views",
        "1",
        "--probe-epochs",
        "2",
        "--bootstrap",
        "20",
        "--threads",
        "2",
        "--device",
        "cpu",
    ];
    let world = dir.join("world");
    let run = dir.join("demo");
    let text = cxr_msn_e2e::run_ok(
        [
            "demo",
            "--synth",
            world.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ]
        .into_iter()
        .chain(small),
    );
    assert!(text.contains("generating 60 images"), "{text}");
    for file in [
        "config.json",
        "metrics.jsonl",
        "epochs.csv",
        "loss.svg",
        "checkpoint.safetensors",
        "probe/metrics.json",
        "probe/roc.svg",
        "eval/metrics.csv",
        "eval/roc.svg",
        "embed/embedding_map.svg",
        "embed/embedding_map.json",
        "model.safetensors",
        "model.onnx",
    ] {
        assert!(run.join(file).exists(), "{file} missing; output:\n{text}");
    }
    assert!(
        text.contains("Done in") && text.contains("model.safetensors"),
        "{text}"
    );
    let model = std::fs::read(run.join("model.safetensors")).unwrap();
    let meta = cxr_msn::checkpoint::read_meta(&model).unwrap();
    assert_eq!(
        meta.operating_points.len(),
        14,
        "operating points were chosen"
    );
    assert!(
        meta.prototype_head,
        "the demo's export carries learn mode's prototypes"
    );

    // The comparison reuses the world and reports both runs and their difference.
    let out = dir.join("compare");
    let text = cxr_msn_e2e::run_ok(
        [
            "compare",
            "--synth",
            world.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .into_iter()
        .chain(small),
    );
    assert!(
        text.contains("using") && !text.contains("generating"),
        "{text}"
    );
    assert!(
        text.contains("vanilla MSN, image head")
            && text.contains("MSN + EHR (demographic), image + EHR head")
            && text.contains("minus vanilla"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("comparison.json")).unwrap())
            .unwrap();
    assert!(json["image_head_difference"].is_array() || json["image_head_difference"].is_null());
    std::fs::remove_dir_all(&dir).ok();
}

/// `bench loader --json` is what `scripts/bench` reads: one row per setting, each with its
/// timings in order and the peak memory of that setting alone.
#[test]
fn bench_loader_reports_every_settings_time_and_own_peak_memory() {
    let dir = scratch("bench-loader");
    let world = dir.join("world");
    cxr_msn_e2e::run_ok(["synth", "--out", world.to_str().unwrap(), "--count", "16"]);
    let manifest = world.join("manifest.csv");
    let text = cxr_msn_e2e::run_ok([
        "bench",
        "loader",
        "--data",
        manifest.to_str().unwrap(),
        "--count",
        "16",
        "--batch-size",
        "8",
        "--focal-views",
        "2",
        "--repeats",
        "1",
        "--json",
    ]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let settings: Vec<&str> = rows.iter().map(|r| r["what"].as_str().unwrap()).collect();
    assert_eq!(
        settings,
        [
            "loader, 1 thread, decode every time",
            "loader, all cores, decode every time",
            "loader, all cores, cache cold (writing)",
            "loader, all cores, cache warm",
        ]
    );
    for row in &rows {
        assert_eq!(row["images"], 16, "{row}");
        let [lo, median, hi] = ["min_s", "median_s", "max_s"].map(|k| row[k].as_f64().unwrap());
        assert!(0.0 < lo && lo <= median && median <= hi, "{row}");
        // Linux reports the peak and resets it between settings (elsewhere there is no
        // peak to read); each is then at least the program's own few MiB and far below
        // the whole machine.
        if cfg!(target_os = "linux") {
            assert_eq!(row["peak_rss_per_setting"], true, "{row}");
            let peak = row["peak_rss_mib"].as_f64().unwrap();
            assert!((1.0..4096.0).contains(&peak), "{row}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
