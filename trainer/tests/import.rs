//! `cxr-msn import` and `export-torch` against PyTorch: checkpoints written by
//! tests/reference/make_import_fixtures.py in each key layout (real torchvision and timm
//! models, the MSN and Lightning wrappers with those code bases' names), imported here and
//! run through the model crate; the outputs must match what PyTorch computed to 1e-5.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::{ModuleStore, PytorchStore, SafetensorsStore, bridge};
use burn::tensor::{Device, Tensor, TensorData};
use cxr_msn::config::Normalization;
use cxr_msn_trainer::weights::export::{Names, encoder_state_dict};
use cxr_msn_trainer::weights::import::{ImportArgs, Imported, import, report_path, run};
use cxr_msn_trainer::weights::layout::Layout;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name)
}

/// Every tensor of a file, as f32 data, by name.
fn tensors_of(path: &Path) -> BTreeMap<String, TensorData> {
    let all = if path.extension().is_some_and(|e| e == "safetensors") {
        SafetensorsStore::from_file(path)
            .get_all_tensors()
            .unwrap()
            .clone()
    } else {
        PytorchStore::from_file(path)
            .map_indices_contiguous(false)
            .get_all_tensors()
            .unwrap()
            .clone()
    };
    all.iter()
        .map(|(k, t)| (k.clone(), bridge::to_data(t).unwrap()))
        .collect()
}

fn reference() -> BTreeMap<String, TensorData> {
    tensors_of(&fixture("reference.safetensors"))
}

fn args(file: &str) -> ImportArgs {
    ImportArgs {
        checkpoint: fixture(file),
        out: PathBuf::from("unused.safetensors"),
        layout: None,
        profile: None,
        ehr: "none".into(),
        channels: None,
        image_size: 32,
        heads: Some(2),
    }
}

fn tensor<const D: usize>(data: &TensorData) -> Tensor<D> {
    Tensor::from_data(data.clone().convert::<f32>(), &Device::flex())
}

/// Largest absolute difference, after checking the shapes agree.
fn assert_close<const D: usize>(got: Tensor<D>, want: &TensorData, what: &str) {
    let got = got.into_data();
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (
        got.try_to_vec::<f32>().unwrap(),
        want.clone().convert::<f32>().try_to_vec::<f32>().unwrap(),
    );
    let diff = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "{what}: max |diff| {diff}");
}

#[test]
fn the_official_msn_release_imports_both_encoders_heads_and_prototypes() {
    let r = reference();
    let Imported {
        model,
        report,
        meta,
    } = import(&args("msn_deit.pth.tar")).unwrap();
    assert_eq!(report.layout, Layout::Msn);
    assert_eq!(meta.config.profile.name(), "msn");
    assert!(meta.config.head.bias_before_bn);
    let images = tensor::<4>(&r["images"]);
    for (name, vit, head) in [
        ("anchor", &model.anchor_vit, &model.anchor_head),
        ("target", &model.target_vit, &model.target_head),
    ] {
        let cls = vit.forward(images.clone(), None);
        assert_close(cls.clone(), &r[&format!("msn.{name}_cls")], name);
        assert_close(head.forward(cls), &r[&format!("msn.{name}_z")], name);
    }
    assert_close(model.prototypes.val(), &r["msn.prototypes"], "prototypes");
    assert!(report.initialised.is_empty(), "{:?}", report.initialised);
    assert!(
        report
            .skipped
            .iter()
            .any(|(n, why)| n.starts_with("opt.state.") && why == "optimiser state"),
        "{report}"
    );
    assert!(
        report
            .skipped
            .iter()
            .all(|(n, _)| n.starts_with("opt.") || n.ends_with("num_batches_tracked")),
        "{report}"
    );
}

#[test]
fn the_authors_lightning_checkpoint_imports_with_its_ehr_layers() {
    let r = reference();
    let mut a = args("cxr_ehr_msn.ckpt");
    a.ehr = "demographic".into();
    let Imported {
        model,
        report,
        meta,
    } = import(&a).unwrap();
    assert_eq!(report.layout, Layout::Lightning);
    assert!(!meta.config.head.bias_before_bn);
    assert_eq!(meta.config.num_prototypes, 12);
    let images = tensor::<4>(&r["images"]);
    let target = model.target_vit.forward(images.clone(), None);
    assert_close(target.clone(), &r["lightning.target_cls"], "target [CLS]");
    assert_close(
        model.target_head.forward(target),
        &r["lightning.target_z"],
        "target z",
    );
    let anchor = model.anchor_vit.forward(images, None);
    assert_close(anchor.clone(), &r["lightning.anchor_cls"], "anchor [CLS]");
    let fused = model
        .ehr
        .as_ref()
        .expect("EHR layers kept")
        .forward(anchor, tensor::<2>(&r["lightning.ehr"]));
    assert_close(
        model.anchor_head.forward(fused),
        &r["lightning.anchor_z"],
        "anchor z with EHR",
    );
    assert_close(
        model.prototypes.val(),
        &r["lightning.prototypes"],
        "prototypes",
    );
    assert!(report.initialised.is_empty(), "{:?}", report.initialised);
    let why = |name: &str| {
        report
            .skipped
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| w.clone())
    };
    assert_eq!(
        why("state_dict.backbone.heads.head.weight").as_deref(),
        Some("the source task's classifier")
    );

    // Without a feature set the EHR layers are skipped, with the reason.
    let report = import(&args("cxr_ehr_msn.ckpt")).unwrap().report;
    assert!(
        report
            .skipped
            .iter()
            .any(|(n, w)| n == "state_dict.f_ehr.weight" && w.contains("--ehr")),
        "{report}"
    );
    // A feature set of another width is refused, naming the width to use.
    let mut wrong = args("cxr_ehr_msn.ckpt");
    wrong.ehr = "all".into();
    let err = format!("{:#}", import(&wrong).unwrap_err());
    assert!(err.contains("width 3") && err.contains("13"), "{err}");
}

#[test]
fn a_torchvision_vit_fills_both_branches_and_folds_to_grey_at_another_size() {
    let r = reference();
    let Imported { model, report, .. } = import(&args("torchvision_vit.pth")).unwrap();
    assert_eq!(report.layout, Layout::Torchvision);
    let images = tensor::<4>(&r["images"]);
    for vit in [&model.anchor_vit, &model.target_vit] {
        assert_close(
            vit.forward(images.clone(), None),
            &r["torchvision.cls"],
            "cls",
        );
    }
    // The head and the prototypes are not in a plain ViT: initialised and reported.
    assert!(report.initialised.iter().any(|p| p == "prototypes"));
    assert!(
        report
            .initialised
            .iter()
            .any(|p| p.starts_with("anchor_head."))
    );

    // Grey, 48 px: the fold and the bicubic grid resize against PyTorch's 3-channel model.
    let mut grey = args("torchvision_vit.pth");
    grey.channels = Some(1);
    grey.image_size = 48;
    let Imported {
        model,
        report,
        meta,
    } = import(&grey).unwrap();
    assert_eq!(meta.config.vit.channels, 1);
    assert_eq!(meta.normalization, Normalization::imagenet(1));
    let n = &meta.normalization;
    let x = tensor::<4>(&r["torchvision.grey48"])
        .sub_scalar(n.mean[0])
        .div_scalar(n.std[0]);
    assert_close(
        model.target_vit.forward(x, None),
        &r["torchvision.grey48_cls"],
        "grey 48 px [CLS]",
    );
    let notes: Vec<&str> = report.loaded.iter().map(|l| l.note.as_str()).collect();
    assert!(
        notes.iter().any(|n| n.contains("resized to 6x6")),
        "{report}"
    );
    assert!(notes.iter().any(|n| n.contains("folded")), "{report}");
}

#[test]
fn a_timm_safetensors_file_imports_and_its_classifier_is_skipped() {
    let r = reference();
    let Imported { model, report, .. } = import(&args("timm_vit.safetensors")).unwrap();
    assert_eq!(report.layout, Layout::Timm);
    assert_close(
        model.target_vit.forward(tensor::<4>(&r["images"]), None),
        &r["timm.cls"],
        "cls",
    );
    let skipped: Vec<(&str, &str)> = report
        .skipped
        .iter()
        .map(|(n, w)| (n.as_str(), w.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("head.bias", "the source task's classifier"),
            ("head.weight", "the source task's classifier")
        ],
        "{report}"
    );
}

#[test]
fn export_writes_back_exactly_the_torchvision_and_timm_state_dicts() {
    for (file, names, classifier) in [
        ("torchvision_vit.pth", Names::Torchvision, "heads."),
        ("timm_vit.safetensors", Names::Timm, "head."),
    ] {
        let model = import(&args(file)).unwrap().model;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("encoder.safetensors");
        std::fs::write(&out, encoder_state_dict(&model.target_vit, names).unwrap()).unwrap();
        let ours = tensors_of(&out);
        let theirs: BTreeMap<String, TensorData> = tensors_of(&fixture(file))
            .into_iter()
            .filter(|(k, _)| !k.starts_with(classifier))
            .collect();
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{file}"
        );
        for (k, want) in &theirs {
            assert_eq!(ours[k].shape(), want.shape(), "{file}: {k}");
            assert_eq!(
                ours[k].try_to_vec::<f32>().unwrap(),
                want.try_to_vec::<f32>().unwrap(),
                "{file}: {k}"
            );
        }
    }
}

#[test]
fn problems_are_named() {
    // A width with no standard head count.
    let mut a = args("timm_vit.safetensors");
    a.heads = None;
    let err = format!("{:#}", import(&a).unwrap_err());
    assert!(err.contains("--heads") && err.contains("32"), "{err}");
    // A file of tensors that is no ViT checkpoint.
    let err = format!("{:#}", import(&args("reference.safetensors")).unwrap_err());
    assert!(
        err.contains("reference.safetensors") && err.contains("--layout"),
        "{err}"
    );
    // Heads that do not divide the width.
    let mut a = args("timm_vit.safetensors");
    a.heads = Some(5);
    let err = format!("{:#}", import(&a).unwrap_err());
    assert!(err.contains("heads"), "{err}");
}

#[test]
fn run_writes_a_model_file_that_loads_and_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args("msn_deit.pth.tar");
    a.out = dir.path().join("nested/imported.safetensors");
    let summary = run(&a).unwrap();
    assert!(summary.contains("msn layout"), "{summary}");
    let (model, meta) = cxr_msn_trainer::model_files::pretraining(&a.out, &Device::flex()).unwrap();
    assert_eq!(meta.training["import_layout"], "msn");
    let r = reference();
    assert_close(
        model.encoder().forward(tensor::<4>(&r["images"]), None),
        &r["msn.target_cls"],
        "reloaded target encoder",
    );
    let report = std::fs::read_to_string(report_path(&a.out)).unwrap();
    assert!(
        report.contains("opt.state.0.exp_avg: optimiser state"),
        "{report}"
    );
}
