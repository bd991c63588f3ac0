//! Helpers shared by the integration tests: reading the PyTorch reference fixtures
//! (see tests/reference/make_fixtures.py) and comparing numbers with a tolerance.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::module::Module;
use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::{Device, Int, Tensor, TensorData};
use cxr_msn::config::VitConfig;
use safetensors::{Dtype, SafeTensors};

/// The tolerance the issue asks for: 1e-5, relative for values above 1.
pub const TOL: f32 = 1e-5;

/// A fixture file held in memory.
pub struct Fixture {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Fixture {
    pub fn open(name: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "fixture {} missing ({e}); regenerate with tests/reference/make_fixtures.py",
                path.display()
            )
        });
        Self {
            name: name.into(),
            bytes,
        }
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("fixture is valid safetensors")
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.get(key).1
    }

    fn get(&self, key: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let st = self.view();
        let t = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("{} has no tensor '{key}'", self.name));
        (t.dtype(), t.shape().to_vec(), t.data().to_vec())
    }

    /// A float tensor as f32 values (f32 or f64 in the file).
    pub fn f32s(&self, key: &str) -> Vec<f32> {
        let (dtype, _, data) = self.get(key);
        match dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            other => panic!("{key}: expected a float tensor, found {other:?}"),
        }
    }

    pub fn f64s(&self, key: &str) -> Vec<f64> {
        let (dtype, _, data) = self.get(key);
        assert_eq!(dtype, Dtype::F64, "{key}");
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn i64s(&self, key: &str) -> Vec<i64> {
        let (dtype, _, data) = self.get(key);
        assert_eq!(dtype, Dtype::I64, "{key}");
        data.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// A float tensor on `device`.
    pub fn tensor<const D: usize>(&self, key: &str, device: &Device) -> Tensor<D> {
        let shape = self.shape(key);
        assert_eq!(shape.len(), D, "{key} has rank {}", shape.len());
        Tensor::from_data(TensorData::new(self.f32s(key), shape), device)
    }

    /// uint8 images mapped to floats the way the reference did: (u - 127.5) / 64.
    pub fn images(&self, key: &str, device: &Device) -> Tensor<4> {
        let (dtype, shape, data) = self.get(key);
        assert_eq!(dtype, Dtype::U8, "{key}");
        let values: Vec<f32> = data.iter().map(|&u| (u as f32 - 127.5) / 64.0).collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// Kept-patch indices as written by the reference (int64), as `[B, K]` rows.
    pub fn keep_rows(&self, key: &str) -> Vec<Vec<u32>> {
        let shape = self.shape(key);
        self.i64s(key)
            .chunks(shape[1])
            .map(|r| r.iter().map(|&i| i as u32).collect())
            .collect()
    }

    /// Tensors whose names start with `prefix`, renamed to start with `replace` instead.
    pub fn renamed(
        &self,
        prefix: &str,
        replace: &str,
    ) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let st = self.view();
        let mut out = Vec::new();
        for (name, view) in st.tensors() {
            if let Some(rest) = name.strip_prefix(prefix) {
                out.push((
                    format!("{replace}{rest}"),
                    view.dtype(),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ));
            }
        }
        out
    }
}

/// Serialises named tensors into one in-memory safetensors file.
pub fn merge(tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) -> Vec<u8> {
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Loads PyTorch-named weights (Linear stored [out, in], norms as weight/bias) into a
/// module; extra tensors in the file are ignored, missing ones fail the test.
pub fn load_pytorch<M: Module>(mut module: M, bytes: Vec<u8>) -> M {
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(false);
    let result = module.load_from(&mut store).expect("weights load");
    assert!(result.errors.is_empty(), "load errors: {:?}", result.errors);
    assert!(result.missing.is_empty(), "missing: {:?}", result.missing);
    module
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

pub fn int_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i32> = rows.iter().flatten().map(|&i| i as i32).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

/// Fails with the worst element when any |actual - expected| > tol * max(1, |expected|).
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {} values, expected {}",
        actual.len(),
        expected.len()
    );
    let mut worst = (0usize, 0.0f32);
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs() / e.abs().max(1.0);
        let err = if err.is_nan() { f32::INFINITY } else { err };
        if err > worst.1 {
            worst = (i, err);
        }
    }
    let (i, err) = worst;
    assert!(
        err <= tol,
        "{what}: element {i} is {} but the reference says {} (scaled error {err:e} > {tol:e})",
        actual[i],
        expected[i]
    );
}

/// The reference scripts' small ViT (vit_weights.safetensors): D=48, 2 blocks, 6 heads,
/// 3 channels, the 224 px grid.
pub fn small_vit_config() -> VitConfig {
    VitConfig {
        image_size: 224,
        patch_size: 16,
        channels: 3,
        dim: 48,
        depth: 2,
        heads: 6,
        mlp_ratio: 4,
        layer_norm_eps: 1e-6,
    }
}
