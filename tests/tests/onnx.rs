//! `cxr-msn export-onnx` against an independent runtime: the exported graph run by ONNX
//! Runtime (onnxruntime-web's WebAssembly backend in Node, `tests/browser/onnx-run.mjs`) on
//! a real X-ray must give what `cxr-msn predict` gives for the file, and what the model
//! crate gives for a batch of two (the batch size is symbolic in the graph).
//!
//! `scripts/test` installs onnxruntime-web (`tests/browser`, `npm ci`) and sets
//! `CXR_MSN_REQUIRE_ONNX_TEST=1`, so there the test must run; elsewhere it is skipped with a
//! note when Node or the package is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use cxr_msn::checkpoint::{ModelMeta, WeightPrecision, write_model, write_model_as};
use cxr_msn::classifier::Classifier;
use cxr_msn::config::{MsnConfig, VitPreset};
use cxr_msn::decode::{DecodeLimits, decode_downscaled};
use cxr_msn::ehr::{EhrRecord, FeatureSet, Sex};
use cxr_msn::preprocess::BatchData;
use cxr_msn::views::{LOAD_SHORTER_SIDE, eval_view};
use cxr_msn_e2e::{Succeeds, binary};
use rand::{RngExt, SeedableRng, rngs::StdRng};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// False, with a note, when Node or onnxruntime-web is missing (an error where
/// `CXR_MSN_REQUIRE_ONNX_TEST` is set).
fn onnx_runtime_available() -> bool {
    let package = repo().join("tests/browser/node_modules/onnxruntime-web/package.json");
    let node = Command::new("node").arg("--version").output();
    if package.exists() && node.is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var_os("CXR_MSN_REQUIRE_ONNX_TEST").is_none(),
        "Node or {} is missing, but CXR_MSN_REQUIRE_ONNX_TEST is set",
        package.display()
    );
    eprintln!("skipped: needs Node and onnxruntime-web (cd tests/browser && npm ci)");
    false
}

/// Uniform values of variance `var`, drawn from `rng`.
fn noise(rng: &mut StdRng, len: usize, var: f32) -> Vec<f32> {
    let a = (3.0 * var).sqrt();
    (0..len).map(|_| rng.random_range(-a..a)).collect()
}

fn param<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(values, shape),
        &Device::flex(),
    ))
}

/// Weights of unit-variance outputs and biases of a tenth: attention that is far from
/// uniform and heads far from 0.5, so that any operator in the wrong place shows.
fn scramble_linear(layer: &mut Linear, rng: &mut StdRng) {
    let [i, o] = layer.weight.val().dims();
    layer.weight = param(noise(rng, i * o, 1.0 / i as f32), [i, o]);
    layer.bias = Some(param(noise(rng, o, 0.01), [o]));
}

fn scramble_norm(norm: &mut LayerNorm, rng: &mut StdRng) {
    let [d] = norm.gamma.val().dims();
    let gamma = noise(rng, d, 0.04).into_iter().map(|v| 1.0 + v).collect();
    norm.gamma = param(gamma, [d]);
    norm.beta = Some(param(noise(rng, d, 0.01), [d]));
}

/// A classifier of two blocks with the demographic EHR head and three-channel ImageNet
/// normalisation (which the export folds into the patch embedding), every weight drawn.
fn model() -> (Classifier, ModelMeta) {
    let device = Device::flex();
    let mut config = MsnConfig::paper(VitPreset::Tiny)
        .with_ehr(FeatureSet::from_name("demographic").unwrap())
        .with_channels(3);
    config.vit.depth = 2;
    let mut clf = Classifier::init(&config.vit, 3, config.ehr.as_ref(), &device);
    let mut rng = StdRng::seed_from_u64(7);
    let enc = &mut clf.encoder;
    let [d, c, p, q] = enc.patch_embed.proj.weight.val().dims();
    enc.patch_embed.proj.weight = param(
        noise(&mut rng, d * c * p * q, 1.0 / (c * p * q) as f32),
        [d, c, p, q],
    );
    let [_, n, _] = enc.pos_embed.val().dims();
    enc.pos_embed = param(noise(&mut rng, n * d, 0.25), [1, n, d]);
    enc.cls_token = param(noise(&mut rng, d, 0.25), [1, 1, d]);
    for block in &mut enc.blocks {
        scramble_norm(&mut block.norm1, &mut rng);
        scramble_norm(&mut block.norm2, &mut rng);
        for layer in [
            &mut block.attn.qkv,
            &mut block.attn.proj,
            &mut block.mlp.fc1,
            &mut block.mlp.fc2,
        ] {
            scramble_linear(layer, &mut rng);
        }
    }
    scramble_norm(&mut enc.norm, &mut rng);
    scramble_linear(&mut clf.image_head.fc, &mut rng);
    let fused = clf.fused_head.as_mut().unwrap();
    scramble_linear(&mut fused.fusion.f_ehr, &mut rng);
    scramble_linear(&mut fused.fusion.g, &mut rng);
    scramble_linear(&mut fused.fc, &mut rng);
    let labels = vec!["Edema".into(), "Pneumothorax".into(), "No Finding".into()];
    let mut meta = ModelMeta::classifier(config, labels);
    meta.normalization = cxr_msn::config::Normalization::imagenet(3);
    (clf, meta)
}

/// The CSV's rows after the header, each without its path.
fn csv_rows(path: &Path) -> Vec<Vec<f32>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect())
        .collect()
}

/// Largest absolute difference; the slices must be as long.
fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

/// `cxr-msn export-onnx MODEL --out ONNX [extra]`; returns its report.
fn export(model: &Path, onnx: &Path, extra: &[&str]) -> String {
    Command::new(binary())
        .arg("export-onnx")
        .arg(model)
        .arg("--out")
        .arg(onnx)
        .args(extra)
        .succeeds()
}

/// `cxr-msn predict` on one file with EHR from the flags: (the image-only then the image +
/// EHR probabilities, the embedding).
fn predict(model: &Path, image: &Path, dir: &Path) -> (Vec<f32>, Vec<f32>) {
    Command::new(binary())
        .args([
            "predict", "--device", "cpu", "--age", "67", "--sex", "F", "--model",
        ])
        .arg(model)
        .arg("--input")
        .arg(image)
        .arg("--out")
        .arg(dir.join("predictions.csv"))
        .arg("--embeddings")
        .arg(dir.join("embeddings.csv"))
        .succeeds();
    let probs = csv_rows(&dir.join("predictions.csv")).remove(0);
    let embedding = csv_rows(&dir.join("embeddings.csv")).remove(0);
    (probs, embedding)
}

/// ONNX Runtime's outputs for the inputs in `inputs` (tests/browser/onnx-run.mjs): each
/// output's values by name, with its dimensions checked against `dims`.
fn onnx_runtime(onnx: &Path, inputs: &Path, dims: &[(&str, [usize; 2])]) -> Vec<Vec<f32>> {
    let out = Command::new("node")
        .arg(repo().join("tests/browser/onnx-run.mjs"))
        .arg(onnx)
        .arg(inputs)
        .succeeds();
    let ort: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ort["inputNames"], serde_json::json!(["image", "ehr"]));
    dims.iter()
        .map(|(name, want)| {
            let o = &ort["outputs"][name];
            let got: Vec<usize> = o["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(got, want, "{name}");
            o["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// Checks each `(what, difference, tolerance)`.
fn check(cases: &[(&str, f32, f32)]) {
    for &(what, got, tolerance) in cases {
        eprintln!("{what}: largest difference {got:e}");
        assert!(
            got <= tolerance,
            "{what}: largest difference {got} > {tolerance}"
        );
    }
}

/// The first row of ONNX Runtime's `[embedding, image_probs, fused_probs]` against
/// `predict`'s scores (image-only, then image + EHR) and embedding of the same file.
fn check_against_predict(what: &str, outputs: &[Vec<f32>], scores: &[f32], embedding: &[f32]) {
    let [ort_embedding, image, fused] = outputs else {
        panic!("three outputs")
    };
    let labels = scores.len() / 2;
    let d = embedding.len();
    check(&[
        (
            &format!("{what}embedding vs predict"),
            worst(&ort_embedding[..d], embedding),
            2e-5,
        ),
        (
            &format!("{what}image_probs vs predict"),
            worst(&image[..labels], &scores[..labels]),
            2e-6,
        ),
        (
            &format!("{what}fused_probs vs predict"),
            worst(&fused[..labels], &scores[labels..]),
            2e-6,
        ),
    ]);
}

#[test]
fn onnx_runtime_scores_the_exported_model_as_cxr_msn_does() {
    if !onnx_runtime_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("cxr-msn-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (clf, meta) = model();
    let model_path = dir.join("model.safetensors");
    std::fs::write(&model_path, write_model(&clf, &meta).unwrap()).unwrap();
    let onnx = dir.join("model.onnx");
    let report = export(&model_path, &onnx, &[]);
    assert!(
        report.contains("inputs: image [batch, 1, 224, 224], ehr [batch, 3]")
            && report.contains(
                "outputs: embedding [batch, 192], image_probs [batch, 3], fused_probs [batch, 3]"
            ),
        "{report}"
    );
    let xray = repo().join("tests/data/xray/person1951_bacteria_4882.jpeg");
    let (predicted, embedded) = predict(&model_path, &xray, &dir);

    // The graph's inputs as the metadata describes them: the evaluation view's grey plane,
    // and the encoded EHR. A batch of two: the X-ray with `predict`'s EHR, and the X-ray
    // mirrored with other EHR.
    let decoded = decode_downscaled(
        &std::fs::read(&xray).unwrap(),
        &DecodeLimits::default(),
        LOAD_SHORTER_SIDE,
    )
    .unwrap();
    let view = eval_view(&decoded.image);
    let mut mirrored = view.clone();
    for row in mirrored.pixels.chunks_exact_mut(view.width) {
        row.reverse();
    }
    let features = FeatureSet::from_name("demographic").unwrap();
    let ehr_of = |sex, age| {
        features
            .encode(&EhrRecord {
                sex: Some(sex),
                age: Some(age),
                ..EhrRecord::default()
            })
            .unwrap()
    };
    let ehr: Vec<f32> = [ehr_of(Sex::Female, 67.0), ehr_of(Sex::Male, 30.0)].concat();
    let batch = BatchData::pack(&[&view, &mirrored], &meta.normalization).unwrap();
    let inputs = serde_json::json!({
        "image": {"dims": batch.shape, "data": batch.values},
        "ehr": {"dims": [2, 3], "data": ehr},
    });
    let inputs_path = dir.join("inputs.json");
    std::fs::write(&inputs_path, inputs.to_string()).unwrap();
    let outputs = [
        ("embedding", [2, 192]),
        ("image_probs", [2, 3]),
        ("fused_probs", [2, 3]),
    ];
    let ort_outputs = onnx_runtime(&onnx, &inputs_path, &outputs);
    let [embedding, image_probs, fused_probs] = &ort_outputs[..] else {
        panic!("three outputs")
    };

    // The model crate on the same batch.
    let reference = clf
        .forward(
            batch.clone().to_tensor(&Device::flex()),
            Some(Tensor::from_data(
                TensorData::new(ehr, [2, 3]),
                &Device::flex(),
            )),
            false,
        )
        .unwrap();
    let ours_embedding = values(reference.embedding);
    let ours_image = values(reference.image_probs);
    let ours_fused = values(reference.fused_probs.unwrap());

    // The embeddings are of unit scale after the final LayerNorm; the heads' probabilities
    // spread over (0, 1).
    let spread = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max((x - 0.5).abs()));
    assert!(
        spread(image_probs) > 0.1 && spread(fused_probs) > 0.1,
        "{image_probs:?} {fused_probs:?}"
    );
    check_against_predict("", &ort_outputs, &predicted, &embedded);
    check(&[
        (
            "embedding vs the model crate",
            worst(embedding, &ours_embedding),
            2e-5,
        ),
        (
            "image_probs vs the model crate",
            worst(image_probs, &ours_image),
            2e-6,
        ),
        (
            "fused_probs vs the model crate",
            worst(fused_probs, &ours_fused),
            2e-6,
        ),
    ]);
    // The mirrored image and the other EHR score differently: the batch's rows are not
    // one row repeated.
    assert!(worst(&embedding[..192], &embedding[192..]) > 0.1);
    assert!(worst(&fused_probs[..3], &fused_probs[3..]) > 1e-3);

    // Float16 weights: a model file written as `export --f16` writes it, exported with
    // --f16 (lossless then) into about half the file, scores as `predict` scores that file.
    let model16 = dir.join("model-f16.safetensors");
    let bytes16 = write_model_as(&clf, &meta, WeightPrecision::F16).unwrap();
    std::fs::write(&model16, bytes16).unwrap();
    let onnx16 = dir.join("model-f16.onnx");
    assert!(export(&model16, &onnx16, &["--f16"]).contains("float16 weights"));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let ratio = size(&onnx16) / size(&onnx);
    assert!(
        (0.45..0.55).contains(&ratio),
        "float16 file / float32 file = {ratio}"
    );
    let (predicted16, embedded16) = predict(&model16, &xray, &dir);
    let ort16 = onnx_runtime(&onnx16, &inputs_path, &outputs);
    check_against_predict("float16: ", &ort16, &predicted16, &embedded16);
    // ... and differs from the float32 model by the weights' rounding, no more.
    let drift = worst(&ort16[0], embedding);
    assert!(
        drift > 0.0 && drift < 0.05,
        "float16 vs float32 embedding: {drift}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
