//! `cxr-msn export-onnx`: a model file as an ONNX graph (opset 17) that ONNX Runtime (Python,
//! C++, C#, Java, the browser's `onnxruntime-web`) and other ONNX tools run without cxr-msn.
//!
//! Burn 0.22 reads ONNX but cannot write it, so the graph is written here, operator by
//! operator, from the model's own parameters ([`onnx_proto`](super::onnx_proto) encodes it):
//!
//! - input `image` `[batch, 1, S, S]`: grey intensities in [0, 1] of the evaluation view
//!   (`cxr-msn predict`'s: the shorter side resized to 256 px, the centre 224 px cropped).
//!   The model's pixel normalisation is folded into the patch embedding, as the model crate
//!   does on the CPU and GPU (`cxr_msn::pixels`), so the graph takes the grey plane itself;
//! - input `ehr` `[batch, E]` (classifiers with an image + EHR head, unless `--no-ehr`): the
//!   EHR features encoded as `cxr-msn` encodes its feature set (the file's metadata names
//!   the set and its columns);
//! - outputs `embedding` `[batch, D]` (the [CLS] token after the final LayerNorm, as
//!   `predict --embeddings` writes it), and for a classifier `image_probs` and `fused_probs`
//!   `[batch, labels]` (sigmoid probabilities of the image-only and image + EHR heads).
//!
//! The metadata (`metadata_props`) carries the labels, operating points, EHR columns and
//! their encoding, and the preprocessing, and the whole model-file metadata as JSON under
//! `cxr-msn.meta`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor, f16};
use clap::Args;
use cxr_msn::checkpoint::{ModelKind, ModelMeta, load_classifier, read_meta};
use cxr_msn::classifier::Classifier;
use cxr_msn::pixels::fold_patch_kernel;
use cxr_msn::pretrained::load_pretrained;
use cxr_msn::vit::{VisionTransformer, resize_position_grid};
use serde::Serialize;

use super::onnx_proto::{Attr, Dim, ElemType, Initializer, Model, Node, ValueInfo, Values};
use crate::files::write_atomic;

/// The `ai.onnx` operator set written: 17, the first with `LayerNormalization`.
pub const OPSET: i64 = 17;

/// What the `image` input takes (its doc string, and `cxr-msn.preprocessing` in the
/// metadata): cxr-msn's evaluation view (`cxr_msn::views::eval_view`).
const PREPROCESSING: &str = "one grey channel, intensities in [0, 1] (8-bit / 255, 16-bit / \
    65535), the shorter side resized to 256 px (antialiased bilinear), the centre 224 px \
    cropped; the pixel normalisation is folded into the patch embedding";

/// `cxr-msn export-onnx` settings.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ExportOnnxArgs {
    /// A cxr-msn model file: a classifier (encoder and heads, from probe, finetune or
    /// export), or a pretraining checkpoint (its encoder: embeddings only).
    pub model: PathBuf,
    /// Output .onnx file.
    #[arg(long)]
    pub out: PathBuf,
    /// Leave out the image + EHR head and its `ehr` input (the graph then takes images only).
    #[arg(long)]
    pub no_ehr: bool,
    /// Store the weights as float16: half the file. They are cast to float32 as the graph
    /// loads (`Cast` nodes, which ONNX Runtime folds when it loads the model), so the
    /// arithmetic stays float32; lossless for a model file written with `export --f16`.
    #[arg(long)]
    pub f16: bool,
}

/// `cxr-msn export-onnx`.
pub fn run(args: &ExportOnnxArgs) -> Result<String> {
    let device = Device::flex();
    let bytes = std::fs::read(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let named = || args.model.display().to_string();
    let meta = read_meta(&bytes).with_context(named)?;
    let model = match meta.kind {
        ModelKind::Classifier => {
            let (clf, meta) = load_classifier(&bytes, &device).with_context(named)?;
            onnx_model(&clf.encoder, Some(&clf), &meta, !args.no_ehr, args.f16)
        }
        ModelKind::Pretraining => {
            let (pretrained, meta) = load_pretrained(&bytes, &device).with_context(named)?;
            onnx_model(&pretrained.encoder(), None, &meta, false, args.f16)
        }
    }
    .with_context(|| format!("cannot write {} as ONNX", args.model.display()))?;
    let bytes = model.encode();
    write_atomic(&args.out, &bytes)?;
    let mut report = format!(
        "wrote {} (ONNX opset {OPSET}, {} operators, {:.1} MB, {} weights): {}\n",
        args.out.display(),
        model.nodes.len(),
        bytes.len() as f64 / 1e6,
        if args.f16 { "float16" } else { "float32" },
        super::describe_vit(&meta.config.vit)
    );
    for (what, list) in [("inputs", &model.inputs), ("outputs", &model.outputs)] {
        let items: Vec<String> = list.iter().map(describe).collect();
        report.push_str(&format!("  {what}: {}\n", items.join(", ")));
    }
    Ok(report)
}

/// `name [batch, 1, 224, 224]`.
fn describe(v: &ValueInfo) -> String {
    let dims: Vec<String> = v
        .dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Named(s) => s.clone(),
        })
        .collect();
    format!("{} [{}]", v.name, dims.join(", "))
}

/// The ONNX model of `encoder` (and, for a classifier, its heads; the image + EHR head only
/// with `ehr` and when the classifier has one), its weights stored as float16 with `f16`.
pub fn onnx_model(
    encoder: &VisionTransformer,
    classifier: Option<&Classifier>,
    meta: &ModelMeta,
    ehr: bool,
    f16: bool,
) -> Result<Model> {
    let vit = &meta.config.vit;
    let mut g = Graph {
        f16,
        ..Graph::default()
    };
    let size = vit.image_size as i64;
    g.inputs.push(ValueInfo {
        name: "image".into(),
        elem: ElemType::Float,
        dims: vec![
            Dim::Named("batch".into()),
            Dim::Fixed(1),
            Dim::Fixed(size),
            Dim::Fixed(size),
        ],
        doc: PREPROCESSING.into(),
    });
    let embedding = g.encoder(encoder, meta)?;
    g.output(
        &embedding,
        "[CLS] embedding after the final LayerNorm",
        vit.dim,
    );
    let mut metadata = vec![
        ("cxr-msn.image_size".to_string(), vit.image_size.to_string()),
        (
            "cxr-msn.preprocessing".to_string(),
            PREPROCESSING.to_string(),
        ),
        (
            "cxr-msn.meta".to_string(),
            serde_json::to_string(meta).context("cannot write the model's metadata as JSON")?,
        ),
    ];
    if let Some(clf) = classifier {
        let labels = meta.labels.len();
        let logits = g.linear(&embedding, &clf.image_head.fc, "image_head.fc")?;
        let probs = g.op("Sigmoid", "image_probs", &[&logits], vec![]);
        g.output(
            &probs,
            "image-only head: sigmoid probability per label",
            labels,
        );
        if let (Some(head), true) = (&clf.fused_head, ehr) {
            let ehr_config = meta
                .config
                .ehr
                .as_ref()
                .context("the model has an image + EHR head but no EHR feature set")?;
            let width = head.fusion.ehr_in();
            g.inputs.push(ValueInfo {
                name: "ehr".into(),
                elem: ElemType::Float,
                dims: vec![Dim::Named("batch".into()), Dim::Fixed(width as i64)],
                doc: format!(
                    "EHR feature set '{}', encoded as cxr-msn encodes it: {}",
                    ehr_config.feature_set.name(),
                    ehr_config.feature_set.columns().join(", ")
                ),
            });
            let e = g.linear("ehr", &head.fusion.f_ehr, "fused_head.fusion.f_ehr")?;
            let joined = g.op(
                "Concat",
                "fused_head.concat",
                &[&embedding, &e],
                vec![("axis", Attr::Int(1))],
            );
            let z = g.linear(&joined, &head.fusion.g, "fused_head.fusion.g")?;
            let logits = g.linear(&z, &head.fc, "fused_head.fc")?;
            let probs = g.op("Sigmoid", "fused_probs", &[&logits], vec![]);
            g.output(
                &probs,
                "image + EHR head: sigmoid probability per label",
                labels,
            );
            metadata.push((
                "cxr-msn.ehr_feature_set".into(),
                ehr_config.feature_set.name().into(),
            ));
            metadata.push((
                "cxr-msn.ehr_columns".into(),
                serde_json::to_string(&ehr_config.feature_set.columns())?,
            ));
            let encoding: Vec<String> = ehr_config
                .feature_set
                .fields()
                .iter()
                .map(|f| f.encoding())
                .collect();
            metadata.push(("cxr-msn.ehr_encoding".into(), encoding.join("; ")));
        }
        metadata.push((
            "cxr-msn.labels".into(),
            serde_json::to_string(&meta.labels)?,
        ));
        metadata.push((
            "cxr-msn.operating_points".into(),
            serde_json::to_string(&meta.operating_points)?,
        ));
    }
    for init in &g.initializers {
        debug_assert_eq!(init.value_count(), init.expected_count(), "{}", init.name);
    }
    Ok(Model {
        producer: "cxr-msn".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc: format!(
            "cxr-msn {} model: {}",
            match classifier {
                Some(_) => "classifier",
                None => "encoder",
            },
            super::describe_vit(vit)
        ),
        graph_name: "cxr-msn".into(),
        opset: OPSET,
        nodes: g.nodes,
        initializers: g.initializers,
        inputs: g.inputs,
        outputs: g.outputs,
        metadata,
    })
}

/// A graph under construction: every node's single output carries the node's name.
#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
    initializers: Vec<Initializer>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    /// Store [`Self::constant`]'s values as float16, cast to float32 in the graph.
    f16: bool,
}

/// A tensor's values as f32, row-major.
fn values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read a tensor's values: {e:?}"))
}

impl Graph {
    /// `op(inputs)` named `name`; returns the output's name (the same).
    fn op(
        &mut self,
        op: &'static str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<(&'static str, Attr)>,
    ) -> String {
        self.nodes.push(Node {
            op,
            name: name.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![name.into()],
            attributes,
        });
        name.into()
    }

    /// A float constant computed from parameters (the folded patch embedding, the position
    /// embedding at the input's grid, [CLS] plus its position): float32 always, since its
    /// values are not the model file's (a float16 copy would round them once more).
    fn derived<const D: usize>(&mut self, name: &str, t: Tensor<D>) -> Result<String> {
        let dims = t.dims().iter().map(|&d| d as i64).collect();
        self.initializers.push(Initializer {
            name: name.into(),
            dims,
            values: Values::F32(values(t)?),
        });
        Ok(name.into())
    }

    /// A parameter as a float constant; with `f16`, stored as float16 under `{name}.f16`
    /// and cast to float32 as `name`.
    fn constant<const D: usize>(&mut self, name: &str, t: Tensor<D>) -> Result<String> {
        if !self.f16 {
            return self.derived(name, t);
        }
        let dims = t.dims().iter().map(|&d| d as i64).collect();
        let values = values(t)?;
        if let Some(v) = values.iter().find(|v| v.abs() > f16::MAX.to_f32()) {
            bail!("{name} holds {v}, beyond float16's range: export it without --f16");
        }
        let stored = format!("{name}.f16");
        let halves = values.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        self.initializers.push(Initializer {
            name: stored.clone(),
            dims,
            values: Values::F16(halves),
        });
        let to = ("to", Attr::Int(ElemType::Float as i64));
        Ok(self.op("Cast", name, &[&stored], vec![to]))
    }

    /// A float scalar constant.
    fn scalar(&mut self, name: &str, value: f32) -> String {
        self.initializers.push(Initializer {
            name: name.into(),
            dims: Vec::new(),
            values: Values::F32(vec![value]),
        });
        name.into()
    }

    /// An int64 constant: a vector, or a scalar when `scalar`.
    fn ints(&mut self, name: &str, values: &[i64], scalar: bool) -> String {
        self.initializers.push(Initializer {
            name: name.into(),
            dims: if scalar {
                Vec::new()
            } else {
                vec![values.len() as i64]
            },
            values: Values::I64(values.to_vec()),
        });
        name.into()
    }

    /// A graph output of shape `[batch, width]`.
    fn output(&mut self, name: &str, doc: &str, width: usize) {
        self.outputs.push(ValueInfo {
            name: name.into(),
            elem: ElemType::Float,
            dims: vec![Dim::Named("batch".into()), Dim::Fixed(width as i64)],
            doc: doc.into(),
        });
    }

    /// `x W + b` (Burn's `W` is `[in, out]`, MatMul's right operand as it is).
    fn linear(&mut self, x: &str, layer: &Linear, name: &str) -> Result<String> {
        let w = self.constant(&format!("{name}.weight"), layer.weight.val())?;
        let product = self.op("MatMul", &format!("{name}.matmul"), &[x, &w], vec![]);
        match &layer.bias {
            Some(b) => {
                let b = self.constant(&format!("{name}.bias"), b.val())?;
                Ok(self.op("Add", name, &[&product, &b], vec![]))
            }
            None => Ok(product),
        }
    }

    /// LayerNormalization over the last axis.
    fn layer_norm(&mut self, x: &str, norm: &LayerNorm, eps: f64, name: &str) -> Result<String> {
        let gamma = self.constant(&format!("{name}.weight"), norm.gamma.val())?;
        let mut inputs = vec![x.to_string(), gamma];
        if let Some(beta) = &norm.beta {
            inputs.push(self.constant(&format!("{name}.bias"), beta.val())?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.op(
            "LayerNormalization",
            name,
            &inputs,
            vec![
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(eps as f32)),
            ],
        ))
    }

    /// The encoder from `image` to the [CLS] embedding `[batch, D]`; returns its name.
    fn encoder(&mut self, vit: &VisionTransformer, meta: &ModelMeta) -> Result<String> {
        let config = &meta.config.vit;
        let (s, p, d) = (config.image_size, vit.patch_size, config.dim);
        if s % p != 0 || s == 0 {
            bail!("image size {s} is not a positive multiple of the patch size {p}");
        }
        let grid = s / p;
        let eps = config.layer_norm_eps;
        let conv = &vit.patch_embed.proj;
        let [_, channels, _, _] = conv.weight.val().dims();
        let norm = &meta.normalization;
        if norm.mean.len() != channels || norm.std.len() != channels {
            bail!(
                "the normalisation has {} means and {} standard deviations for a patch \
                 embedding of {channels} channels",
                norm.mean.len(),
                norm.std.len()
            );
        }
        let bias = match &conv.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([d], &conv.weight.val().device()),
        };
        // The normalisation folded in: a kernel [D, 1, P, P] on the grey plane.
        let (w, b) = fold_patch_kernel(conv.weight.val(), bias, norm);
        let w = self.derived("patch_embed.proj.weight", w)?;
        let b = self.derived("patch_embed.proj.bias", b)?;
        let pp = vec![p as i64, p as i64];
        let patches = self.op(
            "Conv",
            "patch_embed.proj",
            &["image", &w, &b],
            vec![
                ("kernel_shape", Attr::Ints(pp.clone())),
                ("strides", Attr::Ints(pp)),
            ],
        );
        // [B, D, g, g] -> [B, D, g*g] -> [B, g*g, D]
        let shape = self.ints("patch_embed.shape", &[0, d as i64, -1], false);
        let flat = self.op("Reshape", "patch_embed.flat", &[&patches, &shape], vec![]);
        let tokens = self.op(
            "Transpose",
            "patch_embed.tokens",
            &[&flat],
            vec![("perm", Attr::Ints(vec![0, 2, 1]))],
        );
        let pos = resize_position_grid(vit.pos_embed.val(), grid);
        let patch_pos = self.derived("pos_embed.patches", pos.clone().narrow(1, 1, grid * grid))?;
        let tokens = self.op("Add", "pos_embed.add", &[&tokens, &patch_pos], vec![]);
        // [CLS] with its position, repeated over the batch: [B, 1, D].
        let cls = self.derived(
            "cls_token.with_pos",
            vit.cls_token.val() + pos.narrow(1, 0, 1),
        )?;
        let batch = self.op(
            "Shape",
            "batch",
            &["image"],
            vec![("start", Attr::Int(0)), ("end", Attr::Int(1))],
        );
        let rest = self.ints("cls_token.shape_rest", &[1, d as i64], false);
        let cls_shape = self.op(
            "Concat",
            "cls_token.shape",
            &[&batch, &rest],
            vec![("axis", Attr::Int(0))],
        );
        let cls = self.op("Expand", "cls_token.batch", &[&cls, &cls_shape], vec![]);
        let mut x = self.op(
            "Concat",
            "tokens",
            &[&cls, &tokens],
            vec![("axis", Attr::Int(1))],
        );

        let heads = config.heads as i64;
        let hd = d as i64 / heads;
        let qkv_shape = self.ints("attn.qkv_shape", &[0, 0, 3, heads, hd], false);
        let merged_shape = self.ints("attn.merged_shape", &[0, 0, d as i64], false);
        let index: Vec<String> = (0..3)
            .map(|i| self.ints(&format!("index.{i}"), &[i], true))
            .collect();
        let scale = self.scalar("attn.scale", (hd as f64).powf(-0.5) as f32);
        let sqrt2 = self.scalar("gelu.sqrt2", std::f32::consts::SQRT_2);
        let one = self.scalar("gelu.one", 1.0);
        let half = self.scalar("gelu.half", 0.5);
        for (i, block) in vit.blocks.iter().enumerate() {
            let at = |part: &str| format!("blocks.{i}.{part}");
            let h = self.layer_norm(&x, &block.norm1, eps, &at("norm1"))?;
            // Attention: [B, T, 3D] -> [B, T, 3, H, hd] -> [3, B, H, T, hd].
            let qkv = self.linear(&h, &block.attn.qkv, &at("attn.qkv"))?;
            let qkv = self.op(
                "Reshape",
                &at("attn.qkv_heads"),
                &[&qkv, &qkv_shape],
                vec![],
            );
            let qkv = self.op(
                "Transpose",
                &at("attn.qkv_split"),
                &[&qkv],
                vec![("perm", Attr::Ints(vec![2, 0, 3, 1, 4]))],
            );
            let part = |g: &mut Self, j: usize, name: &str| {
                g.op(
                    "Gather",
                    &at(&format!("attn.{name}")),
                    &[&qkv, &index[j]],
                    vec![("axis", Attr::Int(0))],
                )
            };
            let (q, k, v) = (part(self, 0, "q"), part(self, 1, "k"), part(self, 2, "v"));
            let kt = self.op(
                "Transpose",
                &at("attn.k_t"),
                &[&k],
                vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
            );
            let scores = self.op("MatMul", &at("attn.scores"), &[&q, &kt], vec![]);
            let scores = self.op("Mul", &at("attn.scaled"), &[&scores, &scale], vec![]);
            let weights = self.op(
                "Softmax",
                &at("attn.weights"),
                &[&scores],
                vec![("axis", Attr::Int(-1))],
            );
            let out = self.op("MatMul", &at("attn.heads"), &[&weights, &v], vec![]);
            let out = self.op(
                "Transpose",
                &at("attn.heads_t"),
                &[&out],
                vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
            );
            let out = self.op(
                "Reshape",
                &at("attn.merged"),
                &[&out, &merged_shape],
                vec![],
            );
            let out = self.linear(&out, &block.attn.proj, &at("attn.proj"))?;
            x = self.op("Add", &at("attn.residual"), &[&x, &out], vec![]);
            // MLP with the exact GELU: x * (1 + erf(x / sqrt 2)) / 2.
            let h = self.layer_norm(&x, &block.norm2, eps, &at("norm2"))?;
            let h = self.linear(&h, &block.mlp.fc1, &at("mlp.fc1"))?;
            let e = self.op("Div", &at("mlp.gelu.div"), &[&h, &sqrt2], vec![]);
            let e = self.op("Erf", &at("mlp.gelu.erf"), &[&e], vec![]);
            let e = self.op("Add", &at("mlp.gelu.add"), &[&e, &one], vec![]);
            let e = self.op("Mul", &at("mlp.gelu.mul"), &[&h, &e], vec![]);
            let h = self.op("Mul", &at("mlp.gelu"), &[&e, &half], vec![]);
            let h = self.linear(&h, &block.mlp.fc2, &at("mlp.fc2"))?;
            x = self.op("Add", &at("mlp.residual"), &[&x, &h], vec![]);
        }
        let cls = self.op(
            "Gather",
            "cls",
            &[&x, &index[0]],
            vec![("axis", Attr::Int(1))],
        );
        self.layer_norm(&cls, &vit.norm, eps, "embedding")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxr_msn::config::{MsnConfig, VitPreset};
    use cxr_msn::ehr::FeatureSet;

    /// Every node's inputs are graph inputs, initializers or earlier nodes' outputs (ONNX
    /// wants the nodes in an order that computes each value before its use), every name is
    /// produced once, and the outputs are produced.
    #[test]
    fn the_graph_is_in_order_with_unique_names() {
        let device = Device::flex();
        let mut config = MsnConfig::paper(VitPreset::Tiny)
            .with_ehr(FeatureSet::from_name("demographic").unwrap())
            .with_channels(1);
        config.vit.depth = 2;
        let clf = Classifier::init(&config.vit, 3, config.ehr.as_ref(), &device);
        let meta = ModelMeta::classifier(config, vec!["a".into(), "b".into(), "c".into()]);
        let model = onnx_model(&clf.encoder, Some(&clf), &meta, true, false).unwrap();
        let mut known = std::collections::HashSet::new();
        for name in model
            .inputs
            .iter()
            .map(|v| &v.name)
            .chain(model.initializers.iter().map(|i| &i.name))
        {
            assert!(known.insert(name.clone()), "{name} defined twice");
        }
        for node in &model.nodes {
            for input in &node.inputs {
                assert!(
                    known.contains(input),
                    "{} uses {input} before it exists",
                    node.name
                );
            }
            for output in &node.outputs {
                assert!(known.insert(output.clone()), "{output} defined twice");
            }
        }
        let outputs: Vec<&str> = model.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["embedding", "image_probs", "fused_probs"]);
        assert!(outputs.iter().all(|o| known.contains(*o)));
        for init in &model.initializers {
            assert_eq!(init.value_count(), init.expected_count(), "{}", init.name);
        }
        // Every parameter appears: the patch embedding's kernel and bias, [CLS] and the
        // position embedding, 12 per block, the final LayerNorm's 2, and 2 per head layer.
        let weights = model
            .initializers
            .iter()
            .filter(|i| matches!(i.values, Values::F32(_)) && !i.dims.is_empty())
            .count();
        assert_eq!(weights, 2 + 2 + 2 * 12 + 2 + 2 + 2 + 2 + 2);
        // Without the EHR head: one input, two outputs.
        let plain = onnx_model(&clf.encoder, Some(&clf), &meta, false, false).unwrap();
        assert_eq!(plain.inputs.len(), 1);
        assert_eq!(plain.outputs.len(), 2);
        // Float16: every parameter stored as float16 and cast back under its own name, the
        // same graph otherwise; the four constants computed from parameters (the folded
        // patch kernel and bias, the position embedding, [CLS] with its position) float32.
        let half = onnx_model(&clf.encoder, Some(&clf), &meta, true, true).unwrap();
        let stored: Vec<&Initializer> = half
            .initializers
            .iter()
            .filter(|i| matches!(i.values, Values::F16(_)))
            .collect();
        assert_eq!(stored.len(), weights - 4);
        for init in stored {
            let base = init.name.strip_suffix(".f16").unwrap();
            assert!(
                half.nodes.iter().any(|n| n.op == "Cast"
                    && n.inputs == [init.name.clone()]
                    && n.outputs == [base.to_string()]),
                "no Cast gives {base}"
            );
        }
        assert_eq!(half.nodes.len(), model.nodes.len() + weights - 4);
    }
}
