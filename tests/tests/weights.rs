//! PyTorch weights through the real binary: `import` the authors' Lightning checkpoint
//! (a small one written by trainer/tests/reference/make_import_fixtures.py), continue
//! pretraining from it with `pretrain --init` on synthetic data, probe the result, and
//! write its encoder back out with `export-torch`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cxr_msn_e2e::{binary, run_ok};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../trainer/tests/fixtures/import")
        .join(name)
}

#[test]
fn imported_weights_pretrain_probe_and_export() {
    let dir = std::env::temp_dir().join(format!("cxr-msn-weights-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    run_ok(
        [
            "synth", "--count", "16", "--size", "96", "--seed", "9", "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.join("data").display().to_string()]),
    );

    let imported = dir.join("imported/model.safetensors");
    let out = run_ok([
        "import".as_ref(),
        fixture("cxr_ehr_msn.ckpt").as_os_str(),
        "--ehr".as_ref(),
        "demographic".as_ref(),
        "--heads".as_ref(),
        "2".as_ref(),
        "--out".as_ref(),
        imported.as_os_str(),
    ]);
    assert!(out.contains("lightning layout"), "{out}");
    assert!(out.contains("EHR demographic"), "{out}");
    let report =
        std::fs::read_to_string(dir.join("imported/model.safetensors.import.txt")).unwrap();
    assert!(
        report.contains("state_dict.f_ehr.weight -> ehr.f_ehr.weight"),
        "{report}"
    );
    assert!(report.contains("grid 4x4 resized to 28x28"), "{report}");
    let out = run_ok(["inspect".as_ref(), imported.as_os_str()]);
    assert!(out.contains("pretraining"), "{out}");

    // A feature set the file's EHR layers do not have is refused before any training.
    let refused = Command::new(binary())
        .args(["pretrain", "--ehr", "sex", "--init"])
        .arg(&imported)
        .arg("--data")
        .arg(dir.join("data/manifest.csv"))
        .arg("--out")
        .arg(dir.join("refused"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("EHR branch for demographic"), "{err}");

    let run = dir.join("run");
    let out = run_ok(
        [
            "pretrain",
            "--batch-size",
            "4",
            "--focal-views",
            "1",
            "--epochs",
            "1",
            "--threads",
            "2",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--init".into(),
            imported.display().to_string(),
            "--data".into(),
            dir.join("data/manifest.csv").display().to_string(),
            "--out".into(),
            run.display().to_string(),
        ]),
    );
    assert!(out.contains("starting from the weights of"), "{out}");
    let checkpoint = run.join("checkpoint.safetensors");
    let out = run_ok(["inspect".as_ref(), checkpoint.as_os_str()]);
    assert!(out.contains("demographic"), "{out}");

    // The imported, further pretrained encoder and its EHR layers go downstream as ours do.
    let out = run_ok(
        [
            "probe",
            "--epochs",
            "1",
            "--bootstrap",
            "20",
            "--threads",
            "2",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--data".into(),
            dir.join("data/manifest.csv").display().to_string(),
            "--checkpoint".into(),
            checkpoint.display().to_string(),
            "--out".into(),
            run.join("probe").display().to_string(),
        ]),
    );
    assert!(out.contains("head image+ehr:"), "{out}");
    assert!(run.join("probe/classifier.safetensors").exists());

    let encoder = dir.join("encoder.safetensors");
    let out = run_ok([
        "export-torch".as_ref(),
        checkpoint.as_os_str(),
        "--names".as_ref(),
        "torchvision".as_ref(),
        "--out".as_ref(),
        encoder.as_os_str(),
    ]);
    assert!(out.contains("torchvision names"), "{out}");
    let bytes = std::fs::read(&encoder).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    for name in [
        "\"class_token\"",
        "\"conv_proj.weight\"",
        "\"encoder.pos_embedding\"",
        "\"encoder.layers.encoder_layer_1.self_attention.in_proj_weight\"",
        "\"encoder.ln.bias\"",
    ] {
        assert!(header.contains(name), "{name} missing from {header}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
