//! The GPU path on whatever wgpu adapter the machine has. CI installs Mesa's software
//! Vulkan (lavapipe) and sets `CXR_MSN_REQUIRE_GPU_TEST=1`, so there the test must run;
//! elsewhere it is skipped with a note when no Vulkan driver is installed.

use std::process::Command;

use cxr_msn_e2e::{binary, synth};

fn vulkan_available() -> bool {
    std::path::Path::new("/usr/share/vulkan/icd.d")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
}

/// False, with a note, when the machine has no Vulkan driver (an error where CI requires it).
fn gpu_test_runs() -> bool {
    if vulkan_available() {
        return true;
    }
    assert!(
        std::env::var_os("CXR_MSN_REQUIRE_GPU_TEST").is_none(),
        "no Vulkan driver, but CXR_MSN_REQUIRE_GPU_TEST is set"
    );
    eprintln!("skipped: no Vulkan driver (install mesa-vulkan-drivers to run it)");
    false
}

#[test]
fn pretraining_runs_on_the_wgpu_adapter() {
    if !gpu_test_runs() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("cxr-msn-gpu-{}", std::process::id()));
    synth(&dir.join("data"), 10, 64, 2);
    let out = Command::new(binary())
        .args([
            "pretrain", "--device", "gpu", "--ehr", "sex", "--depth", "1",
        ])
        .args([
            "--batch-size",
            "2",
            "--focal-views",
            "1",
            "--epochs",
            "1",
            "--stop-after",
            "1",
        ])
        .arg("--data")
        .arg(dir.join("data/manifest.csv"))
        .arg("--out")
        .arg(dir.join("run"))
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("device: GPU through wgpu"), "{text}");
    assert!(text.contains("epoch 0: mean loss"), "{text}");
    // `auto` never takes a software adapter for a GPU.
    if text.contains("(software adapter)") {
        let auto = Command::new(binary())
            .args([
                "pretrain",
                "--ehr",
                "sex",
                "--depth",
                "1",
                "--batch-size",
                "2",
            ])
            .args(["--focal-views", "1", "--epochs", "1", "--data"])
            .arg(dir.join("data/manifest.csv"))
            .arg("--out")
            .arg(dir.join("auto"))
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        let auto_text = String::from_utf8_lossy(&auto.stdout);
        assert!(
            auto.status.success(),
            "{}",
            String::from_utf8_lossy(&auto.stderr)
        );
        assert!(
            auto_text.contains("device: CPU (flex backend); the only wgpu adapter"),
            "{auto_text}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `predict` scores the files of a folder on several threads at once, on the GPU too: the
/// bundled model's scores of the bundled samples (JPEG, 16-bit PNG, DICOM) through the wgpu
/// adapter must be the CPU's, without the Vulkan layers' complaints on a headless machine.
#[test]
fn predict_on_the_wgpu_adapter_scores_as_the_cpu_does() {
    if !gpu_test_runs() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("cxr-msn-gpu-predict-{}", std::process::id()));
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for name in [
        "NORMAL2-IM-1438-0001.jpeg",
        "person1954_bacteria_4886.jpeg",
        "rg1-adult-pa-16bit.png",
        "rg1-adult-pa.dcm",
    ] {
        std::fs::copy(root.join("static/samples").join(name), input.join(name)).unwrap();
    }
    let scores = |device: &str| -> Vec<Vec<String>> {
        let csv = dir.join(format!("{device}.csv"));
        let out = Command::new(binary())
            .args(["predict", "--device", device, "--model"])
            .arg(root.join("static/model.safetensors"))
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&csv)
            // As on a headless server or in a container: no runtime folder, Mesa's
            // device-select layer not configured. It would print "error: XDG_RUNTIME_DIR
            // is invalid" while the adapter is probed; the binary turns it off.
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("NODEVICE_SELECT")
            .env_remove("MESA_VK_DEVICE_SELECT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout),
        );
        assert!(
            !stderr.contains("XDG_RUNTIME_DIR"),
            "--device {device}: no complaint from the Vulkan layers: {stderr}"
        );
        std::fs::read_to_string(&csv)
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect()
    };
    let (cpu, gpu) = (scores("cpu"), scores("gpu"));
    assert_eq!(cpu.len(), 5, "a header and 4 images: {cpu:?}");
    assert_eq!(cpu[0], gpu[0], "the same columns");
    let mut compared = 0;
    for (c, g) in cpu.iter().zip(&gpu).skip(1) {
        assert_eq!(c[0], g[0], "the same files in the same order");
        for (a, b) in c.iter().zip(g).skip(1) {
            if let (Ok(a), Ok(b)) = (a.parse::<f64>(), b.parse::<f64>()) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{}: {a} on the CPU, {b} on the GPU",
                    c[0]
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 4 * 14, "{compared} scores compared");
    std::fs::remove_dir_all(&dir).ok();
}
