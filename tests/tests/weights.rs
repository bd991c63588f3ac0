//! PyTorch weights through the real binary: `import` the authors' Lightning checkpoint
//! (a small one written by trainer/tests/reference/make_import_fixtures.py), continue
//! pretraining from it with `pretrain --init` on synthetic data, probe the result, and
//! write its encoder back out with `export-torch`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cxr_msn_e2e::{binary, run_ok, synth};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../trainer/tests/fixtures/import")
        .join(name)
}

/// A temporary path as a command-line argument (the temporary folder's path is UTF-8).
fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

#[test]
fn imported_weights_pretrain_probe_and_export() {
    let dir = std::env::temp_dir().join(format!("cxr-msn-weights-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    synth(&dir.join("data"), 16, 96, 9);
    let data = dir.join("data/manifest.csv");
    let checkpoint_file = fixture("cxr_ehr_msn.ckpt");

    let imported = dir.join("imported/model.safetensors");
    let out = run_ok([
        "import",
        arg(&checkpoint_file),
        "--ehr",
        "demographic",
        "--heads",
        "2",
        "--out",
        arg(&imported),
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
    let out = run_ok(["inspect", arg(&imported)]);
    assert!(out.contains("pretraining"), "{out}");

    // A feature set the file's EHR layers do not have is refused before any training.
    let refused = Command::new(binary())
        .args(["pretrain", "--ehr", "sex", "--init", arg(&imported)])
        .args(["--data", arg(&data), "--out", arg(&dir.join("refused"))])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("EHR branch for demographic"), "{err}");

    let run = dir.join("run");
    let out = run_ok([
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
        "--init",
        arg(&imported),
        "--data",
        arg(&data),
        "--out",
        arg(&run),
    ]);
    assert!(out.contains("starting from the weights of"), "{out}");
    let checkpoint = run.join("checkpoint.safetensors");
    let out = run_ok(["inspect", arg(&checkpoint)]);
    assert!(out.contains("demographic"), "{out}");

    // The imported, further pretrained encoder and its EHR layers go downstream as ours do.
    let out = run_ok([
        "probe",
        "--epochs",
        "1",
        "--bootstrap",
        "20",
        "--threads",
        "2",
        "--device",
        "cpu",
        "--data",
        arg(&data),
        "--checkpoint",
        arg(&checkpoint),
        "--out",
        arg(&run.join("probe")),
    ]);
    assert!(out.contains("head image+ehr:"), "{out}");
    assert!(run.join("probe/classifier.safetensors").exists());

    let encoder = dir.join("encoder.safetensors");
    let out = run_ok([
        "export-torch",
        arg(&checkpoint),
        "--names",
        "torchvision",
        "--out",
        arg(&encoder),
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
    // The number of heads, which no tensor's shape tells, travels in the file's metadata:
    // importing the export gives back the checkpoint's encoder as it was.
    let heads = |text: &str| {
        let at = text.find("heads=").expect("an encoder line with heads=") + "heads=".len();
        text[at..].split(' ').next().unwrap().to_string()
    };
    let original = heads(&run_ok(["inspect", arg(&checkpoint)]));
    assert!(
        header.contains(&format!("\"cxr_msn.heads\":\"{original}\"")),
        "{header}"
    );
    let back = dir.join("back.safetensors");
    let out = run_ok(["import", arg(&encoder), "--out", arg(&back)]);
    assert!(
        out.contains(&format!(
            "attention heads: {original} (recorded in the file"
        )),
        "{out}"
    );
    assert_eq!(heads(&run_ok(["inspect", arg(&back)])), original);
    // A cxr-msn model file is not imported again: it is used as it is.
    let again = Command::new(binary())
        .args([
            "import",
            arg(&checkpoint),
            "--out",
            arg(&dir.join("again.safetensors")),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("is already a cxr-msn model file"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
