//! The multimodal Masked Siamese Network (Shurrab et al. 2024, arXiv 2407.04449): an MSN
//! whose anchor branch also sees EHR data. Without an EHR branch it is vanilla MSN.
//!
//! ```text
//! target  x_t [B, C, 224, 224]        -> target_vit -> target_head       -> z_t [B, d_out]
//! anchors x_a [m*B, C, S, S] per size -> mask -> anchor_vit -> v [M*B, D]
//! EHR     e [B, ehr_in]               -> f_ehr -> repeat M times -> [M*B, ehr_dim]
//! fused   g(concat(v, e))             -> anchor_head                     -> z_a [M*B, d_out]
//! loss    msn_loss(z_a, z_t, prototypes)
//! ```
//! The target branch is an exponential moving average of the anchor ViT and head
//! ([`MultimodalMsn::ema_update`]); it never receives a gradient and never sees EHR.

use burn::module::{Initializer, Module, Param};
use burn::tensor::{Device, Tensor};
use rand::Rng;

use crate::classifier::Classifier;
use crate::config::{HeadBnGrouping, MaskScope, MsnConfig};
use crate::ema;
use crate::error::{ConfigError, ShapeError};
use crate::heads::{EhrFusion, ProjectionHead};
use crate::loss::{MsnLossOutput, msn_loss};
use crate::masking::TokenMask;
use crate::pixels::Pixels;
use crate::vit::VisionTransformer;

/// The full pretraining model: anchor branch, EMA target branch and prototypes.
#[derive(Module, Debug)]
pub struct MultimodalMsn {
    /// Anchor (student) encoder; trained.
    pub anchor_vit: VisionTransformer,
    /// Anchor projection head h; trained.
    pub anchor_head: ProjectionHead,
    /// f_ehr and g; `None` for vanilla MSN.
    pub ehr: Option<EhrFusion>,
    /// EMA copy of the anchor encoder; no gradient.
    pub target_vit: VisionTransformer,
    /// EMA copy of the anchor head; no gradient.
    pub target_head: ProjectionHead,
    /// Prototypes `[K, d_out]`; frozen or learned per the configuration.
    pub prototypes: Param<Tensor<2>>,
}

/// One group of anchor views of the same size, view-major: `[m*B, C, S, S]` where rows
/// `j*B .. (j+1)*B` are view j of images 0..B.
#[derive(Debug, Clone)]
pub struct AnchorGroup {
    /// The views.
    pub images: Pixels,
}

/// The inputs of one pretraining step.
#[derive(Debug, Clone)]
pub struct MsnBatch {
    /// Target views `[B, C, 224, 224]`.
    pub target: Pixels,
    /// Anchor views grouped by size, larger first (the 224 anchor, then the focal views).
    pub anchors: Vec<AnchorGroup>,
    /// Encoded EHR `[B, ehr_in]`; required exactly when the model has an EHR branch.
    pub ehr: Option<Tensor<2>>,
}

impl MsnBatch {
    /// The inputs of images `start .. start + len` alone: their targets and EHR rows, and
    /// from each anchor group their views, view-major again (rows `j * B + i` of the whole
    /// batch become rows `j * len + (i - start)`). Up to the projection head each image's
    /// views are computed independently of the other images', so a batch can be encoded
    /// part by part ([`MultimodalMsn::anchor_embeddings`]); the head and the loss couple
    /// the whole batch.
    ///
    /// # Panics
    /// When the part does not lie inside the batch.
    pub fn part(&self, start: usize, len: usize) -> MsnBatch {
        let b = self.target.dims()[0];
        assert!(
            start + len <= b && len > 0,
            "images {start}..{} of a batch of {b}",
            start + len
        );
        let anchors = self
            .anchors
            .iter()
            .map(|group| {
                let views = group.images.dims()[0] / b;
                let rows = (0..views)
                    .map(|j| group.images.clone().narrow(j * b + start, len))
                    .collect();
                AnchorGroup {
                    images: Pixels::cat(rows),
                }
            })
            .collect();
        MsnBatch {
            target: self.target.clone().narrow(start, len),
            anchors,
            ehr: self.ehr.clone().map(|e| e.narrow(0, start, len)),
        }
    }
}

/// The outputs of the pretraining forward pass.
#[derive(Debug, Clone)]
pub struct MsnForward {
    /// Projected anchors `[M*B, d_out]`, view-major, in the order of the groups.
    pub anchors: Tensor<2>,
    /// Projected targets `[B, d_out]`, detached.
    pub targets: Tensor<2>,
}

impl MsnConfig {
    /// Builds the model: random anchor branch, target branch equal to it (with its own
    /// parameter ids, no gradient), prototypes uniform in +-1/sqrt(d_out) as in MSN.
    /// Random values come from the device's generator: call `device.seed(seed)` first for
    /// a reproducible initialisation.
    pub fn init(&self, device: &Device) -> Result<MultimodalMsn, ConfigError> {
        self.validate()?;
        let anchor_vit = self.vit.init(device);
        let anchor_head = self.head.init(device);
        let bound = 1.0 / (self.head.d_out as f64).sqrt();
        let prototypes = Initializer::Uniform {
            min: -bound,
            max: bound,
        }
        .init([self.num_prototypes, self.head.d_out], device)
        .set_require_grad(!self.freeze_prototypes);
        let mut model = MultimodalMsn {
            target_vit: self.vit.init(device).no_grad(),
            target_head: self.head.init(device).no_grad(),
            anchor_vit,
            anchor_head,
            ehr: self.ehr.as_ref().map(|e| e.init(self.vit.dim, device)),
            prototypes,
        };
        model.ema_update(0.0);
        Ok(model)
    }
}

impl MultimodalMsn {
    /// Checks a batch against the model and the configuration before any work is done.
    pub fn check_batch(&self, batch: &MsnBatch) -> Result<(), ShapeError> {
        let mismatch = |what: &str, expected: String, got: String| {
            Err(ShapeError::Mismatch {
                what: what.into(),
                expected,
                got,
            })
        };
        let tdims = batch.target.dims();
        self.anchor_vit.check_input(&batch.target)?;
        let b = tdims[0];
        if b == 0 {
            return mismatch("target batch", "at least one image".into(), "0".into());
        }
        if batch.anchors.is_empty() {
            return mismatch("anchors", "at least one group".into(), "none".into());
        }
        for group in &batch.anchors {
            let dims = group.images.dims();
            self.anchor_vit.check_input(&group.images)?;
            if dims[0] % b != 0 || dims[0] == 0 {
                return mismatch(
                    "anchor group",
                    format!("a positive multiple of the {b} targets"),
                    format!("{} views", dims[0]),
                );
            }
        }
        match (&self.ehr, &batch.ehr) {
            (None, None) => Ok(()),
            (Some(f), Some(e)) => {
                let want = [b, f.ehr_in()];
                if e.dims() != want {
                    return mismatch("EHR", format!("{want:?}"), format!("{:?}", e.dims()));
                }
                Ok(())
            }
            (Some(f), None) => mismatch(
                "EHR",
                format!("[{b}, {}] (the model has an EHR branch)", f.ehr_in()),
                "none".into(),
            ),
            (None, Some(e)) => mismatch(
                "EHR",
                "none (vanilla MSN has no EHR branch)".into(),
                format!("{:?}", e.dims()),
            ),
        }
    }

    /// Checks hand-made masks against a batch: one entry per anchor group, each fitting its
    /// group's views and patch count.
    pub fn check_masks(
        &self,
        batch: &MsnBatch,
        masks: &[Option<TokenMask>],
    ) -> Result<(), ShapeError> {
        if masks.len() != batch.anchors.len() {
            return Err(ShapeError::Mismatch {
                what: "token masks".into(),
                expected: format!(
                    "one entry (or None) per anchor group: {}",
                    batch.anchors.len()
                ),
                got: masks.len().to_string(),
            });
        }
        for (group, mask) in batch.anchors.iter().zip(masks) {
            if let Some(mask) = mask {
                let [rows, _, s, _] = group.images.dims();
                mask.check(rows, self.anchor_vit.patches_for(s))?;
            }
        }
        Ok(())
    }

    /// [`Self::check_batch`], then [`Self::check_masks`]: what the pretraining forward
    /// passes require before any work.
    ///
    /// # Panics
    /// With the first problem either finds.
    pub fn assert_valid(&self, batch: &MsnBatch, masks: &[Option<TokenMask>]) {
        if let Err(e) = self
            .check_batch(batch)
            .and_then(|_| self.check_masks(batch, masks))
        {
            panic!("invalid MSN batch: {e}");
        }
    }

    /// Draws the token masks of a batch's anchor groups from `rng`: every group under
    /// [`MaskScope::AllAnchors`], only the first (224 px) group under
    /// [`MaskScope::LargeAnchorOnly`], none when the mask ratio is 0.
    pub fn sample_masks(
        &self,
        batch: &MsnBatch,
        config: &MsnConfig,
        rng: &mut impl Rng,
    ) -> Vec<Option<TokenMask>> {
        batch
            .anchors
            .iter()
            .enumerate()
            .map(|(i, group)| {
                let [rows, _, s, _] = group.images.dims();
                let masked = config.mask_ratio > 0.0
                    && match config.mask_scope {
                        MaskScope::AllAnchors => true,
                        MaskScope::LargeAnchorOnly => i == 0,
                    };
                masked.then(|| {
                    TokenMask::sample(rows, self.anchor_vit.patches_for(s), config.mask_ratio, rng)
                })
            })
            .collect()
    }

    /// The pretraining forward pass (see the module docs) with the given token masks, one
    /// per anchor group (from [`Self::sample_masks`], or chosen by hand).
    ///
    /// With [`HeadBnGrouping::PerViewSize`] the head runs once per group, so BatchNorm
    /// statistics are per view size; with [`HeadBnGrouping::AllAnchors`] once over all.
    ///
    /// # Panics
    /// On a batch that fails [`Self::check_batch`] or masks that fail [`Self::check_masks`].
    pub fn forward_pretrain(
        &self,
        batch: MsnBatch,
        masks: &[Option<TokenMask>],
        config: &MsnConfig,
    ) -> MsnForward {
        self.assert_valid(&batch, masks);
        let targets = self.project_targets(self.target_vit.forward(batch.target, None));
        let fused = self.anchor_embeddings(batch.anchors, batch.ehr, masks);
        let anchors = self.project_anchors(fused, config);
        MsnForward { anchors, targets }
    }

    /// The anchor branch before the projection head: each group's views through the
    /// masked anchor ViT and, for a multimodal model, the EHR fusion g. One `[m*B, D]` per
    /// group, view-major. Each row depends on its own image only, so a batch may be split
    /// into [`MsnBatch::part`]s here and the rows put back in order before
    /// [`Self::project_anchors`].
    pub fn anchor_embeddings(
        &self,
        anchors: Vec<AnchorGroup>,
        ehr: Option<Tensor<2>>,
        masks: &[Option<TokenMask>],
    ) -> Vec<Tensor<2>> {
        anchors
            .into_iter()
            .zip(masks)
            .map(|(group, mask)| {
                let keep = mask.as_ref().map(|m| m.to_tensor(&group.images.device()));
                let v = self.anchor_vit.forward(group.images, keep);
                match (&self.ehr, &ehr) {
                    (Some(fusion), Some(e)) => fusion.forward(v, e.clone()),
                    _ => v,
                }
            })
            .collect()
    }

    /// The anchor projection head h over the groups' embeddings (`[m*B, D]` each, from
    /// [`Self::anchor_embeddings`]): `[M*B, d_out]`. Its BatchNorm couples the rows: with
    /// [`HeadBnGrouping::PerViewSize`] statistics are per group, with
    /// [`HeadBnGrouping::AllAnchors`] over all of them.
    pub fn project_anchors(&self, fused: Vec<Tensor<2>>, config: &MsnConfig) -> Tensor<2> {
        match config.head_bn {
            HeadBnGrouping::AllAnchors => self.anchor_head.forward(Tensor::cat(fused, 0)),
            HeadBnGrouping::PerViewSize => Tensor::cat(
                fused
                    .into_iter()
                    .map(|v| self.anchor_head.forward(v))
                    .collect(),
                0,
            ),
        }
    }

    /// The target projection head over the target ViT's [CLS] embeddings `[B, D]`
    /// (`target_vit.forward(target, None)`, which may be computed part by part):
    /// `[B, d_out]`, detached.
    pub fn project_targets(&self, target_cls: Tensor<2>) -> Tensor<2> {
        self.target_head.forward(target_cls).detach()
    }

    /// The MSN loss of a forward pass.
    pub fn loss(&self, forward: &MsnForward, config: &MsnConfig) -> MsnLossOutput {
        msn_loss(
            forward.anchors.clone(),
            forward.targets.clone(),
            self.prototypes.val(),
            &config.loss,
        )
    }

    /// Moves the target branch toward the anchor branch:
    /// `target <- momentum * target + (1 - momentum) * anchor`, for the parameters of the
    /// ViT and the projection head (BatchNorm running statistics are the target's own, as
    /// in MSN). `momentum = 0` copies the anchor. Target parameters keep their ids and
    /// stay without gradient.
    pub fn ema_update(&mut self, momentum: f64) {
        ema::blend(&mut self.target_vit, &self.anchor_vit, momentum);
        ema::blend(&mut self.target_head, &self.anchor_head, momentum);
    }

    /// Restates which parameters train after values were loaded into a skeleton (loading
    /// keeps the skeleton's settings): the target branch never, the prototypes unless frozen.
    pub fn restate_gradients(self, freeze_prototypes: bool) -> Self {
        Self {
            target_vit: self.target_vit.no_grad(),
            target_head: self.target_head.no_grad(),
            prototypes: self.prototypes.set_require_grad(!freeze_prototypes),
            ..self
        }
    }

    /// The encoder kept for downstream use: the EMA target ViT.
    pub fn encoder(&self) -> VisionTransformer {
        self.target_vit.clone()
    }

    /// A downstream classifier for `labels` outputs: the EMA target ViT, a fresh image-only
    /// head and, for a multimodal model, an image + EHR head seeded with the pretrained
    /// f_ehr and g.
    pub fn classifier(&self, config: &MsnConfig, labels: usize, device: &Device) -> Classifier {
        let ehr = config.ehr.as_ref().map(|e| (e, self.ehr.clone()));
        Classifier::new(self.encoder().set_require_grad(true), labels, ehr, device)
    }
}
