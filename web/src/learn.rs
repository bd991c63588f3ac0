//! What the page's learn mode computes, with no browser in it: how a multimodal Masked
//! Siamese Network sees one image. Every number the learn panels show comes from here,
//! through the `cxr-msn` model crate:
//!
//! - [`Engine::masked`]: the evaluation view with a random token mask, the [CLS] embedding
//!   with and without it;
//! - [`Engine::views`]: the target, the random anchor and the focal crops pretraining would
//!   draw from the image with a seed, anchors masked as in pretraining;
//! - [`Engine::assign`], [`Engine::balance`]: prototype assignments, the sharpened target,
//!   cross-entropies, and the Sinkhorn-Knopp step on a small batch;
//! - [`Engine::explain`]: the image-only and the EHR-fused embedding with both heads' scores;
//! - [`Engine::signature`]: the encoder's [CLS] of a fixed card, to match embedding maps.
//!
//! Projections use the pretraining's target head and prototypes, which only files exported
//! with `--prototypes-from` carry ([`LearnInfo::available`]).

use burn::tensor::Tensor;
use cxr_msn::config::{LossConfig, MaskScope};
use cxr_msn::image::GreyImage;
use cxr_msn::masking::TokenMask;
use cxr_msn::pixels::Pixels;
use cxr_msn::preprocess::BatchData;
use cxr_msn::prototype_head::{PrototypeHead, cosine, encoder_signature};
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;
use cxr_msn::views::msn_views;
use serde::Serialize;

use crate::engine::{EhrInput, Engine, Prepared, Scored, read, view_pixels};

/// The largest mask ratio the page accepts (at least a few patches stay).
pub const MAX_MASK_RATIO: f64 = 0.95;
/// The most Sinkhorn iterations the page runs.
pub const MAX_SINKHORN_ITERATIONS: usize = 100;

/// What learn mode can show for a model, and the settings it was pretrained with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LearnInfo {
    /// Whether the file carries the projection head and prototypes.
    pub available: bool,
    /// Why not, for people.
    pub reason: Option<String>,
    /// K.
    pub prototypes: usize,
    /// d_out.
    pub projection_dim: usize,
    /// D.
    pub embedding_dim: usize,
    /// tau.
    pub temperature: f64,
    /// T.
    pub sharpen_temperature: f64,
    /// Sinkhorn iterations of the loss.
    pub sinkhorn_iterations: usize,
    /// Weight of the me-max term.
    pub me_max_weight: f64,
    /// Pretraining mask ratio.
    pub mask_ratio: f64,
    /// `all-anchors` or `large-anchor-only`.
    pub mask_scope: String,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Evaluation input side.
    pub image_size: usize,
    /// Patches per side of the evaluation view.
    pub grid: usize,
    /// Focal views per image.
    pub focal_views: usize,
    /// Side of a focal view.
    pub focal_size: usize,
    /// Side of the target and random anchor.
    pub large_size: usize,
}

/// The evaluation view with and without a token mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Masked {
    /// Patches per side.
    pub grid: usize,
    /// Patches in all.
    pub total: usize,
    /// Kept patch indices, ascending, row-major over the grid.
    pub kept: Vec<u32>,
    /// The seed of the mask.
    pub seed: u64,
    /// The mask ratio.
    pub ratio: f64,
    /// [CLS] without the mask, `[D]`.
    pub cls_full: Vec<f32>,
    /// [CLS] with the mask, `[D]`.
    pub cls_masked: Vec<f32>,
    /// cosine(cls_full, cls_masked).
    pub cosine: f32,
    /// Projections (full, masked), `[2][d_out]`, when the model has a projection head.
    pub z: Option<Vec<Vec<f32>>>,
}

/// One view drawn for pretraining.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct View {
    /// `target`, `anchor`, `focal 1`, ...
    pub name: String,
    /// Side in pixels.
    pub size: usize,
    /// Patches per side.
    pub grid: usize,
    /// Kept patches when the view is masked.
    pub kept: Option<Vec<u32>>,
    /// 8-bit grey pixels, row-major.
    pub pixels: Vec<u8>,
}

/// The views of one image and their projections.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Views {
    /// The seed they were drawn with.
    pub seed: u64,
    /// The anchors' mask ratio.
    pub ratio: f64,
    /// Target, random anchor, focal views.
    pub views: Vec<View>,
    /// One projection per view, `[M + 1][d_out]`, when the model has a projection head.
    pub z: Option<Vec<Vec<f32>>>,
}

/// Prototype assignments of a few projections (see `PrototypeHead::assign`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assigned {
    /// `[N][K]`.
    pub probs: Vec<Vec<f32>>,
    /// Row 0 sharpened, `[K]`.
    pub target: Vec<f32>,
    /// Per row, against the sharpened target.
    pub ce: Vec<f32>,
    /// Per row, nats.
    pub entropy: Vec<f32>,
    /// The five largest `(prototype, probability)` of each row.
    pub top: Vec<Vec<(usize, f32)>>,
}

/// The Sinkhorn-Knopp step on a batch (see `PrototypeHead::balance`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sinkhorn {
    /// Sharpened assignments `[B][K]`.
    pub before: Vec<Vec<f32>>,
    /// Balanced `[B][K]`.
    pub after: Vec<Vec<f32>>,
    /// Column sums before, `[K]`.
    pub mass_before: Vec<f32>,
    /// Column sums after, `[K]` (near B / K each; equal at convergence).
    pub mass_after: Vec<f32>,
    /// B.
    pub rows: usize,
}

/// The image with and without its EHR.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    /// Label names.
    pub labels: Vec<String>,
    /// Image-only probabilities.
    pub image: Vec<f32>,
    /// Image + EHR probabilities, when the EHR is complete and the model has the head.
    pub image_ehr: Option<Vec<f32>>,
    /// Why there is no image + EHR score.
    pub image_ehr_missing: Option<String>,
    /// Image-only [CLS], `[D]`.
    pub cls: Vec<f32>,
    /// `g(concat(cls, f_ehr(ehr)))`, `[D]`: the fusion of the image + EHR head (seeded from
    /// pretraining's anchor branch).
    pub fused: Option<Vec<f32>>,
    /// cosine(cls, fused).
    pub cosine: Option<f32>,
    /// Projection of the image-only embedding.
    pub z_image: Option<Vec<f32>>,
    /// Projection of the fused embedding.
    pub z_fused: Option<Vec<f32>>,
}

fn check_ratio(ratio: f64) -> Result<(), String> {
    if !(0.0..=MAX_MASK_RATIO).contains(&ratio) {
        return Err(format!(
            "the mask ratio must be between 0 and {MAX_MASK_RATIO}, not {ratio}"
        ));
    }
    Ok(())
}

fn top5(row: &[f32]) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order.into_iter().take(5).map(|k| (k, row[k])).collect()
}

fn column_sums(rows: &[Vec<f32>]) -> Vec<f32> {
    let k = rows.first().map_or(0, Vec::len);
    (0..k).map(|c| rows.iter().map(|r| r[c]).sum()).collect()
}

impl Engine {
    /// The prototype head on the model's device, or why learn mode cannot project.
    fn head(&self) -> Option<&PrototypeHead> {
        self.model.prototype_head.as_ref()
    }

    /// The loss settings of the model with the page's temperatures, checked.
    fn loss(&self, temperature: f64, sharpen: f64) -> Result<LossConfig, String> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !ok(temperature) || !ok(sharpen) {
            return Err(format!(
                "temperatures must be positive numbers (got {temperature} and {sharpen})"
            ));
        }
        Ok(LossConfig {
            temperature,
            sharpen_temperature: sharpen,
            ..self.meta.config.loss.clone()
        })
    }

    /// Views as the encoder's input: grey `[N, 1, S, S]` with the model's normalisation.
    fn batch(&self, views: &[&GreyImage]) -> Result<Pixels, String> {
        Ok(BatchData::pack(views, &self.meta.normalization)
            .map_err(|e| e.to_string())?
            .to_tensor(&self.device))
    }

    /// Projections `[N][d_out]` of embeddings `[N, D]`, when the model has a head.
    async fn project(&self, cls: Tensor<2>) -> Result<Option<Vec<Vec<f32>>>, String> {
        let Some(head) = self.head() else {
            return Ok(None);
        };
        let d = head.projection_dim();
        let z = read(head.project(cls)).await?;
        Ok(Some(z.chunks(d).map(<[f32]>::to_vec).collect()))
    }

    /// What learn mode can show, with the model's pretraining settings.
    pub fn learn_info(&self) -> LearnInfo {
        let c = &self.meta.config;
        let head = self.head();
        LearnInfo {
            available: head.is_some(),
            reason: head.is_none().then(|| {
                "this model file has no prototypes: export it with `cxr-msn export \
                 --prototypes-from RUN/checkpoint.safetensors` to see them"
                    .to_string()
            }),
            prototypes: head.map_or(c.num_prototypes, PrototypeHead::prototypes),
            projection_dim: head.map_or(c.head.d_out, PrototypeHead::projection_dim),
            embedding_dim: c.vit.dim,
            temperature: c.loss.temperature,
            sharpen_temperature: c.loss.sharpen_temperature,
            sinkhorn_iterations: c.loss.sinkhorn_iterations,
            me_max_weight: c.loss.me_max_weight,
            mask_ratio: c.mask_ratio,
            mask_scope: match c.mask_scope {
                MaskScope::AllAnchors => "all-anchors",
                MaskScope::LargeAnchorOnly => "large-anchor-only",
            }
            .to_string(),
            patch_size: c.vit.patch_size,
            image_size: c.vit.image_size,
            grid: c.vit.image_size / c.vit.patch_size,
            focal_views: c.views.focal_views,
            focal_size: c.views.focal_size,
            large_size: c.views.large_size,
        }
    }

    /// The evaluation view without and with a random mask of `ratio` drawn from `seed`.
    pub async fn masked(&self, image: &Prepared, ratio: f64, seed: u64) -> Result<Masked, String> {
        check_ratio(ratio)?;
        let encoder = &self.model.encoder;
        let total = encoder.patches_for(image.view.width);
        let mask = TokenMask::sample(1, total, ratio, &mut StdRng::seed_from_u64(seed));
        let images = self.batch(&[&image.view])?;
        let full = encoder.forward(images.clone(), None);
        let masked = encoder.forward(images, Some(mask.to_tensor(&self.device)));
        let both = Tensor::cat(vec![full, masked], 0);
        let cls = read(both.clone()).await?;
        let (cls_full, cls_masked) = cls.split_at(cls.len() / 2);
        Ok(Masked {
            grid: image.view.width / encoder.patch_size,
            total,
            kept: mask.keep[0].clone(),
            seed,
            ratio,
            cosine: cosine(cls_full, cls_masked),
            cls_full: cls_full.to_vec(),
            cls_masked: cls_masked.to_vec(),
            z: self.project(both).await?,
        })
    }

    /// The views pretraining draws from the image with `seed`: target, random anchor and
    /// focal views, the anchors masked at `ratio` as the model's mask scope says.
    pub async fn views(&self, image: &Prepared, seed: u64, ratio: f64) -> Result<Views, String> {
        check_ratio(ratio)?;
        let config = &self.meta.config;
        let encoder = &self.model.encoder;
        let mut rng = StdRng::seed_from_u64(seed);
        // The image as the trainer loads it, so these are views training could draw.
        let drawn = msn_views(&image.image, &config.views, &mut rng);
        let mask_focal = config.mask_scope == MaskScope::AllAnchors;
        let mask_for = |rows: usize, size: usize, rng: &mut StdRng| {
            (ratio > 0.0).then(|| TokenMask::sample(rows, encoder.patches_for(size), ratio, rng))
        };
        let anchor_mask = mask_for(1, drawn.anchor.width, &mut rng);
        let focal_mask = if mask_focal && !drawn.focal.is_empty() {
            mask_for(drawn.focal.len(), config.views.focal_size, &mut rng)
        } else {
            None
        };

        let mut cls = vec![
            encoder.forward(self.batch(&[&drawn.target])?, None),
            encoder.forward(
                self.batch(&[&drawn.anchor])?,
                anchor_mask.as_ref().map(|m| m.to_tensor(&self.device)),
            ),
        ];
        if !drawn.focal.is_empty() {
            let focal: Vec<&GreyImage> = drawn.focal.iter().collect();
            cls.push(encoder.forward(
                self.batch(&focal)?,
                focal_mask.as_ref().map(|m| m.to_tensor(&self.device)),
            ));
        }
        let z = self.project(Tensor::cat(cls, 0)).await?;

        let view = |name: String, img: &GreyImage, kept: Option<Vec<u32>>| View {
            name,
            size: img.width,
            grid: img.width / encoder.patch_size,
            kept,
            pixels: view_pixels(img),
        };
        let mut views = vec![
            view("target".into(), &drawn.target, None),
            view(
                "anchor".into(),
                &drawn.anchor,
                anchor_mask.map(|m| m.keep[0].clone()),
            ),
        ];
        for (i, img) in drawn.focal.iter().enumerate() {
            let kept = focal_mask.as_ref().map(|m| m.keep[i].clone());
            views.push(view(format!("focal {}", i + 1), img, kept));
        }
        Ok(Views {
            seed,
            ratio,
            views,
            z,
        })
    }

    /// Assignments of projections `z` (row 0 the target) at the given temperatures.
    pub fn assign(
        &self,
        z: &[Vec<f32>],
        temperature: f64,
        sharpen: f64,
    ) -> Result<Assigned, String> {
        let head = self
            .cpu_head
            .as_ref()
            .ok_or("this model file has no prototypes")?;
        let a = head.assign(z, &self.loss(temperature, sharpen)?)?;
        Ok(Assigned {
            top: a.probs.iter().map(|r| top5(r)).collect(),
            probs: a.probs,
            target: a.target,
            ce: a.cross_entropy,
            entropy: a.entropy,
        })
    }

    /// The Sinkhorn-Knopp step on a batch of projections `z` (one per image).
    pub fn balance(
        &self,
        z: &[Vec<f32>],
        temperature: f64,
        sharpen: f64,
        iterations: usize,
    ) -> Result<Sinkhorn, String> {
        let head = self
            .cpu_head
            .as_ref()
            .ok_or("this model file has no prototypes")?;
        if iterations > MAX_SINKHORN_ITERATIONS {
            return Err(format!(
                "at most {MAX_SINKHORN_ITERATIONS} Sinkhorn iterations, not {iterations}"
            ));
        }
        let loss = LossConfig {
            sinkhorn_iterations: iterations,
            ..self.loss(temperature, sharpen)?
        };
        let b = head.balance(z, &loss)?;
        Ok(Sinkhorn {
            mass_before: column_sums(&b.before),
            mass_after: column_sums(&b.after),
            rows: b.before.len(),
            before: b.before,
            after: b.after,
        })
    }

    /// The image's embedding and scores without and with the EHR given.
    pub async fn explain(&self, image: &Prepared, ehr: &EhrInput) -> Result<Explained, String> {
        let Scored {
            prediction,
            cls,
            ehr,
        } = self.score(image, ehr).await?;
        // Without the EHR the head needs there is no fused embedding (the prediction says
        // why).
        let fusion = match (&self.model.fused_head, ehr) {
            (Some(head), Some(e)) => Some(head.fusion.forward(cls.clone(), e)),
            _ => None,
        };
        let cls_values = read(cls.clone()).await?;
        let z_image = self.project(cls).await?.map(|mut z| z.remove(0));
        let (fused, z_fused) = match fusion {
            Some(f) => {
                let values = read(f.clone()).await?;
                (
                    Some(values),
                    self.project(f).await?.map(|mut z| z.remove(0)),
                )
            }
            None => (None, None),
        };
        Ok(Explained {
            labels: prediction.labels,
            image: prediction.image,
            image_ehr: prediction.image_ehr,
            image_ehr_missing: prediction.image_ehr_missing,
            cosine: fused.as_ref().map(|f| cosine(&cls_values, f)),
            cls: cls_values,
            fused,
            z_image,
            z_fused,
        })
    }

    /// The encoder's [CLS] of the reference card (`cxr_msn::prototype_head`), `[D]`.
    pub async fn signature(&self) -> Result<Vec<f32>, String> {
        let size = self.meta.config.vit.image_size;
        read(encoder_signature(
            &self.model.encoder,
            size,
            &self.meta.normalization,
            &self.device,
        )?)
        .await
    }
}
