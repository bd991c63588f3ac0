//! A pretraining run that is killed (`kill -9`), resumed, stopped with Ctrl-C (SIGINT) in
//! the middle of an epoch and resumed again ends bit for bit where an uninterrupted run
//! ends: same weights, same optimiser path, same per-step losses.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cxr_msn_e2e::{binary, run_ok, synth};

const EPOCHS: &str = "3";

fn pretrain(data: &Path, run: &Path) -> Command {
    let mut c = Command::new(binary());
    c.args([
        "pretrain",
        "--ehr",
        "sex",
        "--depth",
        "1",
        "--batch-size",
        "4",
    ])
    .args(["--focal-views", "1", "--epochs", EPOCHS, "--threads", "2"])
    .args(["--save-every-steps", "2", "--device", "cpu", "--data"])
    .arg(data)
    .arg("--out")
    .arg(run);
    c
}

/// Steps recorded so far in the run's metrics.jsonl.
fn steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// Waits until the running child has recorded `n` steps; panics if it ends first.
fn wait_for_steps(child: &mut Child, run: &Path, n: usize) {
    let start = Instant::now();
    while steps(run) < n {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pretraining ended ({status}) before step {n}; the test needs it running");
        }
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Step records without their timing.
fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

fn tensors(file: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let data = st.tensor(&n).unwrap().data().to_vec();
            (n, data)
        })
        .collect()
}

#[test]
fn killed_and_interrupted_runs_resume_exactly() {
    let dir = tempfile_dir("resume");
    let world = dir.join("data");
    synth(&world, 20, 96, 5);
    let data = dir.join("data/manifest.csv");

    // The reference: one uninterrupted run (16 training images, 4 steps per epoch).
    let reference = dir.join("reference");
    let out = pretrain(&data, &reference).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kill -9 during the first epoch: only the steps after the last checkpoint are lost.
    let run = dir.join("run");
    let mut child = pretrain(&data, &run).stdout(Stdio::null()).spawn().unwrap();
    wait_for_steps(&mut child, &run, 3);
    child.kill().unwrap();
    child.wait().unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    let saved = state["steps_done"].as_u64().unwrap();
    assert!(
        saved >= 2 && saved.is_multiple_of(2),
        "saved at a multiple of 2: {state}"
    );

    // Resume, then Ctrl-C in the middle of the second epoch.
    let mut child = pretrain(&data, &run)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &run, 6);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "Ctrl-C is a clean stop: {text}");
    assert!(
        text.contains(&format!("continuing {} after step {saved}", run.display())),
        "{text}"
    );
    assert!(text.contains("stopped on request after step"), "{text}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    let stopped = state["steps_done"].as_u64().unwrap();
    assert!((6..12).contains(&stopped), "stopped mid-run at {stopped}");
    assert_eq!(
        steps(&run) as u64,
        stopped,
        "metrics.jsonl holds exactly the saved steps"
    );

    // Finish, and compare with the reference.
    let text = run_ok(pretrain(&data, &run).get_args());
    assert!(text.contains("epoch 2: mean loss"), "{text}");
    assert_eq!(
        records(&run),
        records(&reference),
        "the same loss at every step"
    );
    assert_eq!(
        tensors(&run.join("checkpoint.safetensors")),
        tensors(&reference.join("checkpoint.safetensors")),
        "the same weights, bit for bit"
    );
    for name in ["epochs.csv", "loss.svg", "config.json"] {
        assert!(run.join(name).exists(), "{name}");
    }
    let resume: Vec<_> = std::fs::read_dir(run.join("resume")).unwrap().collect();
    assert_eq!(resume.len(), 2, "only the latest exact state is kept");
    std::fs::remove_dir_all(&dir).ok();
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cxr-msn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
