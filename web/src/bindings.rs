//! The JavaScript API of the page (and of pages that embed it): `CxrModel.load(bytes,
//! backend)`, `model.summary()`, `model.read_image(bytes)`, `model.predict(bytes, ehr)`,
//! `model.embed(bytes)`, and learn mode's `learn_info`, `masked`, `views`, `assign`,
//! `sinkhorn`, `explain` and `signature`.
//! Values cross as JSON strings; errors as `Error` objects with a message for people.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::Device;
use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::engine::{EhrInput, Engine, Prepared, prepare, view_pixels};

/// A model loaded on the page, with the backend it runs on.
#[wasm_bindgen]
pub struct CxrModel {
    // Shared with the futures of `predict`, which outlive the call that made them.
    engine: Rc<Engine>,
    backend: String,
    // The last image read: the page calls read_image, view and predict on the same bytes,
    // and the file is decoded once for the three.
    last: Rc<LastImage>,
}

/// The image read last: its fingerprint and its prepared form.
type LastImage = RefCell<Option<(u64, Rc<Prepared>)>>;

/// A fingerprint of file bytes (FNV-1a), to recognise the image read last.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) ^ bytes.len() as u64
}

/// The prepared image of `bytes`, from `last` when it is the same file.
fn prepared(
    last: &RefCell<Option<(u64, Rc<Prepared>)>>,
    bytes: &[u8],
) -> Result<Rc<Prepared>, JsError> {
    let key = fingerprint(bytes);
    if let Some((k, p)) = last.borrow().as_ref()
        && *k == key
    {
        return Ok(Rc::clone(p));
    }
    let p = Rc::new(prepare(bytes).map_err(js_error)?);
    *last.borrow_mut() = Some((key, Rc::clone(&p)));
    Ok(p)
}

fn js_error(message: impl std::fmt::Display) -> JsError {
    JsError::new(&message.to_string())
}

/// The browser's WebGPU device, once asked for: its name and whether the adapter is a
/// software one. Asked once per page (a second initialisation of the runtime would hang),
/// then reused by every model loaded on WebGPU.
#[derive(Clone)]
struct WebGpu {
    device: Device,
    name: String,
    software: bool,
}

thread_local! {
    static WEBGPU: RefCell<Option<Result<WebGpu, String>>> = const { RefCell::new(None) };
}

async fn webgpu() -> Result<WebGpu, String> {
    if let Some(known) = WEBGPU.with(|w| w.borrow().clone()) {
        return known;
    }
    use burn::tensor::wgpu::wgpu::DeviceType;
    let found = match Device::wgpu_options().init_with_setup_async().await {
        Ok((device, setup)) => {
            let info = setup.adapter.get_info();
            let name = if info.name.is_empty() {
                format!("{:?} adapter", info.device_type)
            } else {
                info.name
            };
            Ok(WebGpu {
                device,
                name,
                software: info.device_type == DeviceType::Cpu,
            })
        }
        Err(e) => {
            web_sys::console::info_1(&JsValue::from_str(&format!("WebGPU: {e:?}")));
            Err("this browser offers no WebGPU adapter".to_string())
        }
    };
    WEBGPU.with(|w| *w.borrow_mut() = Some(found.clone()));
    found
}

/// The CPU backend as the page names it: which of the page's two modules runs
/// (`web/relaxed`: the one whose matrix products use relaxed SIMD's fused multiply-adds).
const CPU: &str = if cfg!(feature = "relaxed-simd") {
    "CPU (WebAssembly, relaxed SIMD)"
} else {
    "CPU (WebAssembly)"
};

#[wasm_bindgen]
impl CxrModel {
    /// Loads model-file bytes on `backend`: `auto` (WebGPU with a hardware adapter, else
    /// the CPU), `webgpu` (any WebGPU adapter, software included; an error without one) or
    /// `cpu`.
    pub async fn load(bytes: Vec<u8>, backend: String) -> Result<CxrModel, JsError> {
        crate::engine::check_model(&bytes).map_err(js_error)?;
        let (device, name) = match backend.as_str() {
            "cpu" => (Device::flex(), CPU.to_string()),
            "webgpu" => {
                let gpu = webgpu().await.map_err(js_error)?;
                let kind = if gpu.software { "software" } else { "hardware" };
                (gpu.device, format!("WebGPU ({}, {kind})", gpu.name))
            }
            _ => match webgpu().await {
                Ok(gpu) if !gpu.software => (gpu.device, format!("WebGPU ({})", gpu.name)),
                Ok(gpu) => (
                    Device::flex(),
                    format!(
                        "{CPU}; this browser's WebGPU runs in software here ({}), slower \
                         than the CPU",
                        gpu.name
                    ),
                ),
                Err(reason) => (Device::flex(), format!("{CPU}; {reason}")),
            },
        };
        let engine = Engine::load(&bytes, device).map_err(js_error)?;
        Ok(CxrModel {
            engine: Rc::new(engine),
            backend: name,
            last: Rc::new(RefCell::new(None)),
        })
    }

    /// The backend the model runs on, in words.
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// The model's labels, EHR inputs, architecture and training facts (JSON).
    pub fn summary(&self) -> Result<String, JsError> {
        serde_json::to_string(&self.engine.summary()).map_err(js_error)
    }

    /// Reads an image file (PNG, JPEG, DICOM): JSON with `format`, `width`, `height`,
    /// `bit_depth` and `from_header` (EHR from a DICOM header).
    pub fn read_image(&self, bytes: &[u8]) -> Result<String, JsError> {
        let prepared = prepared(&self.last, bytes)?;
        serde_json::to_string(&prepared.info).map_err(js_error)
    }

    /// The 224 x 224 view the model sees, as 8-bit grey pixels (for the canvas).
    pub fn view(&self, bytes: &[u8]) -> Result<Vec<u8>, JsError> {
        let prepared = prepared(&self.last, bytes)?;
        Ok(view_pixels(&prepared.view))
    }

    /// Scores an image file with the EHR given as JSON (`{"sex":"F","age":67,"view":"AP"}`,
    /// any field may be missing). Resolves to JSON with `labels`, `image`, `image_ehr`,
    /// `operating_points`, `attention`, `grid` and `novelty`.
    pub fn predict(&self, bytes: Vec<u8>, ehr_json: String) -> Promise {
        self.on_image(bytes, async move |engine, image| {
            engine.predict(image, &parse_ehr(&ehr_json)?).await
        })
    }

    /// The encoder's [CLS] embedding of an image file (the same view `predict` scores),
    /// without the heads: resolves to a JSON array of the model's width.
    pub fn embed(&self, bytes: Vec<u8>) -> Promise {
        self.on_image(bytes, async move |engine, image| engine.embed(image).await)
    }

    /// Runs `work` on the image read from `bytes` (decoded once for consecutive calls on
    /// the same file); the promise resolves to its result as JSON, or rejects with its
    /// error.
    fn on_image<T, W>(&self, bytes: Vec<u8>, work: W) -> Promise
    where
        T: serde::Serialize,
        W: AsyncFnOnce(&Engine, &Prepared) -> Result<T, String> + 'static,
    {
        let (engine, last) = (Rc::clone(&self.engine), Rc::clone(&self.last));
        future_to_promise(async move {
            let image = prepared(&last, &bytes)?;
            let out = work(&engine, &image).await.map_err(js_error)?;
            json(&out)
        })
    }
}

/// Learn mode (see `crate::learn`): the same model, explained.
#[wasm_bindgen]
impl CxrModel {
    /// What learn mode can show and the model's pretraining settings (JSON).
    pub fn learn_info(&self) -> Result<String, JsError> {
        serde_json::to_string(&self.engine.learn_info()).map_err(js_error)
    }

    /// The evaluation view of an image file without and with a random token mask of
    /// `ratio` drawn from `seed`: kept patches, both [CLS] embeddings, their cosine and
    /// projections (JSON).
    pub fn masked(&self, bytes: Vec<u8>, ratio: f64, seed: f64) -> Promise {
        self.on_image(bytes, async move |engine, image| {
            engine.masked(image, ratio, js_seed(seed)?).await
        })
    }

    /// The pretraining views of an image file drawn with `seed` (target, random anchor,
    /// focal views; anchors masked at `ratio`), with their pixels and projections (JSON).
    pub fn views(&self, bytes: Vec<u8>, seed: f64, ratio: f64) -> Promise {
        self.on_image(bytes, async move |engine, image| {
            engine.views(image, js_seed(seed)?, ratio).await
        })
    }

    /// Prototype assignments of projections given as JSON rows (row 0 the target) at
    /// `temperature`, the target sharpened by `sharpen` (JSON).
    pub fn assign(&self, z_json: &str, temperature: f64, sharpen: f64) -> Result<String, JsError> {
        let z = rows(z_json)?;
        let out = self
            .engine
            .assign(&z, temperature, sharpen)
            .map_err(js_error)?;
        serde_json::to_string(&out).map_err(js_error)
    }

    /// The Sinkhorn-Knopp step on a batch of projections given as JSON rows (JSON).
    pub fn sinkhorn(
        &self,
        z_json: &str,
        temperature: f64,
        sharpen: f64,
        iterations: u32,
    ) -> Result<String, JsError> {
        let z = rows(z_json)?;
        let out = self
            .engine
            .balance(&z, temperature, sharpen, iterations as usize)
            .map_err(js_error)?;
        serde_json::to_string(&out).map_err(js_error)
    }

    /// An image file's image-only and EHR-fused embeddings with both heads' scores (JSON).
    pub fn explain(&self, bytes: Vec<u8>, ehr_json: String) -> Promise {
        self.on_image(bytes, async move |engine, image| {
            engine.explain(image, &parse_ehr(&ehr_json)?).await
        })
    }

    /// The encoder's [CLS] of a fixed test card, to match embedding maps (JSON array).
    pub fn signature(&self) -> Promise {
        let engine = Rc::clone(&self.engine);
        future_to_promise(async move {
            let out = engine.signature().await.map_err(js_error)?;
            json(&out)
        })
    }
}

/// A value as a JSON string for JavaScript.
fn json<T: serde::Serialize>(value: &T) -> Result<JsValue, JsValue> {
    let text = serde_json::to_string(value).map_err(js_error)?;
    Ok(JsValue::from_str(&text))
}

/// Projection rows from JSON (`[[...], ...]`).
fn rows(z_json: &str) -> Result<Vec<Vec<f32>>, JsError> {
    serde_json::from_str(z_json)
        .map_err(|e| js_error(format!("the projections are not rows of numbers: {e}")))
}

/// A seed from JavaScript: a whole number from 0 to 2^53.
fn js_seed(seed: f64) -> Result<u64, String> {
    if seed.is_finite() && seed >= 0.0 && seed.fract() == 0.0 && seed <= 9_007_199_254_740_992.0 {
        Ok(seed as u64)
    } else {
        Err(format!(
            "the seed must be a whole number from 0, not {seed}"
        ))
    }
}

/// EHR values from JSON; empty text is no EHR.
fn parse_ehr(ehr_json: &str) -> Result<EhrInput, String> {
    if ehr_json.trim().is_empty() {
        return Ok(EhrInput::default());
    }
    serde_json::from_str(ehr_json).map_err(|e| format!("the EHR values are malformed: {e}"))
}

/// Checks model-file bytes without loading them: the summary, or an error saying why the
/// page cannot use the file.
#[wasm_bindgen]
pub fn check_model_file(bytes: &[u8]) -> Result<String, JsError> {
    crate::engine::check_model(bytes)
        .map(|meta| meta.to_string())
        .map_err(js_error)
}

/// Rust panics show in the browser console with their message.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&JsValue::from_str(&info.to_string()));
    }));
}
