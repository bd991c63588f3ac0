//! Parity with an independent PyTorch implementation (tests/reference/make_fixtures.py):
//! the MSN loss and its gradients, Sinkhorn, the bicubic position-grid resize, the ViT at
//! 224 and 96 px with and without masking (plus attention weights), the projection head in
//! both layouts and both BatchNorm modes, and one whole multimodal pretraining forward.
//! Every comparison is to 1e-5.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use common::{
    Fixture, TOL, assert_close, int_tensor, load_pytorch, merge, small_vit_config, values,
};
use cxr_msn::config::{EhrConfig, HeadConfig, LossConfig, MsnConfig, VitPreset};
use cxr_msn::ehr::FeatureSet;
use cxr_msn::loss::{msn_loss, sinkhorn};
use cxr_msn::masking::TokenMask;
use cxr_msn::msn::{AnchorGroup, MsnBatch};
use cxr_msn::vit::{InOrder, VisionTransformer, resize_position_grid};

fn reference_vit(device: &Device) -> VisionTransformer {
    let weights = Fixture::open("vit_weights.safetensors");
    load_pytorch(small_vit_config().init(device), weights.bytes)
}

#[test]
fn msn_loss_and_its_gradients_match_the_reference() {
    let fx = Fixture::open("loss.safetensors");
    let device = Device::flex().autodiff();
    for case in ["default", "custom", "no_sinkhorn"] {
        let c = fx.f64s(&format!("{case}.config"));
        let cfg = LossConfig {
            temperature: c[0],
            sharpen_temperature: c[1],
            sinkhorn_iterations: c[2] as usize,
            me_max_weight: c[3],
            entropy_weight: c[4],
        };
        let anchors: Tensor<2> = fx.tensor("anchors", &device).require_grad();
        let prototypes: Tensor<2> = fx.tensor("prototypes", &device).require_grad();
        let targets: Tensor<2> = fx.tensor("targets", &device);
        let out = msn_loss(anchors.clone(), targets, prototypes.clone(), &cfg);
        for (part, value) in [
            ("total", out.total.clone()),
            ("ce", out.ce.clone()),
            ("me_max", out.me_max.clone()),
            ("entropy", out.entropy.clone()),
        ] {
            let key = format!("{case}.{part}");
            assert_close(&key, &values(value), &fx.f32s(&key), TOL);
        }
        let key = format!("{case}.target_probs");
        assert_close(&key, &values(out.target_probs.clone()), &fx.f32s(&key), TOL);

        let grads = out.total.backward();
        let key = format!("{case}.grad_anchors");
        let g = anchors.grad(&grads).expect("anchors get a gradient");
        assert_close(&key, &values(g), &fx.f32s(&key), TOL);
        let key = format!("{case}.grad_prototypes");
        let g = prototypes.grad(&grads).expect("prototypes get a gradient");
        assert_close(&key, &values(g), &fx.f32s(&key), TOL);
    }
}

#[test]
fn sinkhorn_matches_the_reference() {
    let fx = Fixture::open("loss.safetensors");
    let device = Device::flex();
    let p: Tensor<2> = fx.tensor("sinkhorn.input", &device);
    for iters in [3, 20] {
        let key = format!("sinkhorn.output{iters}");
        assert_close(
            &key,
            &values(sinkhorn(p.clone(), iters)),
            &fx.f32s(&key),
            TOL,
        );
    }
}

#[test]
fn bicubic_position_grid_resize_matches_pytorch() {
    let fx = Fixture::open("pos_resize.safetensors");
    let device = Device::flex();
    let pos: Tensor<3> = fx.tensor("pos", &device);
    for grid in [6, 7, 16] {
        let key = format!("resized{grid}");
        let out = resize_position_grid(pos.clone(), grid);
        assert_eq!(out.dims(), [1, 1 + grid * grid, 8]);
        assert_close(&key, &values(out), &fx.f32s(&key), TOL);
    }
    // The learned grid itself is returned untouched.
    assert_close(
        "resized14",
        &values(resize_position_grid(pos.clone(), 14)),
        &values(pos),
        0.0,
    );
}

#[test]
fn vit_forward_matches_pytorch_at_224_and_96_px_with_and_without_masking() {
    let io = Fixture::open("vit_io.safetensors");
    let device = Device::flex();
    let vit = reference_vit(&device);
    let x224 = io.images("images224", &device);
    let x96 = io.images("images96", &device);

    let out = vit.forward_detailed(x224.clone(), None, true);
    assert_close("cls224", &values(out.cls), &io.f32s("cls224"), TOL);
    assert_eq!(out.attention.len(), 2, "one attention map per block");
    let last = out.attention.last().unwrap().clone();
    assert_eq!(last.dims(), [2, 6, 197, 197]);
    let cls_row = last.narrow(2, 0, 1);
    assert_close(
        "attn224_last_cls_row",
        &values(cls_row),
        &io.f32s("attn224_last_cls_row"),
        TOL,
    );

    let keep = int_tensor(&io.keep_rows("keep224"), &device);
    let masked = vit.forward(x224, Some(keep));
    assert_close(
        "cls224_masked",
        &values(masked),
        &io.f32s("cls224_masked"),
        TOL,
    );

    let cls96 = vit.forward(x96.clone(), None);
    assert_close("cls96", &values(cls96), &io.f32s("cls96"), TOL);
    let keep = int_tensor(&io.keep_rows("keep96"), &device);
    let masked = vit.forward(x96, Some(keep));
    assert_close(
        "cls96_masked",
        &values(masked),
        &io.f32s("cls96_masked"),
        TOL,
    );
}

#[test]
fn the_vit_cut_into_pieces_matches_pytorch_at_224_and_96_px() {
    let io = Fixture::open("vit_io.safetensors");
    let device = Device::flex();
    let vit = reference_vit(&device);
    // 197 or 37 tokens and 6 heads: token pieces of uneven sizes, and fewer or more pieces
    // than heads (7 pieces attend in 6 groups of one head).
    for count in [1, 2, 3, 4, 7] {
        for (size, key) in [("images224", "cls224"), ("images96", "cls96")] {
            let images = io.images(size, &device);
            let cls = vit.forward_in_pieces(images, &InOrder(count));
            assert_close(
                &format!("{key}, {count} pieces"),
                &values(cls),
                &io.f32s(key),
                TOL,
            );
        }
    }
}

fn check_head(file: &str, config: HeadConfig) {
    let fx = Fixture::open(file);
    let device = Device::flex().autodiff();
    let head = load_pytorch(config.init(&device), fx.bytes.clone());
    let x: Tensor<2> = fx.tensor("io.input", &device);
    // Training mode (autodiff device): batch statistics, running statistics updated.
    let y = head.forward(x.clone());
    assert_close(
        &format!("{file} train output"),
        &values(y),
        &fx.f32s("io.train_output"),
        TOL,
    );
    assert_close(
        &format!("{file} bn1 running mean"),
        &values(head.bn1.running_mean.value_sync()),
        &fx.f32s("io.bn1_running_mean"),
        TOL,
    );
    assert_close(
        &format!("{file} bn1 running var (unbiased batch variance)"),
        &values(head.bn1.running_var.value_sync()),
        &fx.f32s("io.bn1_running_var"),
        TOL,
    );
    // Evaluation mode: the updated running statistics.
    let eval = head.valid();
    let y = eval.forward(x.inner_plain());
    assert_close(
        &format!("{file} eval output"),
        &values(y),
        &fx.f32s("io.eval_output"),
        TOL,
    );
}

trait PlainTensor {
    fn inner_plain(self) -> Self;
}

impl PlainTensor for Tensor<2> {
    /// The same values on the plain (non-autodiff) device.
    fn inner_plain(self) -> Self {
        Tensor::from_data(self.into_data(), &Device::flex())
    }
}

#[test]
fn projection_head_paper_layout_matches_pytorch_in_train_and_eval_mode() {
    check_head(
        "head_paper.safetensors",
        HeadConfig {
            d_in: 48,
            hidden: 192,
            d_out: 48,
            bias_before_bn: false,
            bn_eps: 1e-5,
            bn_momentum: 0.1,
        },
    );
}

#[test]
fn projection_head_msn_layout_matches_pytorch_in_train_and_eval_mode() {
    check_head(
        "head_msn.safetensors",
        HeadConfig {
            d_in: 48,
            hidden: 64,
            d_out: 32,
            bias_before_bn: true,
            bn_eps: 1e-5,
            bn_momentum: 0.1,
        },
    );
}

#[test]
fn multimodal_pretraining_forward_matches_pytorch() {
    let vit_io = Fixture::open("vit_io.safetensors");
    let io = Fixture::open("msn_io.safetensors");
    let device = Device::flex().autodiff();

    let mut config = MsnConfig::paper(VitPreset::Tiny);
    config.vit = small_vit_config();
    config.head = HeadConfig {
        d_in: 48,
        hidden: 192,
        d_out: 48,
        bias_before_bn: false,
        bn_eps: 1e-5,
        bn_momentum: 0.1,
    };
    config.num_prototypes = 32;
    config.ehr = Some(EhrConfig {
        feature_set: FeatureSet::from_name("all").unwrap(),
        ehr_dim: 8,
    });
    let model = config.init(&device).unwrap();

    let vit = Fixture::open("vit_weights.safetensors");
    let head = Fixture::open("head_paper.safetensors");
    let rest = Fixture::open("msn_weights.safetensors");
    let mut tensors = vit.renamed("", "anchor_vit.");
    tensors.extend(vit.renamed("", "target_vit."));
    for branch in ["anchor_head.", "target_head."] {
        tensors.extend(
            head.renamed("", branch)
                .into_iter()
                .filter(|t| !t.0.contains(".io.")),
        );
    }
    tensors.extend(rest.renamed("", ""));
    let model = load_pytorch(model, merge(tensors));

    let target = Tensor::cat(
        vec![
            vit_io.images("images224", &device),
            io.images("extra_target_images", &device),
        ],
        0,
    );
    let batch = MsnBatch {
        target: target.clone().into(),
        anchors: vec![
            AnchorGroup {
                images: target.into(),
            },
            AnchorGroup {
                images: io.images("focal_images", &device).into(),
            },
        ],
        ehr: Some(io.tensor("ehr", &device)),
    };
    let masks = vec![
        Some(TokenMask {
            n_patches: 196,
            keep: io.keep_rows("keep224"),
        }),
        Some(TokenMask {
            n_patches: 36,
            keep: io.keep_rows("keep96"),
        }),
    ];
    let forward = model.forward_pretrain(batch, &masks, &config);
    assert_close(
        "targets",
        &values(forward.targets.clone()),
        &io.f32s("targets"),
        TOL,
    );
    assert_close(
        "anchors",
        &values(forward.anchors.clone()),
        &io.f32s("anchors"),
        TOL,
    );
    let loss = model.loss(&forward, &config);
    assert_close(
        "loss.total",
        &values(loss.total),
        &io.f32s("loss.total"),
        TOL,
    );
    assert_close("loss.ce", &values(loss.ce), &io.f32s("loss.ce"), TOL);
    assert_close(
        "loss.me_max",
        &values(loss.me_max),
        &io.f32s("loss.me_max"),
        TOL,
    );
}
