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

#[test]
fn pretraining_runs_on_the_wgpu_adapter() {
    if !vulkan_available() {
        assert!(
            std::env::var_os("CXR_MSN_REQUIRE_GPU_TEST").is_none(),
            "no Vulkan driver, but CXR_MSN_REQUIRE_GPU_TEST is set"
        );
        eprintln!("skipped: no Vulkan driver (install mesa-vulkan-drivers to run it)");
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
