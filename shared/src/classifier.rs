//! The downstream model: the pretrained image encoder with the 14-finding heads.
//! This is what `probe` and `finetune` train, what `export` writes, and what `predict`
//! and the browser run.

use burn::module::Module;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use crate::config::{EhrConfig, VitConfig};
use crate::error::ShapeError;
use crate::heads::{EhrFusion, FusedClassifier, LinearClassifier};
use crate::pixels::Pixels;
use crate::prototype_head::PrototypeHead;
use crate::vit::{Pieces, VisionTransformer};

/// Encoder plus an image-only head and, optionally, an image + EHR head.
#[derive(Module, Debug)]
pub struct Classifier {
    /// The image encoder (from pretraining: the EMA target ViT).
    pub encoder: VisionTransformer,
    /// Image-only head on [CLS].
    pub image_head: LinearClassifier,
    /// Image + EHR head, when the model has an EHR feature set.
    pub fused_head: Option<FusedClassifier>,
    /// The MSN projection head and prototypes, for the browser's learn mode; only in files
    /// written by `cxr-msn export --prototypes-from` ([`ModelMeta::prototype_head`]).
    ///
    /// [`ModelMeta::prototype_head`]: crate::checkpoint::ModelMeta::prototype_head
    pub prototype_head: Option<PrototypeHead>,
}

/// Scores of one batch.
#[derive(Debug, Clone)]
pub struct ClassifierOutput {
    /// [CLS] embeddings `[B, D]`.
    pub embedding: Tensor<2>,
    /// Image-only probabilities `[B, labels]`.
    pub image_probs: Tensor<2>,
    /// Image + EHR probabilities `[B, labels]`, when EHR was given and the model has the head.
    pub fused_probs: Option<Tensor<2>>,
    /// Attention weights of every block `[B, heads, T, T]`, when asked for.
    pub attention: Vec<Tensor<4>>,
}

impl Classifier {
    /// A classifier with fresh heads on a given encoder. `fusion` seeds the image + EHR
    /// head (pass the pretrained f_ehr and g when there are any).
    pub fn new(
        encoder: VisionTransformer,
        labels: usize,
        ehr: Option<(&EhrConfig, Option<EhrFusion>)>,
        device: &Device,
    ) -> Self {
        let dim = encoder.dim();
        let fused_head = ehr.map(|(config, fusion)| match fusion {
            Some(f) => FusedClassifier::from_fusion(f, dim, labels, device),
            None => FusedClassifier::new(dim, labels, config, device),
        });
        Self {
            image_head: LinearClassifier::new(dim, labels, device),
            encoder,
            fused_head,
            prototype_head: None,
        }
    }

    /// A classifier with a random encoder (the "random initialisation" baseline, and the
    /// skeleton a model file is loaded into).
    pub fn init(vit: &VitConfig, labels: usize, ehr: Option<&EhrConfig>, device: &Device) -> Self {
        Self::new(vit.init(device), labels, ehr.map(|e| (e, None)), device)
    }

    /// Scores images `[B, C, S, S]` with optional EHR `[B, ehr_in]`.
    pub fn forward(
        &self,
        images: impl Into<Pixels>,
        ehr: Option<Tensor<2>>,
        attention: bool,
    ) -> Result<ClassifierOutput, ShapeError> {
        let images = images.into();
        self.check(&images, ehr.as_ref())?;
        let out = self.encoder.forward_detailed(images, None, attention);
        Ok(self.heads(out.cls, ehr, out.attention))
    }

    /// [`Self::forward`] without attention weights, each encoder block cut into pieces
    /// ([`VisionTransformer::forward_in_pieces`]): for one image on a CPU's cores.
    pub fn forward_in_pieces(
        &self,
        images: impl Into<Pixels>,
        ehr: Option<Tensor<2>>,
        pieces: &dyn Pieces,
    ) -> Result<ClassifierOutput, ShapeError> {
        let images = images.into();
        self.check(&images, ehr.as_ref())?;
        let cls = self.encoder.forward_in_pieces(images, pieces);
        Ok(self.heads(cls, ehr, Vec::new()))
    }

    /// Checks images `[B, C, S, S]` against the encoder and EHR `[B, ehr_in]` against the
    /// image + EHR head, when both are there.
    fn check(&self, images: &Pixels, ehr: Option<&Tensor<2>>) -> Result<(), ShapeError> {
        self.encoder.check_input(images)?;
        let dims = images.dims();
        if let (Some(head), Some(e)) = (&self.fused_head, ehr) {
            let want = [dims[0], head.fusion.ehr_in()];
            if e.dims() != want {
                return Err(ShapeError::Mismatch {
                    what: "EHR".into(),
                    expected: format!("{want:?}"),
                    got: format!("{:?}", e.dims()),
                });
            }
        }
        Ok(())
    }

    /// Both heads' probabilities on [CLS] embeddings `[B, D]`.
    fn heads(
        &self,
        cls: Tensor<2>,
        ehr: Option<Tensor<2>>,
        attention: Vec<Tensor<4>>,
    ) -> ClassifierOutput {
        let image_probs = sigmoid(self.image_head.forward(cls.clone()));
        let fused_probs = match (&self.fused_head, ehr) {
            (Some(head), Some(e)) => Some(sigmoid(head.forward(cls.clone(), e))),
            _ => None,
        };
        ClassifierOutput {
            embedding: cls,
            image_probs,
            fused_probs,
            attention,
        }
    }
}
