//! The bad-input corpus (`tests/bad-inputs/`, listed in `cases.json`): broken, odd and
//! hostile images, model files and tables, each fed to the command a user would run. No
//! panic, no hang: either it is read (the control cases) or the error names the file and
//! says what is wrong, in the words `cases.json` expects.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cxr_msn_e2e::binary;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bad-inputs")
}

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(corpus().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Runs the trainer with `args`; fails the test if it runs longer than a minute.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            panic!("cxr-msn {args:?} hangs");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Checks the outcome of one case: success for "ok", otherwise a clean failure (exit code
/// 1, not a panic's 101) whose message contains the expected text and the file's name.
fn check(case: &serde_json::Value, out: &Output, what: &str) {
    let file = case["file"].as_str().unwrap();
    let expect = case["expect"].as_str().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "{what} {file}: a panic\n{stderr}"
    );
    if expect == "ok" {
        assert!(out.status.success(), "{what} {file} must be read\n{stderr}");
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what} {file}: a clean failure\n{stderr}"
    );
    let name = Path::new(file).file_name().unwrap().to_string_lossy();
    let line = stderr
        .lines()
        .find(|l| l.contains(name.as_ref()))
        .unwrap_or_else(|| panic!("{what} {file}: the error must name the file\n{stderr}"));
    assert!(
        line.contains(expect),
        "{what} {file} ({}): expected '{expect}' in\n{line}",
        case["note"]
    );
}

#[test]
fn every_bad_image_is_named_with_its_problem_and_the_good_ones_are_scored() {
    let cases = cases();
    let images: Vec<_> = cases.iter().filter(|c| c["kind"] == "image").collect();
    assert!(images.len() >= 20);
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../static/model.safetensors");
    let dir = std::env::temp_dir().join(format!("cxr-msn-bad-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scores = dir.join("scores.csv");
    // The whole folder in one run: the readable images are scored, the others listed.
    let out = run(&[
        "predict",
        "--device",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--input",
        corpus().join("images").to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad = images.iter().filter(|c| c["expect"] != "ok").count();
    assert!(
        stderr.contains(&format!(
            "{bad} of {} files could not be read",
            images.len()
        )),
        "{stderr}"
    );
    let csv = std::fs::read_to_string(&scores).unwrap();
    for case in &images {
        let file = case["file"].as_str().unwrap();
        let name = Path::new(file).file_name().unwrap().to_string_lossy();
        if case["expect"] == "ok" {
            assert!(csv.contains(name.as_ref()), "{file} scored:\n{csv}");
            assert!(!stderr.contains(name.as_ref()), "{file}:\n{stderr}");
        } else {
            check(case, &out, "predict");
            assert!(!csv.contains(name.as_ref()), "{file} is not scored");
        }
    }
    // One file at a time, as `cxr-msn views` reads it.
    for case in &images {
        let path = corpus().join(case["file"].as_str().unwrap());
        let png = dir.join("views.png");
        let out = run(&[
            "views",
            "--image",
            path.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ]);
        check(case, &out, "views");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_bad_model_file_is_refused_with_its_problem() {
    let image =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../static/samples/NORMAL2-IM-1438-0001.jpeg");
    let out_csv =
        std::env::temp_dir().join(format!("cxr-msn-bad-models-{}.csv", std::process::id()));
    for case in cases().iter().filter(|c| c["kind"] == "model") {
        let path = corpus().join(case["file"].as_str().unwrap());
        let path = path.to_str().unwrap();
        check(case, &run(&["inspect", path]), "inspect");
        let out = run(&[
            "predict",
            "--device",
            "cpu",
            "--model",
            path,
            "--input",
            image.to_str().unwrap(),
            "--out",
            out_csv.to_str().unwrap(),
        ]);
        check(case, &out, "predict --model");
    }
}

#[test]
fn every_bad_table_is_refused_with_its_row_and_field() {
    let out_csv = std::env::temp_dir().join(format!("cxr-msn-bad-ehr-{}.csv", std::process::id()));
    for case in cases().iter() {
        let path = corpus().join(case["file"].as_str().unwrap());
        match case["kind"].as_str().unwrap() {
            "table" => {
                let format = case["format"].as_str().unwrap();
                let out = run(&["data", "--format", format, "--data", path.to_str().unwrap()]);
                check(case, &out, "data");
            }
            "ehr" => {
                let metadata_dir = path.parent().unwrap();
                let mimic_iv = corpus().join(case["mimic_iv"].as_str().unwrap());
                let out = run(&[
                    "ehr",
                    "--mimic-cxr",
                    metadata_dir.to_str().unwrap(),
                    "--mimic-iv",
                    mimic_iv.to_str().unwrap(),
                    "--out",
                    out_csv.to_str().unwrap(),
                ]);
                check(case, &out, "ehr");
                assert!(!out_csv.exists(), "a failed linkage writes nothing");
            }
            _ => {}
        }
    }
}

#[test]
fn a_corrupt_image_stops_pretraining_with_a_hint_and_skip_bad_images_leaves_it_out() {
    let dir = std::env::temp_dir().join(format!("cxr-msn-skip-bad-{}", std::process::id()));
    cxr_msn_e2e::synth(&dir.join("data"), 12, 96, 4);
    // One image cut short, as an interrupted copy leaves it.
    let cut = dir.join("data/images/000003.png");
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..300]).unwrap();
    let manifest = dir.join("data/manifest.csv");
    let pretrain = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "pretrain",
            "--depth",
            "1",
            "--batch-size",
            "4",
            "--focal-views",
            "1",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--data",
            manifest.to_str().unwrap(),
            "--out",
        ];
        let out = dir.join(out);
        args.push(out.to_str().unwrap());
        args.extend(extra);
        run(&args)
    };
    let stopped = pretrain("stopped", &[]);
    let err = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(1), "{err}");
    assert!(
        err.contains("000003.png: PNG data is truncated")
            && err.contains("hint: --skip-bad-images"),
        "{err}"
    );
    let skipped = pretrain("skipped", &["--skip-bad-images"]);
    let err = String::from_utf8_lossy(&skipped.stderr);
    assert!(skipped.status.success(), "{err}");
    assert!(
        err.contains("left out 1 images that cannot be read") && err.contains("000003.png"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
