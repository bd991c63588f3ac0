//! The baselines through the real binary: DINO and MAE runs resume exactly (a run stopped
//! after its first epoch and continued equals an uninterrupted one, bit for bit: weights,
//! DINO's centre and teacher, the optimiser state, the epoch-dependent teacher temperature
//! and frozen last layer), and `cxr-msn baselines` runs every method and an EHR arm through
//! probe and fine-tune, writes its table and plot, and keeps finished work on a second run.

use std::path::Path;

use cxr_msn_e2e::{model_tensors, run_ok, step_records, synth};
use safetensors::SafeTensors;

fn floats(file: &[u8], name: &str) -> Vec<f32> {
    let st = SafeTensors::deserialize(file).unwrap();
    st.tensor(name)
        .unwrap_or_else(|_| panic!("no tensor {name}"))
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn pretrain(data: &Path, run: &Path, method: &str, config: &Path, extra: &[&str]) -> String {
    let mut args: Vec<std::ffi::OsString> = [
        "pretrain",
        "--method",
        method,
        "--depth",
        "1",
        "--batch-size",
        "4",
        "--focal-views",
        "1",
        "--epochs",
        "2",
        "--threads",
        "2",
        "--device",
        "cpu",
    ]
    .iter()
    .map(Into::into)
    .collect();
    for (flag, path) in [
        ("--data", data.join("manifest.csv")),
        ("--out", run.to_path_buf()),
        ("--config", config.to_path_buf()),
    ] {
        args.push(flag.into());
        args.push(path.into());
    }
    args.extend(extra.iter().map(Into::into));
    run_ok(args)
}

#[test]
fn dino_and_mae_runs_continue_exactly_where_they_stopped() {
    let dir = std::env::temp_dir().join(format!("cxr-msn-baseline-resume-{}", std::process::id()));
    synth(&dir.join("data"), 16, 96, 8);
    let config = dir.join("small.toml");
    for (method, toml) in [
        (
            "dino",
            // Warm-up over both epochs: the teacher temperature differs between them.
            "[dino]\nhidden = 32\nbottleneck = 16\nout_dim = 64\nteacher_warmup_epochs = 2\n",
        ),
        (
            "mae",
            "[mae]\ndecoder_dim = 32\ndecoder_depth = 1\ndecoder_heads = 2\n",
        ),
    ] {
        std::fs::write(&config, toml).unwrap();
        let whole = dir.join(format!("{method}-whole"));
        let parts = dir.join(format!("{method}-parts"));
        let log = pretrain(&dir.join("data"), &whole, method, &config, &[]);
        assert!(log.contains("epoch 2/2: mean loss"), "{log}");
        let first = pretrain(
            &dir.join("data"),
            &parts,
            method,
            &config,
            &["--stop-after", "1"],
        );
        assert!(!first.contains("epoch 2/2:"), "{first}");
        let after_one = std::fs::read(parts.join("checkpoint.safetensors")).unwrap();
        let second = pretrain(&dir.join("data"), &parts, method, &config, &[]);
        assert!(second.contains("continuing"), "{second}");
        assert!(
            model_tensors(&whole.join("checkpoint.safetensors"))
                == model_tensors(&parts.join("checkpoint.safetensors")),
            "{method}: the continued run differs from the uninterrupted one"
        );
        assert_eq!(
            step_records(&whole),
            step_records(&parts),
            "{method}: the same losses step by step"
        );
        let a = std::fs::read(whole.join("checkpoint.safetensors")).unwrap();

        let metrics = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 6, "3 steps per epoch");
        assert!(
            metrics.contains("\"ce\":null"),
            "a baseline's loss has no MSN parts"
        );
        let inspect = run_ok([
            "inspect".as_ref(),
            whole.join("checkpoint.safetensors").as_os_str(),
        ]);
        assert!(
            inspect.contains(&format!("method:          {method}")),
            "{inspect}"
        );

        if method == "dino" {
            // Epoch 0 keeps the student's last layer frozen, so the teacher (an EMA of it)
            // still equals it; epoch 1 trains it. The centre has moved off zero.
            let student = floats(&after_one, "student_head.last_layer.weight");
            let teacher = floats(&after_one, "teacher_head.last_layer.weight");
            let gap = student
                .iter()
                .zip(&teacher)
                .map(|(s, t)| (s - t).abs())
                .fold(0.0f32, f32::max);
            assert!(gap < 1e-6, "frozen last layer moved in epoch 0: {gap}");
            let student2 = floats(&a, "student_head.last_layer.weight");
            assert!(
                student2.iter().zip(&student).any(|(x, y)| x != y),
                "the last layer trains from epoch 1"
            );
            assert!(floats(&a, "center").iter().any(|&c| c != 0.0));
        } else {
            let names = SafeTensors::deserialize(&a).unwrap().names().join(" ");
            assert!(names.contains("decoder.mask_token") && names.contains("encoder.cls_token"));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_comparison_grid_runs_every_method_and_keeps_finished_work() {
    let dir = std::env::temp_dir().join(format!("cxr-msn-baselines-{}", std::process::id()));
    synth(&dir.join("data"), 40, 96, 9);
    let out = dir.join("grid");
    // The small recipe both runs share, then each run's own flags.
    let grid = |own: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = vec!["baselines".into(), "--data".into()];
        args.push(dir.join("data/manifest.csv").into());
        args.push("--out".into());
        args.push(out.clone().into());
        let shared = [
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--focal-views",
            "1",
            "--depth",
            "1",
            "--probe-epochs",
            "1",
            "--bootstrap",
            "20",
            "--threads",
            "2",
            "--device",
            "cpu",
        ];
        args.extend(shared.iter().chain(own).map(Into::into));
        run_ok(args)
    };
    let full = [
        "--methods",
        "random,mae,dino,msn",
        "--ehr-sets",
        "sex",
        "--finetune-epochs",
        "1",
    ];
    let first = grid(&full);
    for label in [
        "random init",
        "MAE",
        "DINO",
        "vanilla MSN",
        "MSN + EHR (sex)",
    ] {
        assert!(first.contains(&format!("| {label} | image |")), "{first}");
    }
    assert!(
        first.contains("| MSN + EHR (sex) | image + EHR |"),
        "{first}"
    );
    let csv = std::fs::read_to_string(out.join("comparison.csv")).unwrap();
    // 5 arms x (probe, fine-tune) image heads + the EHR arm's image + EHR head twice.
    assert_eq!(csv.lines().count(), 1 + 12, "{csv}");
    for arm in ["random", "mae", "dino", "msn", "msn-ehr-sex"] {
        assert!(
            csv.lines().any(|l| l.starts_with(&format!("{arm},"))),
            "{csv}"
        );
        let meta = run_ok([
            "inspect".as_ref(),
            out.join(arm)
                .join("finetune/classifier.safetensors")
                .as_os_str(),
        ]);
        let method = arm.split('-').next().unwrap();
        assert!(
            meta.contains(&format!("method:          {method}")),
            "{meta}"
        );
    }
    let svg = std::fs::read_to_string(out.join("comparison.svg")).unwrap();
    assert!(svg.contains("MSN + EHR (sex), image + EHR head") && svg.contains("<circle"));
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(md.contains("| DINO | image |"), "{md}");

    // A second run keeps every stage and gives the same table.
    let second = grid(&full);
    assert_eq!(second.matches("linear probe: kept").count(), 5, "{second}");
    assert_eq!(second.matches("fine-tune: kept").count(), 5, "{second}");
    assert_eq!(
        std::fs::read_to_string(out.join("comparison.csv")).unwrap(),
        csv
    );

    // The low-data regime beside it: the pretrained arms are reused, the probes are new.
    let low = grid(&[
        "--methods",
        "random,msn",
        "--ehr-sets",
        "none",
        "--train-fraction",
        "0.5",
        "--finetune-epochs",
        "0",
    ]);
    assert!(
        low.contains("nothing to do") && low.contains("probe-50%"),
        "{low}"
    );
    let csv50 = std::fs::read_to_string(out.join("comparison-50%.csv")).unwrap();
    assert_eq!(csv50.lines().count(), 1 + 2, "{csv50}");
    let random = csv50.lines().find(|l| l.starts_with("random,")).unwrap();
    assert!(
        !random.ends_with(",,,"),
        "a paired difference from MSN: {random}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("comparison.csv")).unwrap(),
        csv,
        "the full-data table is untouched"
    );
    std::fs::remove_dir_all(&dir).ok();
}
