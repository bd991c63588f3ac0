//! The page's learn mode on the native CPU backend: masks, views, assignments, Sinkhorn and
//! the EHR panel's embeddings, checked against what they must be (counts, seeds, sums,
//! hand recomputations from the returned numbers), on a real X-ray.

mod common;

use burn::tensor::Device;
use common::{ready, xray_file};
use cxr_msn::checkpoint::{ModelMeta, write_model};
use cxr_msn::classifier::Classifier;
use cxr_msn::config::{MsnConfig, VitConfig, VitPreset};
use cxr_msn::ehr::FeatureSet;
use cxr_msn::labels::MIMIC_LABELS;
use cxr_msn::prototype_head::PrototypeHead;
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;
use cxr_msn_web::engine::{EhrInput, Engine, Prepared, prepare};

/// A small multimodal classifier file, with or without the prototype head, its weights
/// drawn from `seed`.
fn model_file(with_prototypes: bool, seed: u64) -> Vec<u8> {
    let device = Device::flex();
    device.seed(seed);
    let mut config =
        MsnConfig::paper(VitPreset::Tiny).with_ehr(FeatureSet::from_name("demographic").unwrap());
    config.vit = VitConfig {
        dim: 48,
        depth: 2,
        heads: 4,
        ..config.vit
    };
    config.head.d_in = 48;
    config.head.hidden = 64;
    config.head.d_out = 32;
    config.num_prototypes = 40;
    config.views.focal_views = 3;
    let ehr = config.ehr.clone().unwrap();
    let msn = config.init(&device).unwrap();
    let mut clf = Classifier::init(&config.vit, 14, Some(&ehr), &device);
    clf.encoder = msn.encoder();
    let mut meta = ModelMeta::classifier(config, MIMIC_LABELS.map(String::from).to_vec());
    if with_prototypes {
        clf.prototype_head = Some(PrototypeHead::from_pretraining(&msn));
        meta.prototype_head = true;
    }
    write_model(&clf, &meta).unwrap()
}

fn xray() -> Prepared {
    prepare(&xray_file()).unwrap()
}

#[test]
fn masks_keep_the_stated_patches_and_a_seed_repeats_them() {
    let engine = Engine::load(&model_file(true, 5), Device::flex()).unwrap();
    let image = xray();
    let none = ready(engine.masked(&image, 0.0, 3)).unwrap();
    assert_eq!((none.grid, none.total, none.kept.len()), (14, 196, 196));
    assert!((none.cosine - 1.0).abs() < 1e-5 && none.cls_full.len() == 48);
    for (ratio, kept) in [(0.15, 166), (0.5, 98), (0.9, 19)] {
        let m = ready(engine.masked(&image, ratio, 3)).unwrap();
        assert_eq!(m.kept.len(), kept, "floor(196 x (1 - {ratio}))");
        assert!(m.kept.windows(2).all(|w| w[0] < w[1]) && m.kept[kept - 1] < 196);
        assert_eq!(
            m.cls_full, none.cls_full,
            "the unmasked [CLS] does not depend on the mask"
        );
        assert!(m.cosine < 1.0, "dropping patches moves [CLS]");
        let z = m.z.unwrap();
        assert_eq!((z.len(), z[0].len()), (2, 32));
    }
    let a = ready(engine.masked(&image, 0.5, 11)).unwrap();
    let b = ready(engine.masked(&image, 0.5, 11)).unwrap();
    let c = ready(engine.masked(&image, 0.5, 12)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.kept, c.kept);
    let err = ready(engine.masked(&image, 0.99, 1)).unwrap_err();
    assert!(err.contains("mask ratio") && err.contains("0.99"), "{err}");
}

#[test]
fn views_are_the_pretraining_draw_of_their_seed() {
    let engine = Engine::load(&model_file(true, 5), Device::flex()).unwrap();
    let image = xray();
    let v = ready(engine.views(&image, 42, 0.15)).unwrap();
    let names: Vec<&str> = v.views.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["target", "anchor", "focal 1", "focal 2", "focal 3"]);
    let sizes: Vec<usize> = v.views.iter().map(|v| v.size).collect();
    assert_eq!(sizes, [224, 224, 96, 96, 96]);
    assert!(v.views[0].kept.is_none(), "the target is never masked");
    assert_eq!(v.views[1].kept.as_ref().unwrap().len(), 166);
    // The paper profile masks every anchor: 36 patches of a 96 px view, floor(36 x 0.85).
    assert_eq!(v.views[2].kept.as_ref().unwrap().len(), 30);
    assert!(v.views.iter().all(|w| w.pixels.len() == w.size * w.size));
    assert_eq!(v.z.as_ref().unwrap().len(), 5);
    // The target is the first crop the model crate's own view sampler draws with the seed,
    // from the image as the trainer loads it.
    let config = &engine.meta().config.views;
    let loaded = cxr_msn::views::into_loaded(image.image.clone());
    let drawn = cxr_msn::views::msn_views(&loaded, config, &mut StdRng::seed_from_u64(42));
    assert_eq!(
        v.views[0].pixels,
        cxr_msn_web::engine::view_pixels(&drawn.target)
    );
    assert_eq!(ready(engine.views(&image, 42, 0.15)).unwrap(), v);
    assert_ne!(
        ready(engine.views(&image, 43, 0.15)).unwrap().views[0].pixels,
        v.views[0].pixels
    );
}

#[test]
fn assignments_and_sinkhorn_obey_their_definitions() {
    let engine = Engine::load(&model_file(true, 5), Device::flex()).unwrap();
    let image = xray();
    let z = ready(engine.views(&image, 1, 0.15)).unwrap().z.unwrap();
    let a = engine.assign(&z, 0.1, 0.25).unwrap();
    assert_eq!(
        (a.probs.len(), a.probs[0].len(), a.target.len()),
        (5, 40, 40)
    );
    for (row, p) in a.probs.iter().enumerate() {
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        // Cross-entropy and entropy recomputed from the returned probabilities.
        let ce: f64 = -a
            .target
            .iter()
            .zip(p)
            .map(|(t, q)| *t as f64 * (*q as f64).ln())
            .sum::<f64>();
        assert!(
            (a.ce[row] as f64 - ce).abs() < 1e-3,
            "row {row}: {} vs {ce}",
            a.ce[row]
        );
        let h: f64 = -p.iter().map(|q| *q as f64 * (*q as f64).ln()).sum::<f64>();
        assert!((a.entropy[row] as f64 - h).abs() < 1e-3);
        let best = a.top[row][0];
        assert!(p.iter().all(|q| *q <= best.1) && p[best.0] == best.1);
        assert_eq!(a.top[row].len(), 5);
    }
    // Sharpening concentrates the target: its entropy is below the unsharpened row 0's.
    let h_target: f64 = -a
        .target
        .iter()
        .map(|q| *q as f64 * (*q as f64).max(1e-30).ln())
        .sum::<f64>();
    assert!(h_target < a.entropy[0] as f64);
    // A lower temperature gives a peakier assignment.
    let cold = engine.assign(&z, 0.02, 0.25).unwrap();
    assert!(cold.top[0][0].1 >= a.top[0][0].1);

    // Sinkhorn: rows stay distributions, columns move towards B / K each.
    let s = engine.balance(&z, 0.1, 0.25, 50).unwrap();
    assert_eq!((s.rows, s.mass_after.len()), (5, 40));
    for row in &s.after {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
    let spread = |m: &[f32]| {
        m.iter().copied().fold(f32::MIN, f32::max) - m.iter().copied().fold(f32::MAX, f32::min)
    };
    assert!(
        spread(&s.mass_after) < 1e-3 && spread(&s.mass_before) > spread(&s.mass_after),
        "{:?}",
        s.mass_after
    );
    assert!((s.mass_after[0] - 5.0 / 40.0).abs() < 1e-3);

    // Bad inputs get reasons.
    assert!(
        engine
            .assign(&z, 0.0, 0.25)
            .unwrap_err()
            .contains("positive")
    );
    assert!(
        engine
            .balance(&z, 0.1, 0.25, 1000)
            .unwrap_err()
            .contains("at most")
    );
    assert!(
        engine
            .assign(&[vec![1.0; 7]], 0.1, 0.25)
            .unwrap_err()
            .contains("7 values")
    );
}

#[test]
fn the_ehr_moves_the_fused_embedding_and_its_scores_not_the_image_ones() {
    let engine = Engine::load(&model_file(true, 5), Device::flex()).unwrap();
    let image = xray();
    let ehr = |age: f32| EhrInput {
        sex: Some("F".into()),
        age: Some(age),
        ..EhrInput::default()
    };
    let young = ready(engine.explain(&image, &ehr(4.0))).unwrap();
    let old = ready(engine.explain(&image, &ehr(80.0))).unwrap();
    assert_eq!(young.image, old.image);
    assert_eq!(young.cls, old.cls);
    assert_ne!(young.fused, old.fused);
    assert_ne!(young.image_ehr, old.image_ehr);
    assert_ne!(young.z_fused, old.z_fused);
    assert!(young.cosine.unwrap() < 1.0);
    // The scores are the page's predictions.
    let p = ready(engine.predict(&image, &ehr(4.0))).unwrap();
    assert_eq!((p.image, p.image_ehr), (young.image, young.image_ehr));
    // Without the EHR there is no fused embedding, and the reason is given.
    let none = ready(engine.explain(&image, &EhrInput::default())).unwrap();
    assert!(none.fused.is_none() && none.image_ehr_missing.is_some());
}

#[test]
fn a_file_without_prototypes_says_why_and_still_masks() {
    let bytes = model_file(false, 5);
    let engine = Engine::load(&bytes, Device::flex()).unwrap();
    let info = engine.learn_info();
    assert!(!info.available);
    assert!(info.reason.unwrap().contains("--prototypes-from"));
    let m = ready(engine.masked(&xray(), 0.5, 1)).unwrap();
    assert!(m.z.is_none() && m.kept.len() == 98);
    assert!(
        engine
            .assign(&[vec![0.0; 32]], 0.1, 0.25)
            .unwrap_err()
            .contains("no prototypes")
    );
    // The signature identifies the encoder: the same file gives the same one, another
    // encoder another one.
    let signature = ready(engine.signature()).unwrap();
    assert_eq!(signature.len(), 48);
    let again = Engine::load(&bytes, Device::flex()).unwrap();
    assert_eq!(ready(again.signature()).unwrap(), signature);
    let other = Engine::load(&model_file(false, 6), Device::flex()).unwrap();
    assert_ne!(ready(other.signature()).unwrap(), signature);
}
