//! What the page computes, with no browser in it (so it is tested natively): load a model
//! file onto a device, read an image file, and score it with the image-only and the
//! image + EHR head, with the [CLS] attention map of the last block. Everything goes
//! through the `cxr-msn` model crate: the same decoder, views, normalisation and model as
//! the trainer's `predict`.

use burn::tensor::{Device, Tensor, TensorData};
use cxr_msn::checkpoint::{ModelKind, ModelMeta, load_classifier, read_meta};
use cxr_msn::classifier::Classifier;
use cxr_msn::decode::{DecodeLimits, decode_downscaled};
use cxr_msn::ehr::{EhrField, EhrRecord, Orientation, Sex, ViewPosition};
use cxr_msn::image::GreyImage;
use cxr_msn::pixels::Pixels;
use cxr_msn::preprocess::BatchData;
use cxr_msn::prototype_head::PrototypeHead;
use cxr_msn::views::{LOAD_SHORTER_SIDE, eval_view};
use cxr_msn::vit::cls_attention_map;
use serde::{Deserialize, Serialize};

/// A loaded model, on its device.
pub struct Engine {
    pub(crate) model: Classifier,
    pub(crate) meta: ModelMeta,
    pub(crate) device: Device,
    /// The prototype head on the CPU, for learn mode's synchronous arithmetic.
    pub(crate) cpu_head: Option<PrototypeHead>,
}

/// The EHR a user entered (or a DICOM header gave); absent fields stay `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EhrInput {
    /// `M` or `F`.
    pub sex: Option<String>,
    /// Years.
    pub age: Option<f32>,
    /// `PA`, `AP`, `LATERAL`, `LL`.
    pub view: Option<String>,
    /// `Erect` or `Recumbent`.
    pub orientation: Option<String>,
    /// In an ICU stay.
    pub icu: Option<bool>,
    /// Died in hospital.
    pub mortality: Option<bool>,
}

impl EhrInput {
    fn record(&self) -> Result<EhrRecord, String> {
        let err = |e: cxr_msn::error::EhrError| e.to_string();
        Ok(EhrRecord {
            sex: self
                .sex
                .as_deref()
                .map(Sex::parse)
                .transpose()
                .map_err(err)?,
            age: self.age,
            view: self
                .view
                .as_deref()
                .map(ViewPosition::parse)
                .transpose()
                .map_err(err)?,
            orientation: self
                .orientation
                .as_deref()
                .map(Orientation::parse)
                .transpose()
                .map_err(err)?,
            died_in_hospital: self.mortality,
            in_icu: self.icu,
        })
    }
}

/// An image file read for scoring.
pub struct Prepared {
    /// The evaluation view (224 x 224 grey), what the model sees.
    pub view: GreyImage,
    /// The decoded image as the trainer loads it (shorter side at most
    /// [`LOAD_SHORTER_SIDE`]); learn mode draws pretraining views from it.
    pub image: GreyImage,
    /// What the file holds, for the page.
    pub info: ImageInfo,
}

/// What the page shows about an image file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageInfo {
    /// `PNG`, `JPEG` or `DICOM`.
    pub format: String,
    /// Width in pixels, as stored in the file.
    pub width: usize,
    /// Height in pixels, as stored in the file.
    pub height: usize,
    /// Bits per sample.
    pub bit_depth: u8,
    /// EHR read from a DICOM header (prefills the form).
    pub from_header: EhrInput,
}

/// The scores of one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Label names, in the model's order.
    pub labels: Vec<String>,
    /// Image-only probabilities.
    pub image: Vec<f32>,
    /// Image + EHR probabilities (when the model has the head and the EHR it needs is
    /// complete).
    pub image_ehr: Option<Vec<f32>>,
    /// Why there is no image + EHR score, when there is none.
    pub image_ehr_missing: Option<String>,
    /// Per-label thresholds chosen at export (empty when the file has none).
    pub operating_points: Vec<f32>,
    /// [CLS] attention of the last block over the patch grid, row-major `[grid, grid]`,
    /// scaled to a maximum of 1.
    pub attention: Vec<f32>,
    /// Side of the patch grid.
    pub grid: usize,
    /// How unlike the model's reference (validation) images the image is, when the model
    /// file carries a reference.
    pub novelty: Option<Novelty>,
}

/// The "unlike the training images" check of one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Novelty {
    /// Mean squared z-score of the embedding against the reference images.
    pub distance: f32,
    /// The model's threshold (a high percentile of the reference images' own distances).
    pub threshold: f32,
    /// The percentile the threshold is.
    pub percentile: f32,
    /// Whether the distance is above the threshold.
    pub unusual: bool,
}

/// A summary of a model for the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    /// Label names.
    pub labels: Vec<String>,
    /// EHR inputs the image + EHR head uses (`sex`, `age`, `view`, `orientation`, `icu`,
    /// `mortality`); empty for an image-only model.
    pub ehr_inputs: Vec<String>,
    /// ViT preset width and depth, e.g. `ViT D=192, 12 blocks, 6 heads`.
    pub architecture: String,
    /// Training facts from the file (data, epochs, seed, ...).
    pub training: Vec<(String, String)>,
    /// The full description (`cxr-msn inspect`).
    pub description: String,
}

/// The page-facing name of an EHR field's input.
fn input_name(field: EhrField) -> &'static str {
    match field {
        EhrField::Sex => "sex",
        EhrField::AgeNorm | EhrField::Age5 | EhrField::Age10 => "age",
        EhrField::View => "view",
        EhrField::Orientation => "orientation",
        EhrField::Mortality => "mortality",
        EhrField::Icu => "icu",
    }
}

/// Reads and checks a model file's metadata; refuses files the page cannot run.
pub fn check_model(bytes: &[u8]) -> Result<ModelMeta, String> {
    let meta = read_meta(bytes).map_err(|e| e.to_string())?;
    if meta.kind != ModelKind::Classifier {
        return Err(format!(
            "this is a pretraining model; export a classifier with `cxr-msn export` first\n{meta}"
        ));
    }
    Ok(meta)
}

/// Reads an image file: decode (PNG, JPEG, DICOM) straight to the loaded size, as
/// `predict` and the trainer do, then the evaluation view.
pub fn prepare(bytes: &[u8]) -> Result<Prepared, String> {
    // Loaded as the trainer loads images, so that the page scores as `predict` and `eval`
    // do, and learn mode's views are ones training could draw; an 8-bit grey JPEG or PNG
    // is resampled from the decoder's bytes, without a full-size float image.
    let decoded = decode_downscaled(bytes, &DecodeLimits::default(), LOAD_SHORTER_SIDE)
        .map_err(|e| e.to_string())?;
    let from_header = decoded
        .dicom
        .as_ref()
        .map(|t| EhrInput {
            sex: t
                .sex
                .map(|s| if s == Sex::Male { "M" } else { "F" }.to_string()),
            age: t.age_years,
            view: t.view.map(|v| format!("{v:?}").to_uppercase()),
            ..EhrInput::default()
        })
        .unwrap_or_default();
    let info = ImageInfo {
        format: format!("{:?}", decoded.format).to_uppercase(),
        width: decoded.original_size.0,
        height: decoded.original_size.1,
        bit_depth: decoded.bit_depth,
        from_header,
    };
    let image = decoded.image;
    Ok(Prepared {
        view: eval_view(&image),
        image,
        info,
    })
}

/// The view as 8-bit grey pixels, for display.
pub fn view_pixels(view: &GreyImage) -> Vec<u8> {
    view.pixels
        .iter()
        .map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

impl Engine {
    /// Loads a classifier model file onto `device`.
    pub fn load(bytes: &[u8], device: Device) -> Result<Self, String> {
        check_model(bytes)?;
        let (model, meta) = load_classifier(bytes, &device).map_err(|e| e.to_string())?;
        // Learn mode's prototype arithmetic reads back synchronously, so it runs on the CPU.
        // Moving the head off a GPU would need a synchronous read (refused by WebGPU): on
        // another device, the head is read from the file again, onto the CPU.
        let cpu = Device::flex();
        let cpu_head = if device == cpu || model.prototype_head.is_none() {
            model.prototype_head.clone()
        } else {
            load_classifier(bytes, &cpu)
                .map_err(|e| e.to_string())?
                .0
                .prototype_head
        };
        Ok(Self {
            cpu_head,
            model,
            meta,
            device,
        })
    }

    /// The model's metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// What the page shows about the model.
    pub fn summary(&self) -> ModelSummary {
        let mut ehr_inputs: Vec<String> = Vec::new();
        if self.model.fused_head.is_some()
            && let Some(ehr) = &self.meta.config.ehr
        {
            for field in ehr.feature_set.fields() {
                let name = input_name(*field).to_string();
                if !ehr_inputs.contains(&name) {
                    ehr_inputs.push(name);
                }
            }
        }
        let v = &self.meta.config.vit;
        ModelSummary {
            labels: self.meta.labels.clone(),
            ehr_inputs,
            architecture: format!(
                "ViT D={}, {} blocks, {} heads, {} px",
                v.dim, v.depth, v.heads, v.image_size
            ),
            training: self
                .meta
                .training
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            description: self.meta.to_string(),
        }
    }

    /// The EHR as the image + EHR head's input `[1, ehr_in]`; `None` for a model without
    /// an EHR feature set; an error (for people) when a value it needs is missing or bad.
    pub(crate) fn encode_ehr(&self, ehr: &EhrInput) -> Result<Option<Tensor<2>>, String> {
        let Some(config) = &self.meta.config.ehr else {
            return Ok(None);
        };
        let v = config
            .feature_set
            .encode(&ehr.record()?)
            .map_err(|e| e.to_string())?;
        let n = v.len();
        Ok(Some(Tensor::from_data(
            TensorData::new(v, [1, n]),
            &self.device,
        )))
    }

    /// Scores a prepared image with the EHR given. Reads results back asynchronously, as
    /// WebGPU requires.
    pub async fn predict(&self, image: &Prepared, ehr: &EhrInput) -> Result<Prediction, String> {
        Ok(self.score(image, ehr).await?.prediction)
    }

    /// The [CLS] embedding `[D]` of a prepared image: the encoder alone, without the heads
    /// or attention maps (features for other tools). Reads back asynchronously.
    pub async fn embed(&self, image: &Prepared) -> Result<Vec<f32>, String> {
        let images = self.input(image)?;
        self.model
            .encoder
            .check_input(&images)
            .map_err(|e| e.to_string())?;
        read(self.model.encoder.forward(images, None)).await
    }

    /// The encoder's input for a prepared image: its evaluation view as a batch of one,
    /// normalised as the model was trained, on the engine's device.
    fn input(&self, image: &Prepared) -> Result<Pixels, String> {
        Ok(BatchData::pack(&[&image.view], &self.meta.normalization)
            .map_err(|e| e.to_string())?
            .to_tensor(&self.device))
    }

    /// [`Self::predict`], keeping the [CLS] embedding and the encoded EHR it used (learn
    /// mode's EHR panel builds on them without running the encoder again).
    pub(crate) async fn score(&self, image: &Prepared, ehr: &EhrInput) -> Result<Scored, String> {
        let images = self.input(image)?;
        // A malformed value is an error, whether or not the model reads that field.
        ehr.record()?;
        let (ehr_tensor, missing) = if self.model.fused_head.is_none() {
            (None, Some("this model has no image + EHR head".to_string()))
        } else {
            match self.encode_ehr(ehr) {
                Ok(Some(t)) => (Some(t), None),
                Ok(None) => (None, Some("this model has no image + EHR head".to_string())),
                Err(e) => (None, Some(e)),
            }
        };
        let out = self
            .model
            .forward(images, ehr_tensor.clone(), true)
            .map_err(|e| e.to_string())?;
        let cls = out.embedding.clone();
        let image_probs = read(out.image_probs).await?;
        let novelty = match &self.meta.embedding_reference {
            Some(reference) => {
                let embedding = read(out.embedding).await?;
                let distance = reference.distance(&embedding);
                Some(Novelty {
                    distance,
                    threshold: reference.threshold,
                    percentile: reference.percentile,
                    unusual: distance > reference.threshold,
                })
            }
            None => None,
        };
        let image_ehr = match out.fused_probs {
            Some(t) => Some(read(t).await?),
            None => None,
        };
        let (attention, grid) = match out.attention.into_iter().last() {
            Some(weights) => {
                let map = cls_attention_map(weights);
                let grid = map.dims()[1];
                let mut values = read(map).await?;
                let max = values.iter().copied().fold(0.0f32, f32::max);
                if max > 0.0 {
                    values.iter_mut().for_each(|v| *v /= max);
                }
                (values, grid)
            }
            None => (Vec::new(), 0),
        };
        let prediction = Prediction {
            labels: self.meta.labels.clone(),
            image: image_probs,
            image_ehr,
            image_ehr_missing: missing,
            operating_points: self.meta.operating_points.clone(),
            attention,
            grid,
            novelty,
        };
        Ok(Scored {
            prediction,
            cls,
            ehr: ehr_tensor,
        })
    }
}

/// A prediction with the tensors it was computed from.
pub(crate) struct Scored {
    pub(crate) prediction: Prediction,
    /// [CLS] `[1, D]`.
    pub(crate) cls: Tensor<2>,
    /// The encoded EHR `[1, ehr_in]` the image + EHR head read, when it had all it needs.
    pub(crate) ehr: Option<Tensor<2>>,
}

/// Reads a tensor back (asynchronously: synchronous reads fail on WebGPU).
pub(crate) async fn read<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, String> {
    t.into_data_async()
        .await
        .map_err(|e| format!("reading the result back failed: {e:?}"))?
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehr_inputs_parse_and_bad_values_are_named() {
        let ok = EhrInput {
            sex: Some("F".into()),
            age: Some(67.0),
            view: Some("AP".into()),
            ..EhrInput::default()
        };
        let r = ok.record().unwrap();
        assert_eq!(r.sex, Some(Sex::Female));
        assert_eq!(r.view, Some(ViewPosition::Ap));
        let bad = EhrInput {
            view: Some("sideways".into()),
            ..EhrInput::default()
        };
        assert!(bad.record().unwrap_err().contains("sideways"));
    }

    #[test]
    fn a_non_image_is_refused_with_a_reason() {
        let err = prepare(b"hello, this is not an image").err().unwrap();
        assert!(!err.is_empty());
    }
}
