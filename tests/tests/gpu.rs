//! The GPU path on whatever wgpu adapter the machine has. CI installs Mesa's software
//! Vulkan (lavapipe) and sets `CXR_MSN_REQUIRE_GPU_TEST=1`, so there the test must run;
//! elsewhere it is skipped with a note when no Vulkan driver is installed.

use std::process::Command;

use cxr_msn_e2e::{Succeeds, binary, synth};

fn vulkan_available() -> bool {
    std::path::Path::new("/usr/share/vulkan/icd.d")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
}

/// False, with a note, when the machine has no Vulkan driver (an error where CI requires it).
fn gpu_test_runs() -> bool {
    if vulkan_available() {
        return true;
    }
    assert!(
        std::env::var_os("CXR_MSN_REQUIRE_GPU_TEST").is_none(),
        "no Vulkan driver, but CXR_MSN_REQUIRE_GPU_TEST is set"
    );
    eprintln!("skipped: no Vulkan driver (install mesa-vulkan-drivers to run it)");
    false
}

#[test]
fn pretraining_runs_on_the_wgpu_adapter() {
    if !gpu_test_runs() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("cxr-msn-gpu-{}", std::process::id()));
    synth(&dir.join("data"), 10, 64, 2);
    let text = Command::new(binary())
        .args([
            "pretrain", "--device", "gpu", "--ehr", "sex", "--depth", "1",
        ])
        .args([
            "--batch-size",
            "2",
            "--focal-views",
            "1",
            "--epochs",
            "1",
            "--stop-after",
            "1",
        ])
        .arg("--data")
        .arg(dir.join("data/manifest.csv"))
        .arg("--out")
        .arg(dir.join("run"))
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .succeeds();
    assert!(text.contains("device: GPU through wgpu"), "{text}");
    assert!(text.contains("epoch 1/1: mean loss"), "{text}");
    // `auto` never takes a software adapter for a GPU.
    if text.contains("(software adapter)") {
        let auto_text = Command::new(binary())
            .args([
                "pretrain",
                "--ehr",
                "sex",
                "--depth",
                "1",
                "--batch-size",
                "2",
            ])
            .args(["--focal-views", "1", "--epochs", "1", "--data"])
            .arg(dir.join("data/manifest.csv"))
            .arg("--out")
            .arg(dir.join("auto"))
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .succeeds();
        assert!(
            auto_text.contains("device: CPU (flex backend); the only wgpu adapter"),
            "{auto_text}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `predict` scores the files of a folder on several threads at once, on the GPU too: the
/// bundled model's scores of the bundled samples (JPEG, 16-bit PNG, DICOM) through the wgpu
/// adapter must be the CPU's, without the Vulkan layers' complaints on a headless machine.
#[test]
fn predict_on_the_wgpu_adapter_scores_as_the_cpu_does() {
    if !gpu_test_runs() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("cxr-msn-gpu-predict-{}", std::process::id()));
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for name in [
        "NORMAL2-IM-1438-0001.jpeg",
        "person1954_bacteria_4886.jpeg",
        "rg1-adult-pa-16bit.png",
        "rg1-adult-pa.dcm",
    ] {
        std::fs::copy(root.join("static/samples").join(name), input.join(name)).unwrap();
    }
    let scores = |device: &str| -> Vec<Vec<String>> {
        let csv = dir.join(format!("{device}.csv"));
        let out = Command::new(binary())
            .args(["predict", "--device", device, "--model"])
            .arg(root.join("static/model.safetensors"))
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&csv)
            // As on a headless server or in a container: no runtime folder, Mesa's
            // device-select layer not configured. It would print "error: XDG_RUNTIME_DIR
            // is invalid" while the adapter is probed; the binary turns it off.
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("NODEVICE_SELECT")
            .env_remove("MESA_VK_DEVICE_SELECT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout),
        );
        assert!(
            !stderr.contains("XDG_RUNTIME_DIR"),
            "--device {device}: no complaint from the Vulkan layers: {stderr}"
        );
        std::fs::read_to_string(&csv)
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect()
    };
    let (cpu, gpu) = (scores("cpu"), scores("gpu"));
    assert_eq!(cpu.len(), 5, "a header and 4 images: {cpu:?}");
    assert_eq!(cpu[0], gpu[0], "the same columns");
    let mut compared = 0;
    for (c, g) in cpu.iter().zip(&gpu).skip(1) {
        assert_eq!(c[0], g[0], "the same files in the same order");
        for (a, b) in c.iter().zip(g).skip(1) {
            if let (Ok(a), Ok(b)) = (a.parse::<f64>(), b.parse::<f64>()) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{}: {a} on the CPU, {b} on the GPU",
                    c[0]
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 4 * 14, "{compared} scores compared");
    std::fs::remove_dir_all(&dir).ok();
}

/// One pretraining step's loss and gradients on the wgpu adapter against the CPU's: the
/// paper's model (ViT-Tiny, one block, 224 px target and anchor, 96 px focal views, 1024
/// prototypes, demographic EHR) initialised on the CPU and loaded onto both, the same
/// views, EHR rows and token masks. The masked anchors run through token gathering, the
/// EHR fusion, the head's BatchNorm and the Sinkhorn-sharpened targets.
#[test]
fn a_pretraining_step_on_the_wgpu_adapter_matches_the_cpu() {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Tensor, TensorData};
    use cxr_msn::checkpoint::{ModelMeta, load_pretraining, write_model};
    use cxr_msn::config::{MsnConfig, Profile, VitPreset};
    use cxr_msn::ehr::FeatureSet;
    use cxr_msn::msn::{AnchorGroup, MsnBatch};
    use cxr_msn_trainer::device::{DeviceArg, choose};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    if !gpu_test_runs() {
        return;
    }
    let mut config = MsnConfig::for_profile(Profile::Paper, VitPreset::Tiny)
        .with_ehr(FeatureSet::from_name("demographic").unwrap());
    config.vit.depth = 1;
    config.views.focal_views = 2;
    config.validate().unwrap();
    let cpu = choose(DeviceArg::Cpu).unwrap().device;
    cpu.seed(3);
    let bytes = write_model(
        &config.init(&cpu).unwrap(),
        &ModelMeta::pretraining(config.clone()),
    )
    .unwrap();

    let mut rng = StdRng::seed_from_u64(5);
    let b = 3;
    let (large, focal) = (config.views.large_size, config.views.focal_size);
    let mut host = |shape: Vec<usize>, lo: f32, hi: f32| {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
        TensorData::new(values, shape)
    };
    let target = host(vec![b, 3, large, large], -2.0, 2.0);
    let anchor = host(vec![b, 3, large, large], -2.0, 2.0);
    let focal_views = host(vec![2 * b, 3, focal, focal], -2.0, 2.0);
    let ehr_width = config.ehr.as_ref().unwrap().feature_set.width();
    let ehr = host(vec![b, ehr_width], 0.0, 1.0);

    struct Step {
        losses: [f32; 3],
        grads: Vec<(String, Vec<f32>)>,
    }
    let step = |device: &Device, masks_seed: u64| -> Step {
        let device = device.clone().autodiff();
        let (model, _) = load_pretraining(&bytes, &device).unwrap();
        let batch = MsnBatch {
            target: Tensor::<4>::from_data(target.clone(), &device).into(),
            anchors: vec![
                AnchorGroup {
                    images: Tensor::<4>::from_data(anchor.clone(), &device).into(),
                },
                AnchorGroup {
                    images: Tensor::<4>::from_data(focal_views.clone(), &device).into(),
                },
            ],
            ehr: Some(Tensor::from_data(ehr.clone(), &device)),
        };
        let masks = model.sample_masks(&batch, &config, &mut StdRng::seed_from_u64(masks_seed));
        assert!(masks[0].is_some(), "the large anchor is masked");
        let loss = model.loss(&model.forward_pretrain(batch, &masks, &config), &config);
        let scalar = |t: Tensor<1>| t.into_scalar::<f32>();
        let losses = [
            scalar(loss.total.clone()),
            scalar(loss.ce.clone()),
            scalar(loss.me_max.clone()),
        ];
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        struct Collect<'a>(&'a GradientsParams, Vec<(String, Vec<f32>)>);
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(g) = self.0.get::<D>(param.id) {
                    let shape = format!("{:?}", g.dims());
                    self.1
                        .push((shape, g.into_data().try_to_vec::<f32>().unwrap()));
                }
            }
        }
        let mut collect = Collect(&grads, Vec::new());
        model.visit(&mut collect);
        Step {
            losses,
            grads: collect.1,
        }
    };
    let gpu = choose(DeviceArg::Gpu).unwrap().device;
    let (on_cpu, on_gpu) = (step(&cpu, 9), step(&gpu, 9));
    eprintln!(
        "loss, ce, me-max: CPU {:?}, GPU {:?}",
        on_cpu.losses, on_gpu.losses
    );
    for (c, g) in on_cpu.losses.iter().zip(&on_gpu.losses) {
        assert!(
            (c - g).abs() <= 1e-4 * c.abs().max(1.0),
            "losses (total, ce, me-max): CPU {:?}, GPU {:?}",
            on_cpu.losses,
            on_gpu.losses
        );
    }
    assert_eq!(on_cpu.grads.len(), on_gpu.grads.len());
    assert!(on_cpu.grads.len() > 15, "{} gradients", on_cpu.grads.len());
    // Within 5e-3 of each gradient's largest entry, or of 5e-4 of the model's largest for
    // the ones that are analytically zero (a bias before BatchNorm: rounding is all there
    // is).
    let largest = on_cpu
        .grads
        .iter()
        .flat_map(|(_, g)| g)
        .fold(0f32, |m, x| m.max(x.abs()));
    let mut closest = 0f32;
    for (i, ((shape, c), (_, g))) in on_cpu.grads.iter().zip(&on_gpu.grads).enumerate() {
        let scale = c
            .iter()
            .fold(0f32, |m, x| m.max(x.abs()))
            .max(0.1 * largest);
        let worst = c.iter().zip(g).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        closest = closest.max(worst / scale);
        assert!(
            worst <= 5e-3 * scale,
            "parameter {i} {shape}: GPU gradient differs by {worst} (largest {scale})"
        );
    }
    eprintln!("gradients: largest difference {closest} of the largest entry");
    // Another mask gives another loss: the masks reach the loss.
    let other = step(&cpu, 10);
    assert_ne!(other.losses[0], on_cpu.losses[0]);
}

/// Runs a future to completion on this thread (the wgpu backend's reads may be pending).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// The page's learn mode computed by its engine on the wgpu adapter against the CPU: the
/// masked evaluation view and the pretraining views of a sample X-ray, [CLS] and
/// projections.
#[test]
fn learn_mode_on_the_wgpu_adapter_matches_the_cpu() {
    use cxr_msn_trainer::device::{DeviceArg, choose};
    use cxr_msn_web::engine::{Engine, prepare};

    if !gpu_test_runs() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bytes = std::fs::read(root.join("static/model.safetensors")).unwrap();
    let xray = std::fs::read(root.join("static/samples/NORMAL2-IM-1438-0001.jpeg")).unwrap();
    let prepared = prepare(&xray).unwrap();
    let cpu = Engine::load(&bytes, choose(DeviceArg::Cpu).unwrap().device).unwrap();
    let gpu = Engine::load(&bytes, choose(DeviceArg::Gpu).unwrap().device).unwrap();
    let ratio = cpu.learn_info().mask_ratio;
    let worst = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    for (r, seed) in [(ratio, 1), (0.5, 2), (0.0, 3)] {
        let c = block_on(cpu.masked(&prepared, r, seed)).unwrap();
        let g = block_on(gpu.masked(&prepared, r, seed)).unwrap();
        assert_eq!(c.kept, g.kept);
        let gaps = [
            worst(&c.cls_full, &g.cls_full),
            worst(&c.cls_masked, &g.cls_masked),
            worst(&c.z.as_ref().unwrap()[0], &g.z.as_ref().unwrap()[0]),
            worst(&c.z.as_ref().unwrap()[1], &g.z.as_ref().unwrap()[1]),
        ];
        eprintln!("masked at {r}: [CLS] full, masked, z full, masked differ by {gaps:?}");
        assert!(gaps.iter().all(|g| *g < 1e-3), "ratio {r}: {gaps:?}");
        let c = block_on(cpu.views(&prepared, seed, r)).unwrap();
        let g = block_on(gpu.views(&prepared, seed, r)).unwrap();
        let (cz, gz) = (c.z.unwrap(), g.z.unwrap());
        for (i, (a, b)) in cz.iter().zip(&gz).enumerate() {
            let gap = worst(a, b);
            eprintln!("views at {r}: view {i}'s z differs by {gap}");
            assert!(gap < 1e-3, "ratio {r}, view {i}: {gap}");
        }
    }
}

/// The linear layers' own GPU kernel (`cxr_msn::gpu_kernels`, which the page uses on
/// WebGPU, where there are no subgroups) on the wgpu adapter against the product computed
/// here in f64: rows that are not a multiple of its 32-row blocks, depths and widths that
/// are not multiples of 32 (but of 4, as it needs), a single row, and the ViT-Tiny block's
/// own shapes.
#[test]
fn the_gpu_linear_kernel_matches_an_f64_product() {
    use burn::tensor::{Tensor, TensorData};
    use cxr_msn_trainer::device::{DeviceArg, choose};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    if !gpu_test_runs() {
        return;
    }
    let gpu = choose(DeviceArg::Gpu).unwrap().device;
    let mut rng = StdRng::seed_from_u64(11);
    for (batch, rows, k, n) in [
        (1, 197, 192, 576),
        (2, 197, 768, 192),
        (1, 1, 36, 12),
        (3, 5, 4, 40),
        (1, 40, 100, 36),
    ] {
        let mut values =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let (x, w, b) = (values(batch * rows * k), values(k * n), values(n));
        let y = cxr_msn::gpu_kernels::linear(
            Tensor::<3>::from_data(TensorData::new(x.clone(), [batch, rows, k]), &gpu),
            Tensor::<2>::from_data(TensorData::new(w.clone(), [k, n]), &gpu),
            Tensor::<1>::from_data(TensorData::new(b.clone(), [n]), &gpu),
        );
        assert_eq!(y.dims(), [batch, rows, n]);
        let y = y.into_data().try_to_vec::<f32>().unwrap();
        let mut worst = 0f64;
        for r in 0..batch * rows {
            for c in 0..n {
                let exact = b[c] as f64
                    + (0..k)
                        .map(|i| x[r * k + i] as f64 * w[i * n + c] as f64)
                        .sum::<f64>();
                worst = worst.max((y[r * n + c] as f64 - exact).abs());
            }
        }
        assert!(
            worst < 1e-4,
            "[{batch}, {rows}, {k}] x [{k}, {n}]: off by {worst:e} from the f64 product"
        );
    }
}

/// The attention's own GPU kernels (`cxr_msn::gpu_kernels::attention`, the page's WebGPU
/// path) on the wgpu adapter against attention computed here in f64 from the same fused
/// projection: the heads side by side and the weights, for ViT-Tiny's shapes (two images),
/// for token counts and head widths that are not multiples of the kernels' 32-wide blocks,
/// and for one token.
#[test]
fn the_gpu_attention_kernels_match_an_f64_attention() {
    use burn::tensor::{Tensor, TensorData};
    use cxr_msn_trainer::device::{DeviceArg, choose};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    if !gpu_test_runs() {
        return;
    }
    let gpu = choose(DeviceArg::Gpu).unwrap().device;
    let mut rng = StdRng::seed_from_u64(13);
    for (b, n, heads, hd) in [(2, 197, 3, 64), (1, 5, 2, 3), (1, 40, 1, 36), (1, 1, 2, 4)] {
        let d = heads * hd;
        let qkv: Vec<f32> = (0..b * n * 3 * d)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect();
        let (out, weights) = cxr_msn::gpu_kernels::attention(
            Tensor::<3>::from_data(TensorData::new(qkv.clone(), [b, n, 3 * d]), &gpu),
            heads,
        );
        assert_eq!(out.dims(), [b, n, d]);
        assert_eq!(weights.dims(), [b, heads, n, n]);
        let out = out.into_data().try_to_vec::<f32>().unwrap();
        let weights = weights.into_data().try_to_vec::<f32>().unwrap();
        let at = |img: usize, token: usize, col: usize| qkv[(img * n + token) * 3 * d + col] as f64;
        let (mut worst_w, mut worst_o) = (0f64, 0f64);
        for img in 0..b {
            for h in 0..heads {
                for i in 0..n {
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..hd)
                                .map(|c| at(img, i, h * hd + c) * at(img, j, d + h * hd + c))
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let top = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let total: f64 = scores.iter().map(|s| (s - top).exp()).sum();
                    let p: Vec<f64> = scores.iter().map(|s| (s - top).exp() / total).collect();
                    for (j, pj) in p.iter().enumerate() {
                        let got = weights[((img * heads + h) * n + i) * n + j] as f64;
                        worst_w = worst_w.max((got - pj).abs());
                    }
                    for c in 0..hd {
                        let exact: f64 =
                            (0..n).map(|j| p[j] * at(img, j, 2 * d + h * hd + c)).sum();
                        let got = out[(img * n + i) * d + h * hd + c] as f64;
                        worst_o = worst_o.max((got - exact).abs());
                    }
                }
            }
        }
        assert!(
            worst_w < 1e-5 && worst_o < 1e-4,
            "b={b} n={n} heads={heads} hd={hd}: weights off by {worst_w:e}, output by {worst_o:e}"
        );
    }
}
