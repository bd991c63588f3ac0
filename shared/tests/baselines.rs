//! Parity of the DINO and MAE baselines with an independent PyTorch implementation
//! (tests/reference/make_baseline_fixtures.py): the DINO head (weight-normalised last
//! layer), the DINO loss with its gradient and the centre update at two teacher
//! temperatures, MAE's sin-cos position embedding, its loss with and without per-patch
//! pixel normalisation (with the gradient), and a whole MAE forward through the reference
//! ViT with a masked input. Every comparison is to 1e-5.

mod common;

use burn::tensor::{Device, Tensor};
use common::{Fixture, TOL, assert_close, load_pytorch, small_vit_config, values};
use cxr_msn::config::{DinoConfig, MaeConfig};
use cxr_msn::dino::{DinoHead, dino_loss};
use cxr_msn::mae::{Mae, mae_loss, patchify, sincos_position_embedding};
use cxr_msn::masking::TokenMask;

fn dino_config(fx: &Fixture, key: &str) -> (DinoConfig, f64) {
    let c = fx.f64s(key);
    let cfg = DinoConfig {
        hidden: 32,
        bottleneck: 16,
        out_dim: 64,
        student_temperature: c[0],
        center_momentum: c[2],
        ..DinoConfig::default()
    };
    (cfg, c[1])
}

#[test]
fn dino_head_matches_the_reference() {
    let fx = Fixture::open("baselines.safetensors");
    let device = Device::flex();
    let (cfg, _) = dino_config(&fx, "dino.loss.config");
    let head = load_pytorch(
        DinoHead::new(48, &cfg, &device),
        Fixture::open("dino_head_weights.safetensors").bytes,
    );
    let out = head.forward(fx.tensor("dino.head.input", &device));
    assert_close(
        "dino.head.output",
        &values(out),
        &fx.f32s("dino.head.output"),
        TOL,
    );
}

#[test]
fn dino_loss_gradient_and_centre_match_the_reference_at_two_teacher_temperatures() {
    let fx = Fixture::open("baselines.safetensors");
    let device = Device::flex().autodiff();
    for case in ["dino.loss", "dino.loss2"] {
        let (cfg, teacher_temperature) = dino_config(&fx, &format!("{case}.config"));
        let student: Tensor<2> = fx.tensor("dino.loss.student", &device).require_grad();
        let out = dino_loss(
            student.clone(),
            fx.tensor("dino.loss.teacher", &device),
            fx.tensor("dino.loss.center", &device),
            teacher_temperature,
            &cfg,
        );
        let key = format!("{case}.value");
        assert_close(&key, &values(out.total.clone()), &fx.f32s(&key), TOL);
        let grads = out.total.backward();
        let key = format!("{case}.grad_student");
        let g = student.grad(&grads).expect("the student gets a gradient");
        assert_close(&key, &values(g), &fx.f32s(&key), TOL);
        if case == "dino.loss" {
            assert_close(
                "teacher_probs",
                &values(out.teacher_probs),
                &fx.f32s("dino.loss.teacher_probs"),
                TOL,
            );
            let m = cfg.center_momentum;
            let center: Tensor<2> = fx.tensor("dino.loss.center", &device);
            let new_center = center.mul_scalar(m) + out.batch_center.mul_scalar(1.0 - m);
            assert_close(
                "new_center",
                &values(new_center),
                &fx.f32s("dino.loss.new_center"),
                TOL,
            );
        }
    }
}

#[test]
fn mae_sincos_position_embedding_matches_the_reference() {
    let fx = Fixture::open("baselines.safetensors");
    for grid in [14, 6] {
        let key = format!("mae.pos_embed.grid{grid}");
        assert_close(
            &key,
            &sincos_position_embedding(32, grid),
            &fx.f32s(&key),
            TOL,
        );
    }
}

#[test]
fn mae_loss_and_its_gradient_match_the_reference() {
    let fx = Fixture::open("baselines.safetensors");
    let device = Device::flex().autodiff();
    let target = patchify(fx.images("mae.loss.images", &device), 16);
    let mask: Tensor<2> = fx.tensor("mae.loss.mask", &device);
    let pred: Tensor<3> = fx.tensor("mae.loss.pred", &device).require_grad();
    let loss = mae_loss(pred.clone(), target.clone(), mask.clone(), true);
    assert_close(
        "mae.loss.value",
        &values(loss.clone()),
        &fx.f32s("mae.loss.value"),
        TOL,
    );
    let grads = loss.backward();
    let g = pred.grad(&grads).expect("the prediction gets a gradient");
    assert_close(
        "mae.loss.grad_pred",
        &values(g),
        &fx.f32s("mae.loss.grad_pred"),
        TOL,
    );
    let raw = mae_loss(pred, target, mask, false);
    assert_close(
        "mae.loss.value_raw",
        &values(raw),
        &fx.f32s("mae.loss.value_raw"),
        TOL,
    );
}

#[test]
fn a_whole_mae_forward_through_the_reference_vit_matches_pytorch() {
    let fx = Fixture::open("baselines.safetensors");
    let device = Device::flex();
    let cfg = MaeConfig {
        mask_ratio: 0.6,
        decoder_dim: 32,
        decoder_depth: 2,
        decoder_heads: 4,
        decoder_mlp_ratio: 4,
        norm_pix_loss: true,
    };
    let vit = load_pytorch(
        small_vit_config().init(&device),
        Fixture::open("vit_weights.safetensors").bytes,
    );
    let decoder = load_pytorch(
        cfg.init_decoder(48, 16, 3, &device),
        Fixture::open("mae_decoder_weights.safetensors").bytes,
    );
    let model = Mae {
        encoder: vit,
        decoder,
    };
    let mask = TokenMask {
        n_patches: 36,
        keep: fx.keep_rows("mae.forward.keep"),
    };
    mask.check(2, 36)
        .expect("the reference mask is well formed");
    let out = model.forward_loss(fx.images("mae.forward.images", &device), &mask, true);
    assert_close(
        "mae.forward.pred",
        &values(out.prediction),
        &fx.f32s("mae.forward.pred"),
        TOL,
    );
    assert_close(
        "mae.forward.loss",
        &values(out.loss),
        &fx.f32s("mae.forward.loss"),
        TOL,
    );
}
