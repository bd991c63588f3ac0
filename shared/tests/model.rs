//! Properties of the model that must hold whatever the weights: shapes for both input sizes
//! and both profiles, the loss at initialisation, Sinkhorn balancing, where gradients go,
//! the exact EMA update, token masking, and that training lowers the loss.

mod common;

use burn::module::Param;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use common::{assert_close, values};
use cxr_msn::classifier::Classifier;
use cxr_msn::config::{EhrConfig, MsnConfig, Profile, VitConfig, VitPreset};
use cxr_msn::ehr::FeatureSet;
use cxr_msn::loss::sinkhorn;
use cxr_msn::masking::{TokenMask, keep_count};
use cxr_msn::msn::{AnchorGroup, MsnBatch, MultimodalMsn};
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;

/// A ViT small enough for many forward/backward passes on a CPU, same structure.
fn mini(profile: Profile, ehr: Option<&str>) -> MsnConfig {
    let mut c = MsnConfig::for_profile(profile, VitPreset::Tiny);
    c.vit = VitConfig {
        dim: 48,
        depth: 2,
        heads: 6,
        ..c.vit
    };
    c.head.d_in = 48;
    if profile == Profile::Paper {
        c.head.hidden = 192;
        c.head.d_out = 48;
    } else {
        c.head.hidden = 128;
        c.head.d_out = 64;
    }
    c.num_prototypes = 64;
    c.views.focal_views = 2;
    c.ehr = ehr.map(|name| EhrConfig::new(FeatureSet::from_name(name).unwrap()));
    c
}

fn random(shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn batch(config: &MsnConfig, b: usize, device: &Device) -> MsnBatch {
    let c = config.vit.channels;
    let (l, f) = (config.views.large_size, config.views.focal_size);
    MsnBatch {
        target: random([b, c, l, l], device).into(),
        anchors: vec![
            AnchorGroup {
                images: random([b, c, l, l], device).into(),
            },
            AnchorGroup {
                images: random([config.views.focal_views * b, c, f, f], device).into(),
            },
        ],
        ehr: config.ehr.as_ref().map(|e| {
            Tensor::random(
                [b, e.feature_set.width()],
                Distribution::Uniform(0.0, 1.0),
                device,
            )
        }),
    }
}

fn scalar(t: Tensor<1>) -> f32 {
    values(t)[0]
}

#[test]
fn every_module_has_the_documented_shapes_for_both_sizes_and_both_profiles() {
    let device = Device::flex();
    device.seed(1);
    for profile in [Profile::Paper, Profile::Msn] {
        // The real Tiny preset: D = 192, 6 heads, K = 1024.
        let mut config = MsnConfig::for_profile(profile, VitPreset::Tiny)
            .with_ehr(FeatureSet::from_name("all-age5").unwrap());
        config.views.focal_views = 2;
        let model = config.init(&device).unwrap();
        let (b, d) = (2, 192);
        let d_out = config.head.d_out;
        assert_eq!(d_out, if profile == Profile::Paper { 192 } else { 256 });

        for (size, n) in [(224, 196), (96, 36)] {
            let x = random([b, 3, size, size], &device);
            let out = model.anchor_vit.forward_detailed(x.clone(), None, true);
            assert_eq!(out.cls.dims(), [b, d]);
            assert_eq!(out.tokens.dims(), [b, 1 + n, d]);
            assert_eq!(out.attention.len(), 12);
            assert_eq!(out.attention[0].dims(), [b, 6, 1 + n, 1 + n]);
            let mask = TokenMask::sample(b, n, 0.15, &mut StdRng::seed_from_u64(3));
            let k = keep_count(n, 0.15);
            let masked = model
                .anchor_vit
                .forward_detailed(x, Some(mask.to_tensor(&device)), false);
            assert_eq!(
                masked.tokens.dims(),
                [b, 1 + k, d],
                "[CLS] + {k} kept patches"
            );
            assert!(masked.attention.is_empty());
        }

        let head_out = model.anchor_head.forward(Tensor::zeros([5, d], &device));
        assert_eq!(head_out.dims(), [5, d_out]);
        let fusion = model.ehr.as_ref().unwrap();
        assert_eq!(fusion.ehr_in(), 28);
        let fused = fusion.forward(
            Tensor::zeros([6, d], &device),
            Tensor::zeros([2, 28], &device),
        );
        assert_eq!(fused.dims(), [6, d]);

        let batch = batch(&config, b, &device);
        let masks = model.sample_masks(&batch, &config, &mut StdRng::seed_from_u64(4));
        let masked: Vec<bool> = masks.iter().map(Option::is_some).collect();
        match profile {
            Profile::Paper => assert_eq!(masked, [true, true], "paper masks every anchor"),
            Profile::Msn => assert_eq!(masked, [true, false], "msn masks the 224 anchor only"),
        }
        let forward = model.forward_pretrain(batch, &masks, &config);
        let m = 1 + config.views.focal_views;
        assert_eq!(forward.anchors.dims(), [m * b, d_out]);
        assert_eq!(forward.targets.dims(), [b, d_out]);
        let loss = model.loss(&forward, &config);
        for part in [&loss.total, &loss.ce, &loss.me_max, &loss.entropy] {
            assert_eq!(part.dims(), [1]);
            assert!(scalar(part.clone()).is_finite());
        }
        assert_eq!(loss.target_probs.dims(), [b, 1024]);
        assert_eq!(model.prototypes.val().dims(), [1024, d_out]);

        let ehr = EhrConfig::new(FeatureSet::from_name("all-age5").unwrap());
        let clf = Classifier::new(model.encoder(), 14, Some((&ehr, None)), &device);
        let out = clf
            .forward(
                random([b, 3, 224, 224], &device),
                Some(Tensor::zeros([b, 28], &device)),
                false,
            )
            .unwrap();
        assert_eq!(out.embedding.dims(), [b, d]);
        assert_eq!(out.image_probs.dims(), [b, 14]);
        assert_eq!(out.fused_probs.unwrap().dims(), [b, 14]);
    }
}

#[test]
fn at_initialisation_ce_is_near_log_k_me_max_near_zero_and_sinkhorn_balances() {
    let device = Device::flex().autodiff();
    device.seed(5);
    let mut config = MsnConfig::paper(VitPreset::Tiny);
    config.views.focal_views = 2;
    let model = config.init(&device).unwrap();
    let b = 16;
    let batch = batch(&config, b, &device);
    let masks = model.sample_masks(&batch, &config, &mut StdRng::seed_from_u64(6));
    let forward = model.forward_pretrain(batch, &masks, &config);
    let loss = model.loss(&forward, &config);
    let log_k = (1024f32).ln();
    let ce = scalar(loss.ce.clone());
    let me_max = scalar(loss.me_max.clone());
    assert!((ce - log_k).abs() < 0.05 * log_k, "CE {ce} vs ln K {log_k}");
    // me-max is KL(mean assignment || uniform): 0 for a perfectly even use of the
    // prototypes; 48 anchors over 1024 prototypes leave a small sampling excess.
    assert!(
        (0.0..0.1).contains(&me_max),
        "me-max {me_max} (ln K = {log_k})"
    );

    // Sinkhorn on the initial (sharpened, peaked) target assignments: each sample's
    // assignment sums to 1 and each prototype's total moves to B / K. Three iterations
    // (the configured number) take most of the way; run to convergence it is exact.
    let deviation = |p: &Tensor<2>| {
        values(p.clone().sum_dim(0))
            .iter()
            .map(|m| (m - b as f32 / 1024.0).abs())
            .fold(0.0f32, f32::max)
    };
    let p = loss.target_probs;
    assert_close(
        "rows sum to one",
        &values(p.clone().sum_dim(1)),
        &vec![1.0; b],
        1e-5,
    );
    let mut unbalanced_cfg = config.loss.clone();
    unbalanced_cfg.sinkhorn_iterations = 0;
    let unbalanced = cxr_msn::loss::msn_loss(
        forward.anchors.clone(),
        forward.targets.clone(),
        model.prototypes.val(),
        &unbalanced_cfg,
    )
    .target_probs;
    let (before, after3) = (deviation(&unbalanced), deviation(&p));
    assert!(after3 < before / 4.0, "3 iterations: {before} -> {after3}");
    let converged = sinkhorn(unbalanced, 500);
    assert!(
        deviation(&converged) < 1e-4,
        "converged marginals off by {}",
        deviation(&converged)
    );
    assert_close(
        "rows sum to one",
        &values(converged.sum_dim(1)),
        &vec![1.0; b],
        1e-5,
    );
}

#[test]
fn sinkhorn_gives_uniform_prototype_marginals_on_peaked_assignments() {
    let device = Device::flex();
    // Hand-made assignments that all favour prototype 0.
    let (b, k) = (4usize, 3usize);
    let p = Tensor::<2>::from_data(
        TensorData::new(
            vec![
                0.8f32, 0.1, 0.1, 0.7, 0.2, 0.1, 0.6, 0.3, 0.1, 0.9, 0.05, 0.05,
            ],
            [b, k],
        ),
        &device,
    );
    let q = sinkhorn(p, 50);
    let marginals = values(q.clone().sum_dim(0));
    assert_close("marginals", &marginals, &[b as f32 / k as f32; 3], 1e-4);
    assert_close("rows", &values(q.sum_dim(1)), &[1.0; 4], 1e-5);
}

fn grad_norm(param: &Param<Tensor<2>>, grads: &burn::tensor::Gradients) -> Option<f32> {
    param
        .val()
        .grad(grads)
        .map(|g| scalar(g.square().sum()).sqrt())
}

fn grad_norm4(param: &Param<Tensor<4>>, grads: &burn::tensor::Gradients) -> Option<f32> {
    param
        .val()
        .grad(grads)
        .map(|g| scalar(g.square().sum()).sqrt())
}

#[test]
fn gradients_reach_the_anchor_branch_and_ehr_but_never_the_target_or_frozen_prototypes() {
    for profile in [Profile::Paper, Profile::Msn] {
        let device = Device::flex().autodiff();
        device.seed(7);
        let config = mini(profile, Some("demographic"));
        let model = config.init(&device).unwrap();
        let batch = batch(&config, 4, &device);
        let masks = model.sample_masks(&batch, &config, &mut StdRng::seed_from_u64(8));
        let forward = model.forward_pretrain(batch, &masks, &config);
        let grads = model.loss(&forward, &config).total.backward();

        let positive = |name: &str, g: Option<f32>| {
            let g = g.unwrap_or_else(|| panic!("{profile:?}: no gradient reaches {name}"));
            assert!(g > 0.0, "{profile:?}: zero gradient at {name}");
        };
        let a = &model.anchor_vit;
        positive(
            "anchor patch embedding",
            grad_norm4(&a.patch_embed.proj.weight, &grads),
        );
        positive(
            "anchor qkv",
            grad_norm(&a.blocks[0].attn.qkv.weight, &grads),
        );
        positive(
            "anchor fc2 of last block",
            grad_norm(&a.blocks[1].mlp.fc2.weight, &grads),
        );
        positive(
            "anchor head",
            grad_norm(&model.anchor_head.fc1.weight, &grads),
        );
        let fusion = model.ehr.as_ref().unwrap();
        positive("f_ehr", grad_norm(&fusion.f_ehr.weight, &grads));
        positive("g", grad_norm(&fusion.g.weight, &grads));

        let t = &model.target_vit;
        assert_eq!(grad_norm4(&t.patch_embed.proj.weight, &grads), None);
        assert_eq!(grad_norm(&t.blocks[0].attn.qkv.weight, &grads), None);
        assert_eq!(grad_norm(&model.target_head.fc1.weight, &grads), None);
        match profile {
            Profile::Paper => assert_eq!(
                grad_norm(&model.prototypes, &grads),
                None,
                "paper: prototypes are frozen"
            ),
            Profile::Msn => positive("learned prototypes", grad_norm(&model.prototypes, &grads)),
        }
    }
}

#[test]
fn ema_moves_the_target_by_exactly_one_minus_m_of_the_difference() {
    let device = Device::flex();
    device.seed(9);
    let config = mini(Profile::Msn, None);
    let mut model = config.init(&device).unwrap();
    // At initialisation the target equals the anchor.
    assert_close(
        "target == anchor at init",
        &values(model.target_vit.blocks[1].attn.qkv.weight.val()),
        &values(model.anchor_vit.blocks[1].attn.qkv.weight.val()),
        0.0,
    );
    // Move the anchor away, remember both, update with m = 0.9.
    model.anchor_vit = config.vit.init(&device);
    model.anchor_head = config.head.init(&device);
    let before_t = values(model.target_vit.pos_embed.val());
    let before_a = values(model.anchor_vit.pos_embed.val());
    let before_th = values(model.target_head.fc3.weight.val());
    let before_ah = values(model.anchor_head.fc3.weight.val());
    let running = values(model.target_head.bn1.running_var.value());
    model.ema_update(0.9);
    let expect = |t: &[f32], a: &[f32]| -> Vec<f32> {
        t.iter().zip(a).map(|(t, a)| 0.9 * t + 0.1 * a).collect()
    };
    assert_close(
        "EMA of pos_embed",
        &values(model.target_vit.pos_embed.val()),
        &expect(&before_t, &before_a),
        1e-6,
    );
    assert_close(
        "EMA of head fc3",
        &values(model.target_head.fc3.weight.val()),
        &expect(&before_th, &before_ah),
        1e-6,
    );
    assert_close(
        "BN running statistics are not averaged",
        &values(model.target_head.bn1.running_var.value()),
        &running,
        0.0,
    );
    // The anchor is untouched.
    assert_close(
        "anchor unchanged",
        &values(model.anchor_vit.pos_embed.val()),
        &before_a,
        0.0,
    );
}

#[test]
fn masking_keeps_cls_and_the_chosen_patches_only() {
    let device = Device::flex();
    device.seed(11);
    let vit = mini(Profile::Paper, None).vit.init(&device);
    let x = random([2, 3, 224, 224], &device);
    let full = values(vit.forward(x.clone(), None));
    // Keeping every patch (in any order) is the unmasked forward: [CLS] is always there and
    // attention does not depend on token order.
    let all: Vec<Vec<u32>> = vec![(0..196).rev().collect(), (0..196).collect()];
    let keep_all = common::int_tensor(&all, &device);
    assert_close(
        "keep all",
        &values(vit.forward(x.clone(), Some(keep_all))),
        &full,
        1e-5,
    );
    // Dropping patches changes the embedding; different subsets give different embeddings.
    let mask = TokenMask::sample(2, 196, 0.5, &mut StdRng::seed_from_u64(12));
    let masked = values(vit.forward(x.clone(), Some(mask.to_tensor(&device))));
    assert!(masked.iter().zip(&full).any(|(a, b)| (a - b).abs() > 1e-3));
    // The same subset for both samples of identical images gives identical embeddings;
    // per-sample subsets give different ones.
    let same = x.clone().narrow(0, 0, 1).repeat_dim(0, 2);
    let one = mask.keep[0].clone();
    let shared = common::int_tensor(&[one.clone(), one], &device);
    let out = values(vit.forward(same.clone(), Some(shared)));
    assert_close("same subset", &out[..48], &out[48..], 1e-6);
    let out = values(vit.forward(same, Some(mask.to_tensor(&device))));
    assert!(
        out[..48]
            .iter()
            .zip(&out[48..])
            .any(|(a, b)| (a - b).abs() > 1e-4)
    );
}

#[test]
fn vanilla_msn_has_no_ehr_branch_and_batches_are_checked() {
    let device = Device::flex();
    let vanilla = mini(Profile::Paper, None);
    let model = vanilla.init(&device).unwrap();
    assert!(model.ehr.is_none());
    let mut b = batch(&vanilla, 2, &device);
    assert!(model.check_batch(&b).is_ok());
    b.ehr = Some(Tensor::zeros([2, 3], &device));
    let err = model.check_batch(&b).unwrap_err().to_string();
    assert!(err.contains("no EHR branch"), "{err}");

    let multi = mini(Profile::Paper, Some("demographic"));
    let model: MultimodalMsn = multi.init(&device).unwrap();
    let mut b = batch(&multi, 2, &device);
    assert!(model.check_batch(&b).is_ok());
    b.ehr = Some(Tensor::zeros([2, 5], &device));
    let err = model.check_batch(&b).unwrap_err().to_string();
    assert!(err.contains("[2, 3]"), "{err}");
    b.ehr = None;
    assert!(model.check_batch(&b).is_err());
    let mut b = batch(&multi, 2, &device);
    b.anchors[1].images = random([3, 3, 96, 96], &device).into();
    let err = model.check_batch(&b).unwrap_err().to_string();
    assert!(err.contains("multiple"), "{err}");
    let mut b = batch(&multi, 2, &device);
    b.target = random([2, 1, 224, 224], &device).into();
    assert!(model.check_batch(&b).is_err(), "channel count is checked");
}

#[test]
fn a_few_adamw_steps_on_random_data_lower_the_loss() {
    let device = Device::flex().autodiff();
    device.seed(13);
    let config = mini(Profile::Msn, Some("sex"));
    let mut model = config.init(&device).unwrap();
    let data = batch(&config, 8, &device);
    let masks = model.sample_masks(&data, &config, &mut StdRng::seed_from_u64(14));
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut losses = Vec::new();
    for step in 0..12 {
        let forward = model.forward_pretrain(data.clone(), &masks, &config);
        let loss = model.loss(&forward, &config);
        losses.push(scalar(loss.total.clone()));
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        model = optim.step(1e-3, model, grads);
        model.ema_update(config.ema.momentum(step, 12));
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < first - 0.05, "loss did not go down: {losses:?}");
}

#[test]
fn the_image_plus_ehr_head_responds_to_ehr_and_the_image_head_does_not() {
    let device = Device::flex();
    device.seed(15);
    let ehr = EhrConfig::new(FeatureSet::from_name("demographic").unwrap());
    let clf = Classifier::init(&mini(Profile::Paper, None).vit, 14, Some(&ehr), &device);
    let x = random([1, 3, 224, 224], &device);
    let young = Tensor::from_data(TensorData::new(vec![1.0f32, 0.0, 0.1], [1, 3]), &device);
    let old = Tensor::from_data(TensorData::new(vec![0.0f32, 1.0, 0.9], [1, 3]), &device);
    let a = clf.forward(x.clone(), Some(young), false).unwrap();
    let b = clf.forward(x, Some(old), false).unwrap();
    assert_close(
        "image-only scores ignore EHR",
        &values(a.image_probs),
        &values(b.image_probs),
        0.0,
    );
    let (fa, fb) = (
        values(a.fused_probs.unwrap()),
        values(b.fused_probs.unwrap()),
    );
    assert!(fa.iter().zip(&fb).any(|(p, q)| (p - q).abs() > 1e-4));
    assert!(fa.iter().all(|p| (0.0..=1.0).contains(p)));
    // Wrong EHR width is an error, not a panic.
    let err = clf
        .forward(
            random([1, 3, 224, 224], &device),
            Some(Tensor::zeros([1, 4], &device)),
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("EHR"));
}

#[test]
fn a_classifier_from_pretraining_keeps_the_target_encoder_and_the_pretrained_fusion() {
    let device = Device::flex();
    device.seed(16);
    let config = mini(Profile::Paper, Some("sex"));
    let mut model = config.init(&device).unwrap();
    model.anchor_vit = config.vit.init(&device); // make anchor and target differ
    let clf = model.classifier(&config, 14, &device);
    let fusion = model.ehr.as_ref().unwrap();
    let head = clf.fused_head.as_ref().unwrap();
    assert_close(
        "encoder is the EMA target",
        &values(clf.encoder.pos_embed.val()),
        &values(model.target_vit.pos_embed.val()),
        0.0,
    );
    assert_close(
        "pretrained f_ehr",
        &values(head.fusion.f_ehr.weight.val()),
        &values(fusion.f_ehr.weight.val()),
        0.0,
    );
    assert_eq!(clf.image_head.fc.weight.val().dims(), [48, 14]);
}

#[test]
fn cls_attention_maps_cover_the_patch_grid() {
    let device = Device::flex();
    device.seed(17);
    let vit = mini(Profile::Paper, None).vit.init(&device);
    for (size, g) in [(224, 14), (96, 6)] {
        let out = vit.forward_detailed(random([2, 3, size, size], &device), None, true);
        let last = out.attention.last().unwrap().clone();
        let self_attention = values(last.clone().narrow(2, 0, 1).narrow(3, 0, 1).mean_dim(1));
        let map = cxr_msn::vit::cls_attention_map(last);
        assert_eq!(map.dims(), [2, g, g]);
        let sums = values(map.sum_dim(2).sum_dim(1));
        let expected: Vec<f32> = self_attention.iter().map(|a| 1.0 - a).collect();
        assert_close("map mass", &sums, &expected, 1e-5);
    }
}
