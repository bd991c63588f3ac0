//! Crash safety of pretraining. A run that is killed (`kill -9`), resumed, stopped with
//! Ctrl-C (SIGINT) in the middle of an epoch and resumed again ends bit for bit where an
//! uninterrupted run ends: same weights, same optimiser path, same per-step losses. So does
//! a run killed at random moments (while it starts, trains or writes a checkpoint), and one
//! whose disk fills up. A run that diverges stops before a NaN reaches a checkpoint.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cxr_msn_e2e::{Succeeds, binary, model_tensors, run_ok, step_records, synth};

const EPOCHS: &str = "3";
/// Steps of a whole run: 16 training images in batches of 4, [`EPOCHS`] times.
const TOTAL_STEPS: u64 = 12;

fn pretrain(data: &Path, run: &Path) -> Command {
    pretrain_saving_every(data, run, 2)
}

/// [`pretrain`] with a checkpoint every `steps` steps.
fn pretrain_saving_every(data: &Path, run: &Path, steps: usize) -> Command {
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
    .args(["--save-every-steps", &steps.to_string()])
    .args(["--device", "cpu", "--data"])
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
#[test]
fn killed_and_interrupted_runs_resume_exactly() {
    let dir = tempfile_dir("resume");
    let world = dir.join("data");
    synth(&world, 20, 96, 5);
    let data = dir.join("data/manifest.csv");

    // The reference: one uninterrupted run (16 training images, 4 steps per epoch).
    let reference = dir.join("reference");
    pretrain(&data, &reference).succeeds();

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
    // A clean stop, but not a finished run: status 130, as the shell's for Ctrl-C.
    assert_eq!(
        out.status.code(),
        Some(130),
        "Ctrl-C saves and stops: {text}"
    );
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
    assert!(text.contains("epoch 3/3: mean loss"), "{text}");
    assert_eq!(
        step_records(&run),
        step_records(&reference),
        "the same loss at every step"
    );
    assert_eq!(
        model_tensors(&run.join("checkpoint.safetensors")),
        model_tensors(&reference.join("checkpoint.safetensors")),
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

/// The committed step count of a run folder (`state.json`), if it has one.
fn committed(run: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(run.join("state.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("state.json must always be whole ({e}): {text:?}"));
    Some(state["steps_done"].as_u64().unwrap())
}

/// Half-written files of atomic writes (`.name.pid.tmp`) in `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// What must hold in a run folder at any moment, even right after `kill -9`: the commit
/// point is whole, and what it points at (the model file, the exact state, the steps'
/// records) is all there.
fn check_consistent(run: &Path, steps_done: u64) {
    let checkpoint = run.join("checkpoint.safetensors");
    let text = Command::new(binary())
        .arg("inspect")
        .arg(&checkpoint)
        .succeeds();
    let in_file: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("training.steps_done: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("steps_done in the model file: {text}"));
    // The model file is written just before the commit point, so it may be one save ahead.
    assert!(
        in_file >= steps_done,
        "model file at {in_file}, state at {steps_done}"
    );
    for kind in ["model", "optimizer"] {
        let exact = run.join(format!("resume/{kind}-{steps_done}.bpk"));
        assert!(
            exact.exists(),
            "{} is kept until the next commit",
            exact.display()
        );
    }
    assert!(
        steps(run) as u64 >= steps_done,
        "every committed step is recorded"
    );
}

/// A small deterministic generator for the kill times (xorshift64*).
struct Draw(u64);

impl Draw {
    fn fraction(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn runs_killed_at_random_moments_lose_nothing_committed_and_end_like_an_uninterrupted_run() {
    let dir = tempfile_dir("random-kills");
    synth(&dir.join("data"), 20, 96, 5);
    let data = dir.join("data/manifest.csv");
    // A checkpoint after every step, so that kills land in the middle of writing one too.
    let reference = dir.join("reference");
    let started = Instant::now();
    pretrain_saving_every(&data, &reference, 1).succeeds();
    let whole = started.elapsed();

    // The kill times are random, from a seed printed here (set CXR_MSN_KILL_SEED to replay).
    let seed = std::env::var("CXR_MSN_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("kill seed {seed} (an uninterrupted run took {whole:.2?})");
    let mut draw = Draw(seed);
    let run = dir.join("run");
    let per_step = whole / TOTAL_STEPS as u32;
    let mut last = 0;
    for kill in 1..=6 {
        // Records past the commit point, left by the previous kill, are redone first.
        let stale = steps(&run) as u64;
        let mut child = pretrain_saving_every(&data, &run, 1)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // One kill in four during start-up; the others after a random step still to come,
        // a random part of a step later (so in the middle of a step or of a save).
        let first = stale.max(last) + 1;
        let after = first + (draw.fraction() * TOTAL_STEPS.saturating_sub(first) as f64) as u64;
        let during_startup = draw.fraction() < 0.25 || after >= TOTAL_STEPS;
        let wait = if during_startup {
            Duration::from_secs_f64(draw.fraction() * 1.5)
        } else {
            wait_for_steps(&mut child, &run, after as usize);
            per_step.mul_f64(1.5 * draw.fraction())
        };
        std::thread::sleep(wait);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let when = if during_startup {
            format!("{wait:.2?} after the start")
        } else {
            format!("{wait:.2?} after step {after}")
        };
        match committed(&run) {
            Some(done) => {
                assert!(
                    done >= last,
                    "committed steps went back from {last} to {done}"
                );
                check_consistent(&run, done);
                println!("kill {kill} {when} ({status}): {done} steps committed");
                last = done;
            }
            None => {
                assert_eq!(last, 0, "state.json vanished after {last} committed steps");
                println!("kill {kill} {when} ({status}): nothing committed yet");
            }
        }
    }

    // A second trainer on a folder in use is refused (here the test holds the lock).
    let held = cxr_msn_trainer::run_lock::RunLock::acquire(&run).unwrap();
    let second = pretrain_saving_every(&data, &run, 1).output().unwrap();
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && text.contains("is in use by another process"),
        "{text}"
    );
    drop(held);

    // Finish, and compare with the uninterrupted run.
    run_ok(pretrain_saving_every(&data, &run, 1).get_args());
    assert_eq!(
        step_records(&run),
        step_records(&reference),
        "the same loss at every step"
    );
    assert_eq!(
        model_tensors(&run.join("checkpoint.safetensors")),
        model_tensors(&reference.join("checkpoint.safetensors")),
        "the same weights, bit for bit"
    );
    assert_eq!(
        temporaries(&run),
        Vec::<String>::new(),
        "no half-written files left"
    );
    assert_eq!(temporaries(&run.join("resume")), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn diverging_runs_stop_before_a_non_finite_weight_is_saved() {
    let dir = tempfile_dir("diverge");
    synth(&dir.join("data"), 20, 96, 5);
    // Warm-up from a sane learning rate to an absurd one: step 0 trains normally, step 1
    // (lr 2.5e39, infinite in f32) turns the weights into infinities and NaNs.
    let config = dir.join("diverge.toml");
    std::fs::write(
        &config,
        "[optim]\nwarmup_epochs = 1\nlr_per_epoch = false\nstart_lr = 1e-4\npeak_lr = 1e40\n",
    )
    .unwrap();
    let run = dir.join("run");
    let out = pretrain_saving_every(&dir.join("data/manifest.csv"), &run, 1)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a diverged run must fail: {text}");
    assert!(
        text.contains("became NaN or infinite")
            && text.contains("were not saved")
            && text.contains("is intact")
            && text.contains("lower the learning rate"),
        "{text}"
    );
    assert_eq!(committed(&run), Some(1), "the good step 0 was committed");
    check_consistent(&run, 1);
    for (name, bytes) in model_tensors(&run.join("checkpoint.safetensors")) {
        let finite = match bytes.len() % 4 {
            0 => bytes
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite()),
            _ => true,
        };
        assert!(finite, "{name} holds a non-finite value");
    }

    // Probing and fine-tuning that diverge stop too, and write no classifier.
    for command in ["probe", "finetune"] {
        let out_dir = dir.join(command);
        let out = Command::new(binary())
            .args([
                command, "--device", "cpu", "--epochs", "1", "--lr", "1e39", "--data",
            ])
            .arg(dir.join("data/manifest.csv"))
            .arg("--checkpoint")
            .arg(run.join("checkpoint.safetensors"))
            .arg("--out")
            .arg(&out_dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && text.contains("diverged")
                && text.contains("nothing was written"),
            "{command}: {text}"
        );
        assert!(
            !out_dir.join("classifier.safetensors").exists(),
            "{command}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs `script` with `sh` in a private mount namespace (so it can mount small or read-only
/// file systems), with `$BIN` set to the trainer.
fn in_mount_namespace(script: &str) -> std::process::Output {
    Command::new("unshare")
        .args(["--mount", "--map-root-user", "sh", "-euc", script])
        .env("BIN", binary())
        .output()
        .expect("util-linux `unshare` runs (apt-get install util-linux)")
}

#[test]
fn a_full_disk_or_a_read_only_folder_is_a_clear_error_and_the_run_continues_with_space() {
    let dir = tempfile_dir("disk-full");
    synth(&dir.join("data"), 20, 96, 5);
    let data = dir.join("data/manifest.csv");
    let probe = in_mount_namespace("mount -t tmpfs -o size=1m tmpfs /mnt && echo ok");
    assert!(
        probe.status.success(),
        "this test needs mount namespaces (root, or unprivileged user namespaces): {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    // How much a run folder holds after its first checkpoint.
    let reference = dir.join("reference");
    pretrain_saving_every(&data, &reference, 1).succeeds();
    let one_save: u64 = ["model-12.bpk", "optimizer-12.bpk"]
        .iter()
        .map(|f| reference.join("resume").join(f))
        .chain([reference.join("checkpoint.safetensors")])
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    // A disk that holds one checkpoint but not a second: the run fails on the second save
    // with a clear error, the first stays committed, and after the disk grows the same
    // command finishes the run exactly.
    let args: Vec<String> = pretrain_saving_every(&data, Path::new("/mnt/run"), 1)
        .get_args()
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let args = args.join(" ");
    let size = one_save * 13 / 10 + 64 * 1024;
    let kept = dir.join("kept");
    let script = format!(
        "mount -t tmpfs -o size={size} tmpfs /mnt
         if \"$BIN\" {args} > {log}/full.out 2> {log}/full.err; then echo finished; fi
         cp -r /mnt/run {kept}
         mount -o remount,size=512m /mnt
         \"$BIN\" {args} > {log}/more.out 2> {log}/more.err
         cp -r /mnt/run {log}/final",
        log = dir.display(),
        kept = kept.display()
    );
    let out = in_mount_namespace(&script);
    let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log("more.out"),
        log("more.err")
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("finished"),
        "the small disk must fill up"
    );
    let err = std::fs::read_to_string(dir.join("full.err")).unwrap();
    assert!(
        err.contains("cannot write /mnt/run/")
            && err.contains("No space left on device")
            && err.contains("hint: the disk is full"),
        "{err}"
    );
    let done = committed(&kept).expect("the first checkpoint was committed");
    assert!(done >= 1);
    check_consistent(&kept, done);
    assert_eq!(temporaries(&kept), Vec::<String>::new());
    assert_eq!(temporaries(&kept.join("resume")), Vec::<String>::new());
    let more = std::fs::read_to_string(dir.join("more.out")).unwrap();
    assert!(
        more.contains(&format!("continuing /mnt/run after step {done}")),
        "{more}"
    );
    let last = dir.join("final");
    assert_eq!(step_records(&last), step_records(&reference));
    assert_eq!(
        model_tensors(&last.join("checkpoint.safetensors")),
        model_tensors(&reference.join("checkpoint.safetensors"))
    );

    // A read-only file system, and an output "folder" under a plain file.
    let script = format!(
        "mount -t tmpfs -o ro tmpfs /mnt
         \"$BIN\" {args} 2>&1 || true"
    );
    let out = in_mount_namespace(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cannot create /mnt/run")
            && text.contains("hint: that file system is mounted read-only"),
        "{text}"
    );
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = pretrain(&data, &file.join("run")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && text.contains(&format!("cannot create {}", file.join("run").display())),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
