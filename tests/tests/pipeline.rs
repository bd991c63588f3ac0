//! The whole data path into the model: the real `cxr-msn synth` binary writes a synthetic
//! dataset, the manifest adapter reads it, the loader decodes the PNGs and draws MSN views
//! on worker threads, and one multimodal pretraining step runs on the flex CPU backend.

use std::path::Path;
use std::process::Command;

use cxr_msn_e2e::{Succeeds, binary, run_ok, synth};

use burn::tensor::{Device, Tensor, TensorData};
use cxr_msn::config::{EhrConfig, MsnConfig, VitPreset};
use cxr_msn::decode::DecodeLimits;
use cxr_msn::ehr::FeatureSet;
use cxr_msn::msn::{AnchorGroup, MsnBatch};
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;
use cxr_msn_trainer::data::{LabelPolicy, OnBadRow, manifest};
use cxr_msn_trainer::images::file_decoder;
use cxr_msn_trainer::loader::{Loader, LoaderConfig, Views};
use cxr_msn_web::engine::{Engine, prepare};

#[test]
fn synthetic_data_flows_through_the_loader_into_a_pretraining_step() {
    let dir = std::env::temp_dir().join(format!("cxr-msn-pipeline-{}", std::process::id()));
    synth(&dir, 12, 128, 3);

    let text = Command::new(binary())
        .args(["data", "--check-images", "--data"])
        .arg(dir.join("manifest.csv"))
        .succeeds();
    assert!(text.contains("images decoded: 12 of 12"), "{text}");

    let data = manifest::load(&dir.join("manifest.csv"), OnBadRow::Fail).unwrap();
    let features = FeatureSet::from_name("demographic").unwrap();
    let items = data
        .items(None, Some(&features), &LabelPolicy::default())
        .unwrap();
    let views = cxr_msn::config::ViewConfig {
        focal_views: 2,
        ..Default::default()
    };
    let mut cfg = LoaderConfig::new(cxr_msn::config::Normalization::imagenet(1));
    cfg.batch_size = 4;
    cfg.threads = 2;
    let loader = Loader::new(
        items,
        Views::Msn(views.clone()),
        cfg,
        file_decoder(DecodeLimits::default()),
    )
    .unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();

    let device = Device::flex().autodiff();
    device.seed(1);
    let mut config = MsnConfig::paper(VitPreset::Tiny)
        .with_ehr(features)
        .with_channels(1);
    config.vit.depth = 2;
    config.views = views;
    config.ehr = Some(EhrConfig {
        ehr_dim: 16,
        ..config.ehr.unwrap()
    });
    let model = config.init(&device).unwrap();
    let msn_batch = MsnBatch {
        target: batch.images.clone().to_tensor(&device),
        anchors: vec![
            AnchorGroup {
                images: batch.anchors.clone().unwrap().to_tensor(&device),
            },
            AnchorGroup {
                images: batch.focal.clone().unwrap().to_tensor(&device),
            },
        ],
        ehr: Some(Tensor::from_data(
            TensorData::new(batch.ehr.clone(), [4, 3]),
            &device,
        )),
    };
    model.check_batch(&msn_batch).unwrap();
    let masks = model.sample_masks(&msn_batch, &config, &mut StdRng::seed_from_u64(2));
    let forward = model.forward_pretrain(msn_batch, &masks, &config);
    let loss = model.loss(&forward, &config);
    let value = loss.total.clone().into_data().try_to_vec::<f32>().unwrap()[0];
    assert!(value.is_finite() && value > 0.0, "loss {value}");
    let grads = loss.total.backward();
    let g = model.ehr.as_ref().unwrap().f_ehr.weight.val().grad(&grads);
    assert!(g.is_some(), "the EHR encoder learns from real batches");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn pretraining_runs_saves_each_epoch_and_continues_where_it_stopped() {
    let dir = std::env::temp_dir().join(format!("cxr-msn-pretrain-{}", std::process::id()));
    synth(&dir.join("data"), 20, 96, 5);
    let run = dir.join("run");
    let pretrain_into = |run: &std::path::Path, extra: &[&str]| {
        Command::new(binary())
            .args([
                "pretrain",
                "--ehr",
                "sex",
                "--depth",
                "1",
                "--batch-size",
                "4",
            ])
            .args([
                "--focal-views",
                "1",
                "--epochs",
                "2",
                "--threads",
                "2",
                "--data",
            ])
            .arg(dir.join("data/manifest.csv"))
            .arg("--out")
            .arg(run)
            .args(extra)
            .succeeds()
    };
    let pretrain = |extra: &[&str]| pretrain_into(&run, extra);
    let first = pretrain(&["--stop-after", "1"]);
    assert!(first.contains("epoch 1/2: mean loss"), "{first}");
    // MSN's prototypes in use, per batch of 4 targets: between 1 and 4.
    let used: f64 = first
        .split("targets on ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no prototype count in {first}"));
    assert!((1.0..=4.0).contains(&used), "{first}");
    let epochs = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    assert!(
        epochs.starts_with(
            "epoch,steps,loss,ce,me_max,entropy,lr_end,seconds,images_per_second,prototypes\n"
        ),
        "{epochs}"
    );
    assert!(!first.contains("epoch 2/2:"), "{first}");
    let state = std::fs::read_to_string(run.join("state.json")).unwrap();
    assert_eq!(
        state,
        r#"{"epochs_done":1,"steps_done":4,"steps_per_epoch":4}"#
    );

    let second = pretrain(&[]);
    assert!(
        second.contains("continuing") && second.contains("after step 4 (1 of 2 epochs done)"),
        "{second}"
    );
    assert!(
        second.contains("epoch 2/2: mean loss") && !second.contains("epoch 1/2:"),
        "{second}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        steps,
        [0, 1, 2, 3, 4, 5, 6, 7],
        "one record per step, numbered on"
    );
    let epochs = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    assert_eq!(epochs.lines().count(), 1 + 2, "{epochs}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert!(config["build"]["git_revision"].is_string() && config["args"]["seed"] == 0);
    assert!(
        std::fs::read_to_string(run.join("loss.svg"))
            .unwrap()
            .contains("<path")
    );

    // The checkpoint is a pretraining model file that `inspect` reads.
    let inspect = Command::new(binary())
        .arg("inspect")
        .arg(run.join("checkpoint.safetensors"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("pretraining") && text.contains("training.epochs_done: 2"),
        "{text}"
    );

    // The linear probe on the checkpoint writes metrics and a classifier the web page accepts.
    let probe = |out: &str| {
        Command::new(binary())
            .args([
                "probe",
                "--epochs",
                "2",
                "--bootstrap",
                "20",
                "--threads",
                "2",
                "--data",
            ])
            .arg(dir.join("data/manifest.csv"))
            .arg("--checkpoint")
            .arg(run.join("checkpoint.safetensors"))
            .arg("--out")
            .arg(run.join(out))
            .succeeds()
    };
    let text = probe("probe");
    // The same command gives the same file, byte for byte (the heads' initialisation
    // follows --seed; the header's keys are sorted).
    probe("probe-again");
    assert!(
        std::fs::read(run.join("probe/classifier.safetensors")).unwrap()
            == std::fs::read(run.join("probe-again/classifier.safetensors")).unwrap(),
        "two runs of the same probe differ"
    );
    assert!(
        text.contains("head image:") && text.contains("head image+ehr:"),
        "{text}"
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("probe/metrics.json")).unwrap())
            .unwrap();
    let validation = &metrics["validation_macro_auroc"]["image+ehr"];
    assert!(validation.is_number() || validation.is_null());
    let per_label = &metrics["heads"]["image"]["labels"]["Cardiomegaly"];
    assert!(per_label["n"].as_u64().unwrap() > 0, "{per_label}");
    let table = std::fs::read_to_string(run.join("probe/metrics.csv")).unwrap();
    assert_eq!(
        table.lines().count(),
        1 + 2 * 15,
        "a row per head and label, and macro"
    );
    assert!(
        std::fs::read_to_string(run.join("probe/roc.svg"))
            .unwrap()
            .contains("ROC curves")
    );
    let classifier = std::fs::read(run.join("probe/classifier.safetensors")).unwrap();
    let summary = cxr_msn_web::describe_model(&classifier).unwrap();
    assert!(
        summary.contains("classifier") && summary.contains("Support Devices"),
        "{summary}"
    );

    // `eval` on the saved classifier reproduces the probe's test metrics (another path:
    // the model file, the loader, the classifier forward).
    Command::new(binary())
        .args(["eval", "--bootstrap", "20", "--data"])
        .arg(dir.join("data/manifest.csv"))
        .arg("--model")
        .arg(run.join("probe/classifier.safetensors"))
        .arg("--out")
        .arg(run.join("eval"))
        .succeeds();
    let evaluated: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/metrics.json")).unwrap())
            .unwrap();
    for head in ["image", "image+ehr"] {
        let a = &evaluated["heads"][head]["macro_auroc"]["value"];
        let b = &metrics["heads"][head]["macro_auroc"]["value"];
        match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{head}: eval {a} vs probe {b}"),
            (None, None) => {}
            other => panic!("{head}: eval and probe disagree: {other:?}"),
        }
    }

    // `predict` on a folder, with the EHR given on the command line.
    Command::new(binary())
        .args(["predict", "--sex", "F", "--model"])
        .arg(run.join("probe/classifier.safetensors"))
        .arg("--input")
        .arg(dir.join("data/images"))
        .arg("--out")
        .arg(run.join("predictions.csv"))
        .arg("--embeddings")
        .arg(run.join("embeddings.csv"))
        .succeeds();
    let csv = std::fs::read_to_string(run.join("predictions.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 20);
    assert!(lines[0].starts_with("path,Atelectasis,") && lines[0].contains(",ehr:Atelectasis,"));
    assert_eq!(
        lines[1].split(',').count(),
        1 + 14 + 14,
        "image and image + EHR scores"
    );
    // The embeddings are the image-only head's input: its weights applied to them by hand
    // (sigmoid(e W + b) in f64) give the scores `predict` wrote.
    let embeddings = std::fs::read_to_string(run.join("embeddings.csv")).unwrap();
    let embeddings: Vec<&str> = embeddings.lines().collect();
    assert_eq!(embeddings.len(), 1 + 20);
    assert!(embeddings[0].starts_with("path,cls_0,cls_1,"));
    let bytes = std::fs::read(run.join("probe/classifier.safetensors")).unwrap();
    let (clf, _) = cxr_msn::checkpoint::load_classifier(&bytes, &Device::flex()).unwrap();
    let [d, labels] = clf.image_head.fc.weight.val().dims();
    let w: Vec<f32> = clf
        .image_head
        .fc
        .weight
        .val()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    let b: Vec<f32> = match &clf.image_head.fc.bias {
        Some(b) => b.val().into_data().convert::<f32>().try_to_vec().unwrap(),
        None => vec![0.0; labels],
    };
    let mut worst = 0.0f64;
    for (scores, features) in lines[1..].iter().zip(&embeddings[1..]) {
        let scores: Vec<&str> = scores.split(',').collect();
        let features: Vec<&str> = features.split(',').collect();
        assert_eq!(scores[0], features[0], "the rows name the same file");
        let e: Vec<f64> = features[1..].iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(e.len(), d);
        for (l, wrote) in scores[1..=labels].iter().enumerate() {
            let logit = b[l] as f64 + (0..d).map(|i| e[i] * w[i * labels + l] as f64).sum::<f64>();
            let p = 1.0 / (1.0 + (-logit).exp());
            worst = worst.max((p - wrote.parse::<f64>().unwrap()).abs());
        }
    }
    assert!(
        worst < 1e-5,
        "scores from the written embeddings differ by {worst}"
    );

    // Fine-tuning end to end writes its metrics and a classifier.
    let text = Command::new(binary())
        .args([
            "finetune",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--bootstrap",
            "20",
            "--data",
        ])
        .arg(dir.join("data/manifest.csv"))
        .arg("--checkpoint")
        .arg(run.join("checkpoint.safetensors"))
        .arg("--out")
        .arg(run.join("finetune"))
        .succeeds();
    assert!(
        text.contains("epoch 1/1: validation macro AUROC")
            && text.contains("test split:")
            && text.contains("image+ehr"),
        "{text}"
    );
    let file = std::fs::read(run.join("finetune/classifier.safetensors")).unwrap();
    assert!(cxr_msn_web::describe_model(&file).is_ok());

    // Export: operating points chosen on the validation split, stored in the model file.
    Command::new(binary())
        .args(["export", "--data"])
        .arg(dir.join("data/manifest.csv"))
        .arg("--model")
        .arg(run.join("probe/classifier.safetensors"))
        .arg("--out")
        .arg(run.join("web.safetensors"))
        .succeeds();
    let web = std::fs::read(run.join("web.safetensors")).unwrap();
    let meta = cxr_msn::checkpoint::read_meta(&web).unwrap();
    assert_eq!(meta.operating_points.len(), 14);
    assert!(
        meta.operating_points
            .iter()
            .all(|t| (0.0..=1.0).contains(t))
    );

    // The f16 export is about half the size, loads through the model crate (as the browser
    // loads it) and scores a real X-ray within half precision of the f32 file.
    let half = run.join("web-f16.safetensors");
    Command::new(binary())
        .args(["export", "--f16", "--data"])
        .arg(dir.join("data/manifest.csv"))
        .arg("--model")
        .arg(run.join("probe/classifier.safetensors"))
        .arg("--out")
        .arg(&half)
        .succeeds();
    let f16 = std::fs::read(&half).unwrap();
    assert!(
        f16.len() * 10 < web.len() * 6,
        "{} vs {} bytes",
        f16.len(),
        web.len()
    );
    let xray = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/xray/person1951_bacteria_4882.jpeg");
    let decoded =
        cxr_msn::decode::decode(&std::fs::read(xray).unwrap(), &DecodeLimits::default()).unwrap();
    let view = cxr_msn::views::eval_view(&decoded.image);
    let device = Device::flex();
    let mut probs = Vec::new();
    for bytes in [&web, &f16] {
        let (model, meta) = cxr_msn::checkpoint::load_classifier(bytes, &device).unwrap();
        let images = cxr_msn::preprocess::BatchData::pack(&[&view], &meta.normalization)
            .unwrap()
            .to_tensor(&device);
        let out = model.forward(images, None, false).unwrap();
        probs.push(out.image_probs.into_data().try_to_vec::<f32>().unwrap());
    }
    assert_eq!(probs[0].len(), 14);
    assert!(probs[0].iter().all(|p| (0.0..=1.0).contains(p)));
    for (a, b) in probs[0].iter().zip(&probs[1]) {
        assert!((a - b).abs() < 1e-2, "f32 {a} vs f16 {b}");
    }

    // Embedding map and cluster quality of the pretrained encoder.
    Command::new(binary())
        .args(["embed", "--split", "all", "--data"])
        .arg(dir.join("data/manifest.csv"))
        .arg("--model")
        .arg(run.join("checkpoint.safetensors"))
        .arg("--out")
        .arg(run.join("embed"))
        .succeeds();
    let map = std::fs::read_to_string(run.join("embed/embedding_map.csv")).unwrap();
    assert_eq!(map.lines().count(), 1 + 20);
    let clusters: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("embed/clusters.json")).unwrap())
            .unwrap();
    let sex = clusters["ehr:sex"].as_f64();
    assert!(sex.is_none_or(|s| (-1.0..=1.0).contains(&s)));

    learn_mode_files_agree_with_the_pretraining(&dir, &run);

    // A different configuration in the same folder is refused.
    let out = Command::new(binary())
        .args([
            "pretrain",
            "--ehr",
            "age",
            "--depth",
            "1",
            "--batch-size",
            "4",
            "--data",
        ])
        .arg(dir.join("data/manifest.csv"))
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another configuration"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs a future that never waits (the CPU backend's reads are ready at once).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the CPU backend's futures complete at once"),
    }
}

/// The files of the page's learn mode: an export with the pretraining's projection head and
/// prototypes (refused for a fine-tuned encoder), whose projections and assignments the
/// page's engine computes as the pretraining model does, and an embedding map whose
/// signature and coordinates the engine reproduces.
fn learn_mode_files_agree_with_the_pretraining(dir: &Path, run: &Path) {
    let manifest = dir.join("data/manifest.csv");
    let checkpoint = run.join("checkpoint.safetensors");
    let learn = run.join("web-learn.safetensors");
    let arg = |p: &Path| p.as_os_str().to_os_string();
    run_ok([
        "export".into(),
        "--data".into(),
        arg(&manifest),
        "--model".into(),
        arg(&run.join("probe/classifier.safetensors")),
        "--prototypes-from".into(),
        arg(&checkpoint),
        "--out".into(),
        arg(&learn),
    ]);
    let bytes = std::fs::read(&learn).unwrap();
    assert!(
        cxr_msn::checkpoint::read_meta(&bytes)
            .unwrap()
            .prototype_head
    );
    let device = Device::flex();
    let engine = Engine::load(&bytes, device.clone()).unwrap();
    let info = engine.learn_info();
    assert!(info.available && info.reason.is_none(), "{info:?}");

    // The engine's projection is the pretraining's target branch, recomputed here.
    let (msn, pre_meta) =
        cxr_msn::checkpoint::load_pretraining(&std::fs::read(&checkpoint).unwrap(), &device)
            .unwrap();
    let xray = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/xray/person1951_bacteria_4882.jpeg"),
    )
    .unwrap();
    let prepared = prepare(&xray).unwrap();
    let m = ready(engine.masked(&prepared, 0.0, 1)).unwrap();
    assert_eq!(m.kept.len(), 196);
    assert!(m.cosine > 0.99999, "no mask, same [CLS]: {}", m.cosine);
    let images = cxr_msn::preprocess::BatchData::pack(&[&prepared.view], &pre_meta.normalization)
        .unwrap()
        .to_tensor(&device);
    let z: Vec<f32> = msn
        .target_head
        .forward(msn.target_vit.forward(images, None))
        .into_data()
        .try_to_vec()
        .unwrap();
    let page_z = &m.z.as_ref().expect("projections")[0];
    let gap = z
        .iter()
        .zip(page_z)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(gap < 1e-4, "projection differs by {gap}");

    // Its assignment is a softmax over cosines with the pretraining's prototypes, by hand.
    let protos: Vec<f32> = msn.prototypes.val().into_data().try_to_vec().unwrap();
    let d = z.len();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let tau = info.temperature;
    let logits: Vec<f64> = protos
        .chunks(d)
        .map(|q| {
            let dot: f64 = q.iter().zip(&z).map(|(a, b)| *a as f64 * *b as f64).sum();
            dot / (norm(q) * norm(&z)) / tau
        })
        .collect();
    let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|l| (l - top).exp()).sum();
    let assigned = engine
        .assign(std::slice::from_ref(page_z), tau, info.sharpen_temperature)
        .unwrap();
    for (k, l) in logits.iter().enumerate() {
        let p = (l - top).exp() / sum;
        assert!(
            (assigned.probs[0][k] as f64 - p).abs() < 1e-5,
            "prototype {k}"
        );
    }
    let half = ready(engine.masked(&prepared, 0.5, 7)).unwrap();
    assert_eq!(half.kept.len(), 98, "floor(196 x 0.5) patches kept");

    // A fine-tuned encoder is not the pretraining's: its export with prototypes is refused.
    let out = Command::new(binary())
        .arg("export")
        .arg("--data")
        .arg(&manifest)
        .arg("--model")
        .arg(run.join("finetune/classifier.safetensors"))
        .arg("--prototypes-from")
        .arg(&checkpoint)
        .arg("--out")
        .arg(run.join("refused.safetensors"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not this pretraining's"),
        "{err}"
    );
    assert!(!run.join("refused.safetensors").exists());

    // The page's map: the engine's signature matches it, and the engine's [CLS] of a mapped
    // image lands where `embed` put it.
    let map: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("embed/embedding_map.json")).unwrap(),
    )
    .unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let signature = ready(engine.signature()).unwrap();
    let gap = floats(&map["signature"])
        .iter()
        .zip(&signature)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(gap < 1e-4, "signature differs by {gap}");
    assert_eq!(map["points"].as_array().unwrap().len(), 20);
    let csv = std::fs::read_to_string(run.join("embed/embedding_map.csv")).unwrap();
    let first = csv.lines().nth(1).unwrap();
    let path = Path::new(first.split(',').next().unwrap());
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        manifest.parent().unwrap().join(path)
    };
    let cls = ready(engine.masked(&prepare(&std::fs::read(&path).unwrap()).unwrap(), 0.0, 0))
        .unwrap()
        .cls_full;
    let mean = floats(&map["mean"]);
    for (axis, key) in ["x", "y"].iter().enumerate() {
        let component = floats(&map["components"][axis]);
        let at: f64 = cls
            .iter()
            .zip(&mean)
            .zip(&component)
            .map(|((v, m), c)| (*v as f64 - *m as f64) * *c as f64)
            .sum();
        let want = map["points"][0][key].as_f64().unwrap();
        assert!((at - want).abs() < 1e-3, "{key}: page {at} vs embed {want}");
    }
}
