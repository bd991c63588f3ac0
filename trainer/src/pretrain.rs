//! `cxr-msn pretrain`: multimodal MSN pretraining, on a GPU through wgpu or on the CPU, and
//! the baselines on the same encoder, views, schedules and run folder (`--method dino`,
//! `mae`, or `random` for no pretraining).
//!
//! The run folder holds:
//! - `config.json`: the full configuration, the command's settings, the seed, the device,
//!   the command line, and the version and git revision of the program;
//! - `metrics.jsonl`: one JSON object per step (lr, weight decay, EMA momentum, the loss and
//!   its parts, gradient norm, seconds); `epochs.csv`: one row per epoch; `loss.svg`;
//! - `checkpoint.safetensors`: the pretraining model file;
//! - `resume/`: the exact state (parameter ids and the optimiser's moments);
//! - `state.json`: the steps done, written last: the commit point of a checkpoint.
//!
//! Checkpoints are written atomically at the end of every epoch, every
//! `--save-every-minutes` (and `--save-every-steps`), and on Ctrl-C or SIGTERM, after the
//! step in progress. Running the same command again continues from the last checkpoint,
//! mid-epoch included, exactly as if the run had not stopped (same batches, views, masks,
//! schedules, EMA and optimiser state), so a `kill -9` loses only the steps since then.
//!
//! The step follows the chosen profile: views and masking, EMA timing and schedule, the
//! learning-rate and weight-decay schedules, decoupled weight decay on everything (`paper`)
//! or on weights only (`msn`), and clipping by the global gradient norm (`msn`).
//! The device is a hardware GPU through wgpu when there is one, else the CPU (`--device`).
//! Not yet: several devices, f16 mixed precision (the `paper` profile's runs are f32).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;
use cxr_msn::checkpoint::{ModelKind, ModelMeta, read_meta};
use cxr_msn::config::{EmaTiming, Method, MsnConfig, Normalization, Profile, VitPreset};
use cxr_msn::decode::DecodeLimits;
use cxr_msn::dino::Dino;
use cxr_msn::ehr::FeatureSet;
use cxr_msn::mae::Mae;
use cxr_msn::masking::TokenMask;
use cxr_msn::msn::{AnchorGroup, MsnBatch};
use cxr_msn::pretrained::Pretrained;
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::baseline_parts::{self, SplitLoss};
use crate::cpu_parallel;
use crate::data::Split;
use crate::device::{DeviceArg, choose};
use crate::files::write_atomic;
use crate::finite;
use crate::fused_adamw;
use crate::images::file_decoder;
use crate::interrupt;
use crate::loader::{Batch, Loader, LoaderConfig, Views};
use crate::model_files;
use crate::msn_parts;
use crate::progress::Progress as ProgressLine;
use crate::run_files::{self, StepRecord};
use crate::run_lock::RunLock;
use crate::schedule::{Progress, clip_global_norm, decay_except, learning_rate, weight_decay};
use crate::source::DataArgs;

/// The settings of `cxr-msn pretrain`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct PretrainArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub source: DataArgs,
    /// Run folder (created; an existing run in it is continued).
    #[arg(long)]
    pub out: PathBuf,
    /// Recipe: the authors' code (`paper`) or the original MSN (`msn`).
    #[arg(long, default_value = "paper")]
    pub profile: String,
    /// Pretraining method: `msn` (the project's), or a baseline trained with the same
    /// encoder, views, optimiser and schedules: `dino`, `mae`, or `random` (no training: the
    /// encoder at its seeded initialisation, written at once).
    #[arg(long, default_value = "msn")]
    pub method: String,
    /// ViT size: tiny, tiny-3h, small, base.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// EHR feature set for the anchor branch (see `cxr-msn info`), or `none` for vanilla MSN.
    #[arg(long, default_value = "none")]
    pub ehr: String,
    /// Input channels: 3 (grey repeated, as the authors) or 1.
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Epochs (default: the profile's).
    #[arg(long, value_parser = crate::cli_values::at_least_one)]
    pub epochs: Option<usize>,
    /// Images per batch (default: the profile's).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Focal views per image (default: 10; DINO's local views; MAE takes none).
    #[arg(long)]
    pub focal_views: Option<usize>,
    /// Transformer blocks (default: 12); fewer only for quick smoke runs.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Where to train: a hardware GPU through wgpu when there is one (auto), the CPU, or the
    /// wgpu adapter whatever it is (gpu).
    #[arg(long, value_enum, default_value = "auto")]
    #[serde(skip)]
    pub device: DeviceArg,
    /// Seed of the initialisation, the shuffles, the views and the masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Loader threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Preprocessed-image cache folder (recommended for full-size JPEGs).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// A TOML file of configuration overrides applied to the profile before the flags above:
    /// any field of the model configuration, by section (`[vit]`, `[head]`, `[loss]`,
    /// `[ema]`, `[optim]`, `[views]`) or at the top (`num_prototypes`, `mask_ratio`, ...).
    /// `--print-config` shows them all.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the full configuration these settings give (TOML) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Start from the weights of a pretraining model file (from `cxr-msn import` or an
    /// earlier run) instead of a random initialisation; its architecture replaces
    /// --preset, --depth and --channels.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Stop after this many epochs in this invocation (for time-limited jobs: run the
    /// same command again to continue).
    #[arg(long, value_parser = crate::cli_values::at_least_one)]
    pub stop_after: Option<usize>,
    /// Also save a checkpoint every this many steps (besides the end of every epoch and
    /// Ctrl-C).
    #[arg(long)]
    pub save_every_steps: Option<usize>,
    /// Also save a checkpoint when this many minutes have passed since the last one.
    #[arg(long, default_value_t = 15.0)]
    pub save_every_minutes: f64,
}

/// What `state.json` records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    /// Epochs finished.
    pub epochs_done: usize,
    /// Steps finished (a run can stop, and continue, in the middle of an epoch).
    pub steps_done: usize,
    /// Steps per epoch of the run (a resume on other data is refused).
    #[serde(default)]
    pub steps_per_epoch: usize,
}

/// Merges `overrides` into `base`, table by table.
fn merge(base: &mut serde_json::Value, overrides: serde_json::Value) {
    match (base, overrides) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Applies a TOML file of overrides to a configuration; unknown fields are errors.
pub fn apply_toml(config: MsnConfig, path: &Path) -> Result<MsnConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut value = serde_json::to_value(&config)?;
    let known = value.clone();
    let overrides = serde_json::to_value(table)?;
    check_known(&known, &overrides, "").with_context(|| format!("{}", path.display()))?;
    merge(&mut value, overrides);
    serde_json::from_value(value)
        .with_context(|| format!("{}: a value has the wrong type", path.display()))
}

/// Refuses keys the configuration does not have (a typo must not pass silently).
fn check_known(known: &serde_json::Value, overrides: &serde_json::Value, at: &str) -> Result<()> {
    if let (serde_json::Value::Object(k), serde_json::Value::Object(o)) = (known, overrides) {
        for (key, v) in o {
            let path = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            match k.get(key) {
                Some(inner) => check_known(inner, v, &path)?,
                None => bail!(
                    "unknown setting '{path}'; known here: {}",
                    k.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }
        }
    }
    Ok(())
}

/// The model configuration the settings ask for: the profile, then the TOML overrides, then
/// the flags.
pub fn model_config(args: &PretrainArgs) -> Result<MsnConfig> {
    let profile = Profile::from_name(&args.profile)?;
    let preset = VitPreset::from_name(&args.preset)?;
    let method = Method::from_name(&args.method)?;
    let mut config = MsnConfig::for_profile(profile, preset)
        .with_channels(args.channels)
        .with_method(method);
    if method != Method::Msn && args.ehr != "none" {
        bail!(
            "--ehr {}: the {} baseline is image-only (EHR enters MSN's anchor branch); use \
             --method msn, or --ehr none",
            args.ehr,
            method.name()
        );
    }
    if method != Method::Msn && args.init.is_some() {
        bail!(
            "--init continues MSN weights; it cannot start a {} run",
            method.name()
        );
    }
    if args.ehr != "none" {
        config = config.with_ehr(FeatureSet::from_name(&args.ehr)?);
    }
    if let Some(path) = &args.config {
        config = apply_toml(config, path)?;
    }
    if let Some(e) = args.epochs {
        config.optim.epochs = e;
    }
    if let Some(b) = args.batch_size {
        config.optim.batch_size = b;
    }
    // MAE sees one view per image: focal views would only cost loading time.
    if let Some(f) = args.focal_views
        && method != Method::Mae
    {
        config.views.focal_views = f;
    }
    if let Some(d) = args.depth {
        config.vit.depth = d;
    }
    if let Some(init) = &args.init {
        take_architecture(&mut config, init, &args.ehr)?;
    }
    config.validate()?;
    if config.optim.batch_size < 2 {
        bail!("the batch size must be at least 2 (BatchNorm needs batch statistics)");
    }
    Ok(config)
}

/// With `--init FILE`: the architecture (encoder, head, prototypes, EHR branch) is the
/// file's, the recipe stays the profile's. `--ehr` must be `none` (keep the file's branch)
/// or name the file's own feature set.
fn take_architecture(config: &mut MsnConfig, init: &Path, ehr: &str) -> Result<()> {
    let bytes = std::fs::read(init).with_context(|| format!("cannot read {}", init.display()))?;
    let meta = read_meta(&bytes).with_context(|| format!("{}", init.display()))?;
    if meta.kind != ModelKind::Pretraining || meta.config.method != Method::Msn {
        bail!(
            "{}: --init takes an MSN pretraining model file (from pretrain or import), not \
             a classifier or a baseline's model",
            init.display()
        );
    }
    let theirs = meta
        .config
        .ehr
        .as_ref()
        .map(|e| e.feature_set.name().to_string());
    match (ehr, &theirs) {
        ("none", _) => {}
        (asked, Some(have)) if asked == have => {}
        (asked, Some(have)) => bail!(
            "--ehr {asked}: {} has an EHR branch for {have}",
            init.display()
        ),
        (asked, None) => bail!(
            "--ehr {asked}: {} has no EHR branch; import the weights with --ehr {asked} to add \
             one",
            init.display()
        ),
    }
    config.vit = meta.config.vit;
    config.head = meta.config.head;
    config.num_prototypes = meta.config.num_prototypes;
    config.ehr = meta.config.ehr;
    Ok(())
}

fn batch_tensors(batch: Batch, ehr_in: Option<usize>, device: &Device) -> Result<MsnBatch> {
    let b = batch.items.len();
    let anchors = batch.anchors.context("MSN batches carry anchors")?;
    let focal = batch.focal.context("MSN batches carry focal views")?;
    let mut groups = vec![AnchorGroup {
        images: anchors.to_tensor(device),
    }];
    if focal.shape[0] > 0 {
        groups.push(AnchorGroup {
            images: focal.to_tensor(device),
        });
    }
    Ok(MsnBatch {
        target: batch.images.to_tensor(device),
        anchors: groups,
        ehr: ehr_in.map(|n| Tensor::from_data(TensorData::new(batch.ehr, [b, n]), device)),
    })
}

/// The values of a small tensor, as f64.
fn read_values(t: Tensor<1>) -> Result<Vec<f64>> {
    Ok(t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read the loss back: {e:?}"))?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// The schedules' values at one step.
#[derive(Debug, Clone, Copy)]
pub struct StepSchedule {
    /// Learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// EMA momentum of the target.
    pub momentum: f64,
    /// Epoch of the step (DINO's teacher temperature and frozen last layer follow it).
    pub epoch: usize,
}

/// What one pretraining step did.
#[derive(Debug)]
pub struct StepDone {
    /// The model after the update (and the EMA update).
    pub model: Pretrained,
    /// The loss before the update.
    pub loss: f64,
    /// MSN's cross-entropy, me-max and entropy terms (the baselines' losses have one part).
    pub parts: Option<[f64; 3]>,
    /// MSN: how many distinct prototypes the batch's targets assign most mass to (MSN's
    /// "np"; 1 when every target is the same, the sign of a collapse).
    pub prototypes: Option<usize>,
    /// The global gradient norm before clipping, when the profile clips.
    pub grad_norm: Option<f64>,
}

/// Why a step was not applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Diverged {
    /// The loss was NaN or infinite.
    Loss(f64),
    /// A gradient was NaN or infinite (the loss was this).
    Gradients {
        /// The (finite) loss of the step.
        loss: f64,
    },
}

/// A forward pass run over parts of the batch, waiting for its backward pass.
enum SplitStep {
    Msn(Box<msn_parts::SplitForward>),
    Dino(SplitLoss<Dino>),
    Mae(SplitLoss<Mae>),
}

/// One pretraining step as the profile and the method define it: EMA update (before the
/// forward or after the optimiser step), masks, forward, loss (read back once), backward,
/// the non-finite guards, clipping, decoupled weight decay, AdamW; for DINO also the
/// frozen last layer of the first epoch(s) and the centre update. `pretrain` and
/// `bench step` share it.
pub fn train_step(
    mut model: Pretrained,
    optim: &mut ModuleOptimizer,
    batch: MsnBatch,
    config: &MsnConfig,
    at: StepSchedule,
    rng: &mut StdRng,
) -> Result<Result<StepDone, Diverged>> {
    let o = &config.optim;
    if config.ema.timing == EmaTiming::BeforeForward {
        model.ema_update(at.momentum);
    }
    // Parameters that sit out this step, and DINO's centre update.
    let mut frozen = Vec::new();
    let mut center = None;
    // On the CPU the forward and backward passes run over parts of the batch at once.
    let ranges = cpu_parallel::ranges(&batch.target.device(), batch.target.dims()[0]);
    let parallel = ranges.len() > 1;
    let mut split = None;
    let mut target_probs = None;
    let (total, parts) = match &model {
        Pretrained::Msn(m) => {
            let masks = m.sample_masks(&batch, config, rng);
            let loss = if parallel {
                let forward = msn_parts::forward(m, batch, &masks, config, &ranges);
                let loss = forward.loss.clone();
                split = Some(SplitStep::Msn(Box::new(forward)));
                loss
            } else {
                m.loss(&m.forward_pretrain(batch, &masks, config), config)
            };
            target_probs = Some(loss.target_probs);
            (loss.total, Some([loss.ce, loss.me_max, loss.entropy]))
        }
        Pretrained::Dino(d) => {
            let cfg = config
                .dino
                .as_ref()
                .context("a DINO run needs [dino] settings")?;
            let temperature = cfg.teacher_temperature_at(at.epoch);
            if at.epoch < cfg.freeze_last_layer_epochs {
                frozen.push(d.student_head.last_layer.weight.id);
            }
            let (total, batch_center) = if parallel {
                let (loss, batch_center) =
                    baseline_parts::dino(d, batch, temperature, cfg, &ranges);
                let total = loss.total.clone();
                split = Some(SplitStep::Dino(loss));
                (total, batch_center)
            } else {
                let out = d.forward_loss(batch, temperature, cfg);
                (out.total, out.batch_center)
            };
            center = Some((batch_center, cfg.center_momentum));
            (total, None)
        }
        Pretrained::Mae(m) => {
            let cfg = config
                .mae
                .as_ref()
                .context("an MAE run needs [mae] settings")?;
            let [b, _, s, _] = batch.target.dims();
            let mask = TokenMask::sample(b, m.encoder.patches_for(s), cfg.mask_ratio, rng);
            let total = if parallel {
                let loss = baseline_parts::mae(m, batch.target, &mask, cfg.norm_pix_loss, &ranges);
                let total = loss.total.clone();
                split = Some(SplitStep::Mae(loss));
                total
            } else {
                m.forward_loss(batch.target, &mask, cfg.norm_pix_loss).loss
            };
            (total, None)
        }
        Pretrained::Random(_) => bail!("a randomly initialised encoder is not trained"),
    };
    // One read back from the device for every number.
    let mut shown = vec![total.clone().detach()];
    shown.extend(parts.iter().flatten().map(|p| p.clone().detach()));
    let msn = target_probs.is_some();
    shown.extend(target_probs.map(top_prototypes));
    let read = read_values(Tensor::cat(shown, 0))?;
    let loss = read[0];
    let parts = parts.is_some().then(|| [read[1], read[2], read[3]]);
    let prototypes = msn.then(|| distinct(&read[4..]));
    if !loss.is_finite() {
        return Ok(Err(Diverged::Loss(loss)));
    }
    let mut grads = match (split, &model) {
        (Some(SplitStep::Msn(forward)), Pretrained::Msn(m)) => forward.backward(m),
        (Some(SplitStep::Dino(loss)), Pretrained::Dino(d)) => loss.backward(d),
        (Some(SplitStep::Mae(loss)), Pretrained::Mae(m)) => loss.backward(m),
        _ => GradientsParams::from_grads(total.backward(), &model),
    };
    for id in &frozen {
        grads.remove::<2>(*id);
    }
    if !finite::gradients_finite(&model, &grads) {
        return Ok(Err(Diverged::Gradients { loss }));
    }
    let grad_norm = o
        .clip_grad_norm
        .map(|max| clip_global_norm(&model, &mut grads, max));
    model = decay_except(
        model,
        at.lr,
        at.weight_decay,
        o.decay_all_parameters,
        &frozen,
    );
    model = optim.step(at.lr, model, grads);
    if let (Pretrained::Dino(d), Some((batch_center, momentum))) = (&mut model, center) {
        d.update_center(batch_center, momentum);
    }
    if config.ema.timing == EmaTiming::AfterStep {
        model.ema_update(at.momentum);
    }
    Ok(Ok(StepDone {
        model,
        loss,
        parts,
        prototypes,
        grad_norm,
    }))
}

/// The prototype each target assigns most mass to: `[B, K]` -> `[B]` (indices as floats,
/// exact below 2^24), computed on the device so that only B numbers are read back.
fn top_prototypes(target_probs: Tensor<2>) -> Tensor<1> {
    target_probs.argmax(1).float().flatten::<1>(0, 1)
}

/// How many distinct values `indices` holds.
fn distinct(indices: &[f64]) -> usize {
    let mut seen: Vec<u64> = indices.iter().map(|&i| i as u64).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

/// What to try after a loss, gradient or weight became NaN or infinite.
const NON_FINITE_ADVICE: &str = "Training diverged: lower the learning rate ([optim] peak_lr in \
    --config), clip the gradients ([optim] clip_grad_norm) or use a larger batch, and \
    start again in a new --out folder (--init with the last checkpoint keeps its weights)";

/// The exact-resume file of `kind` ("model" or "optimizer") after `steps_done` steps.
/// Named by step, so that a stop between writing it and `state.json` never pairs a state
/// with the wrong step.
fn resume_file(run: &Path, kind: &str, steps_done: usize) -> PathBuf {
    run.join("resume").join(format!("{kind}-{steps_done}.bpk"))
}

fn read_state(dir: &Path) -> Result<Option<RunState>> {
    let path = dir.join("state.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{} is malformed", path.display())
    })?))
}

/// Runs (or continues) a pretraining run; returns the mean loss of the last epoch run here
/// (NaN when there was nothing left to run).
pub fn run(args: &PretrainArgs, log: &mut dyn std::io::Write) -> Result<f64> {
    let config = model_config(args)?;
    if args.print_config {
        write!(log, "{}", toml::to_string(&config)?)?;
        return Ok(f64::NAN);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let _lock = RunLock::acquire(&args.out)?;
    if config.method == Method::Random {
        return write_random_encoder(args, &config, log);
    }
    let data = args.source.load()?;
    let features = config.ehr.as_ref().map(|e| e.feature_set.clone());
    let split = if data.records_in(Split::Train).next().is_some() {
        Some(Split::Train)
    } else {
        None
    };
    let items = data.items(split, features.as_ref(), &args.source.policy())?;
    let images = items.len();
    let normalization = Normalization::imagenet(config.vit.channels);
    let mut loader_cfg = LoaderConfig::new(normalization.clone());
    loader_cfg.batch_size = config.optim.batch_size;
    loader_cfg.threads = args.threads;
    loader_cfg.seed = args.seed;
    loader_cfg.cache_dir = args.cache.clone();
    let loader = Loader::new(
        items,
        Views::Msn(config.views.clone()),
        loader_cfg,
        file_decoder(DecodeLimits::default()),
    )?;
    let steps_per_epoch = loader.batches_per_epoch();
    if steps_per_epoch == 0 {
        bail!(
            "{images} training images, fewer than one batch of {} (--batch-size)",
            config.optim.batch_size
        );
    }

    let chosen = choose(args.device)?;
    writeln!(log, "device: {}", chosen.description)?;
    let device = chosen.device.autodiff();
    device.seed(args.seed);
    let checkpoint = args.out.join("checkpoint.safetensors");
    let state = read_state(&args.out)?;
    let (mut model, mut state): (Pretrained, RunState) = match state {
        Some(s) if checkpoint.exists() => {
            if s.steps_per_epoch != 0 && s.steps_per_epoch != steps_per_epoch {
                bail!(
                    "{} was trained with {} steps per epoch, these data and settings give {}; \
                     use another --out folder for a run on other data",
                    args.out.display(),
                    s.steps_per_epoch,
                    steps_per_epoch
                );
            }
            let (model, meta) = model_files::pretraining(&checkpoint, &device)?;
            if meta.config != config {
                return Err(other_configuration(&args.out, &meta.config, &config));
            }
            let model = match read_exact_model(&args.out, s.steps_done, &config, &device)? {
                Some(exact) => exact,
                None => model,
            };
            let into = s.steps_done % steps_per_epoch;
            writeln!(
                log,
                "continuing {} after step {} ({} of {} epochs done{})",
                args.out.display(),
                s.steps_done,
                s.steps_done / steps_per_epoch,
                config.optim.epochs,
                if into > 0 {
                    format!(
                        ", {into} of {steps_per_epoch} batches into epoch {}",
                        s.steps_done / steps_per_epoch + 1
                    )
                } else {
                    String::new()
                }
            )?;
            (model, s)
        }
        _ => (
            match &args.init {
                Some(init) => {
                    let (model, _) = model_files::msn(init, &device)?;
                    writeln!(log, "starting from the weights of {}", init.display())?;
                    Pretrained::Msn(model).restate_gradients(&config)
                }
                None => Pretrained::init(&config, &device)?,
            },
            RunState {
                epochs_done: 0,
                steps_done: 0,
                steps_per_epoch,
            },
        ),
    };
    state.steps_per_epoch = steps_per_epoch;
    let (previous_data, changed_from) = previous_data(&args.out, &args.source.data);
    if let Some(last) = changed_from {
        writeln!(
            log,
            "note: this run was trained on {last} before; it continues on {} \
             (config.json keeps both)",
            args.source.data.display()
        )?;
    }
    let settings = serde_json::json!({
        "config": config,
        "args": args,
        "data": args.source.data,
        "previous_data": previous_data,
        "build": run_files::build_info(),
        "command": std::env::args().collect::<Vec<_>>(),
        "device": chosen.description,
    });
    write_atomic(
        &args.out.join("config.json"),
        serde_json::to_string_pretty(&settings)?.as_bytes(),
    )?;

    let o = &config.optim;
    let mut optim = fused_adamw::adamw();
    let optim_path = resume_file(&args.out, "optimizer", state.steps_done);
    if state.steps_done > 0 && optim_path.exists() {
        let bytes = std::fs::read(&optim_path)
            .with_context(|| format!("cannot read {}", optim_path.display()))?;
        optim = optim
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", optim_path.display()))?;
    }
    let metrics_path = args.out.join("metrics.jsonl");
    let mut records = run_files::read_steps(&metrics_path, state.steps_done)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("cannot write {}", metrics_path.display()))?;
    let ehr_in = features.as_ref().map(FeatureSet::width);
    let total_steps = steps_per_epoch * o.epochs;
    let end_epoch = match args.stop_after {
        Some(n) => (state.steps_done / steps_per_epoch + n).min(o.epochs),
        None => o.epochs,
    };
    let end_step = end_epoch * steps_per_epoch;
    if state.steps_done >= total_steps {
        writeln!(
            log,
            "{} has finished all {} epochs; nothing to do",
            args.out.display(),
            o.epochs
        )?;
    }
    let saver = Saver {
        run: &args.out,
        config: &config,
        normalization: &normalization,
        seed: args.seed,
        data: &args.source.data,
    };
    let mut progress = ProgressLine::new(state.steps_done, total_steps, config.optim.batch_size);
    let mut last_save = Instant::now();
    let mut last_mean = f64::NAN;
    let mut interrupted = false;
    while state.steps_done < end_step && !interrupted {
        let epoch = state.steps_done / steps_per_epoch;
        let first = state.steps_done % steps_per_epoch;
        for batch in loader.epoch_from(epoch, first) {
            let started = Instant::now();
            let step = state.steps_done;
            let progress_at = Progress {
                step,
                steps_per_epoch,
                epochs: o.epochs,
            };
            let momentum = config.ema.momentum(step, total_steps);
            let lr = learning_rate(o, progress_at);
            let wd = weight_decay(o, progress_at);
            let batch = batch_tensors(batch?, ehr_in, &device)?;
            if let Pretrained::Msn(m) = &model {
                m.check_batch(&batch)?;
            }
            let mut rng =
                StdRng::seed_from_u64(args.seed ^ (step as u64).wrapping_mul(0x9E37_79B9));
            // A panic inside the backend (a GPU out of memory, above all) becomes an error
            // that says what to do; the last checkpoint is untouched either way.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let schedule = StepSchedule {
                    lr,
                    weight_decay: wd,
                    momentum,
                    epoch,
                };
                train_step(model, &mut optim, batch, &config, schedule, &mut rng)
            }));
            let done = match outcome {
                Ok(result) => result?,
                Err(panic) => {
                    return Err(explain_panic(
                        panic.as_ref(),
                        step,
                        config.optim.batch_size,
                        &checkpoint,
                    ));
                }
            };
            let (trained, loss, parts, prototypes, norm) = match done {
                Ok(d) => (d.model, d.loss, d.parts, d.prototypes, d.grad_norm),
                Err(Diverged::Loss(loss)) => bail!(
                    "the loss became {loss} at step {step}; nothing was saved from this step \
                     on and {}. {NON_FINITE_ADVICE}",
                    last_checkpoint(&checkpoint)
                ),
                Err(Diverged::Gradients { loss }) => bail!(
                    "the gradients became NaN or infinite at step {step} (loss {loss:.4}); the \
                     update was not applied, nothing was saved from this step on and {}. \
                     {NON_FINITE_ADVICE}",
                    last_checkpoint(&checkpoint)
                ),
            };
            model = trained;
            state.steps_done += 1;
            let record = StepRecord {
                epoch,
                step,
                lr,
                weight_decay: wd,
                ema_momentum: momentum,
                loss,
                ce: parts.map(|p| p[0]),
                me_max: parts.map(|p| p[1]),
                entropy: parts.map(|p| p[2]),
                prototypes,
                grad_norm: norm,
                seconds: started.elapsed().as_secs_f64(),
            };
            run_files::append_step(&mut metrics, &record)?;
            records.push(record);
            let status = format!(
                "epoch {}/{} | loss {loss:.4}{}",
                epoch + 1,
                o.epochs,
                parts
                    .map(|p| format!(" (ce {:.4}, me-max {:.4})", p[0], p[1]))
                    .unwrap_or_default()
            );
            progress.show(state.steps_done, &status, log)?;

            let epoch_done = state.steps_done % steps_per_epoch == 0;
            interrupted = interrupt::requested();
            let due = args
                .save_every_steps
                .is_some_and(|n| n > 0 && state.steps_done % n == 0)
                || last_save.elapsed().as_secs_f64() >= args.save_every_minutes * 60.0;
            if epoch_done || interrupted || due {
                metrics.flush()?;
                if !finite::weights_finite(&model) {
                    bail!(
                        "the weights became NaN or infinite in step {step}; they were not saved \
                         and {}. {NON_FINITE_ADVICE}",
                        last_checkpoint(&checkpoint)
                    );
                }
                state.epochs_done = state.steps_done / steps_per_epoch;
                let moments = optim
                    .into_bytes()
                    .map_err(|e| anyhow::anyhow!("cannot serialise the optimiser: {e:?}"))?;
                saver.save(&model, &moments, &state)?;
                run_files::write_summaries(
                    &args.out,
                    &records,
                    state.epochs_done,
                    config.optim.batch_size,
                )?;
                last_save = Instant::now();
            }
            if epoch_done {
                progress.finish_line();
                let rows: Vec<&StepRecord> = records.iter().filter(|r| r.epoch == epoch).collect();
                let n = rows.len().max(1) as f64;
                last_mean = rows.iter().map(|r| r.loss).sum::<f64>() / n;
                let used: Option<Vec<usize>> = rows.iter().map(|r| r.prototypes).collect();
                let used = used
                    .filter(|u| !u.is_empty())
                    .map(|u| u.iter().sum::<usize>() as f64 / u.len() as f64);
                writeln!(
                    log,
                    "epoch {}/{}: mean loss {last_mean:.4}{}; saved {}",
                    epoch + 1,
                    o.epochs,
                    used.map(|u| format!(
                        ", targets on {u:.1} distinct prototypes per batch of {}",
                        o.batch_size
                    ))
                    .unwrap_or_default(),
                    checkpoint.display()
                )?;
                if used.is_some_and(|u| u < 1.5) && o.batch_size > 1 {
                    writeln!(
                        log,
                        "warning: the targets of a batch nearly all pick the same prototype, a \
                         sign that the representation collapsed (every image embedded alike); \
                         a lower learning rate, more me-max weight ([loss] me_max_weight) or a \
                         larger batch may help"
                    )?;
                }
            }
            if interrupted {
                progress.finish_line();
                writeln!(
                    log,
                    "stopped on request after step {}; saved {}. Run the same command to \
                     continue from here.",
                    state.steps_done,
                    checkpoint.display()
                )?;
                break;
            }
        }
    }
    Ok(last_mean)
}

/// The error for a run folder whose run has a configuration other than the one asked for,
/// naming what differs (up to five settings).
fn other_configuration(out: &Path, was: &MsnConfig, now: &MsnConfig) -> anyhow::Error {
    let differences = config_differences(was, now);
    let shown = differences.len().min(5);
    let mut list = differences[..shown].join("; ");
    if differences.len() > shown {
        list += &format!("; and {} more", differences.len() - shown);
    }
    anyhow::anyhow!(
        "{} holds a run with another configuration ({list}); continue it with its own \
         settings (its config.json), or use another --out folder",
        out.display()
    )
}

/// The settings that differ between two configurations, as `path: A in the run, B asked`,
/// in the order of the configuration's fields.
fn config_differences(was: &MsnConfig, now: &MsnConfig) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (key, va) in x {
                    let vb = y.get(key).unwrap_or(&Value::Null);
                    let p = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(&p, va, vb, out);
                }
                for (key, vb) in y.iter().filter(|(k, _)| !x.contains_key(*k)) {
                    walk(&format!("{path}.{key}"), &Value::Null, vb, out);
                }
            }
            _ if a != b => out.push(format!("{path}: {a} in the run, {b} asked")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    match (serde_json::to_value(was), serde_json::to_value(now)) {
        (Ok(a), Ok(b)) => walk("", &a, &b, &mut out),
        _ => out.push("the configurations cannot be compared".into()),
    }
    out
}

/// The dataset paths a run folder's earlier invocations trained on, oldest first, where
/// they were not `data` (from its config.json; empty for a new run or the same data), and
/// the last invocation's, when it was not `data`.
fn previous_data(out: &Path, data: &Path) -> (Vec<String>, Option<String>) {
    let settings = std::fs::read_to_string(out.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    let Some(settings) = settings else {
        return (Vec::new(), None);
    };
    let mut earlier: Vec<String> = settings["previous_data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let changed = settings["data"]
        .as_str()
        .filter(|last| Path::new(last) != data)
        .map(String::from);
    earlier.extend(changed.clone());
    (earlier, changed)
}

/// The exact model state saved at `steps_done` (parameter ids, so that the optimiser's
/// moments reattach), when there is one.
fn read_exact_model(
    run: &Path,
    steps_done: usize,
    config: &MsnConfig,
    device: &Device,
) -> Result<Option<Pretrained>> {
    let record = resume_file(run, "model", steps_done);
    if !record.exists() {
        return Ok(None);
    }
    let bytes =
        std::fs::read(&record).with_context(|| format!("cannot read {}", record.display()))?;
    let bad = |e: burn::store::RecordError| anyhow::anyhow!("{}: {e:?}", record.display());
    let data = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes)).map_err(bad)?;
    // Each method's record has its own layout (an MSN run of an earlier version resumes).
    let model = match Pretrained::init(config, device)? {
        Pretrained::Msn(m) => Pretrained::Msn(m.try_load_record(data).map_err(bad)?),
        Pretrained::Dino(d) => Pretrained::Dino(d.try_load_record(data).map_err(bad)?),
        Pretrained::Mae(m) => Pretrained::Mae(m.try_load_record(data).map_err(bad)?),
        Pretrained::Random(v) => Pretrained::Random(v.try_load_record(data).map_err(bad)?),
    };
    Ok(Some(model.restate_gradients(config)))
}

/// The exact state of a model as bytes, in its variant's own layout.
fn record_bytes(model: &Pretrained) -> Result<burn::tensor::Bytes> {
    fn of<M: Module>(m: &M) -> Result<burn::tensor::Bytes> {
        m.valid()
            .into_record()
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("cannot serialise the model: {e:?}"))
    }
    match model {
        Pretrained::Msn(m) => of(m),
        Pretrained::Dino(d) => of(d),
        Pretrained::Mae(m) => of(m),
        Pretrained::Random(v) => of(v),
    }
}

/// `--method random`: the encoder at its seeded initialisation (on the CPU, so that the
/// same seed gives the same weights on any machine), written as the run's checkpoint.
fn write_random_encoder(
    args: &PretrainArgs,
    config: &MsnConfig,
    log: &mut dyn std::io::Write,
) -> Result<f64> {
    let checkpoint = args.out.join("checkpoint.safetensors");
    if checkpoint.exists() {
        let (_, meta) = model_files::pretraining(&checkpoint, &Device::flex())?;
        if meta.config != *config {
            return Err(other_configuration(&args.out, &meta.config, config));
        }
        writeln!(
            log,
            "{} already holds this random encoder",
            checkpoint.display()
        )?;
        return Ok(f64::NAN);
    }
    let device = Device::flex();
    device.seed(args.seed);
    let model = Pretrained::init(config, &device)?;
    let mut meta = ModelMeta::pretraining(config.clone());
    meta.training.insert("seed".into(), args.seed.to_string());
    meta.training.insert("method".into(), "random".into());
    let settings = serde_json::json!({
        "config": config,
        "args": args,
        "build": run_files::build_info(),
        "command": std::env::args().collect::<Vec<_>>(),
    });
    write_atomic(
        &args.out.join("config.json"),
        serde_json::to_string_pretty(&settings)?.as_bytes(),
    )?;
    write_atomic(&checkpoint, &model.to_model_file(&meta)?)?;
    writeln!(
        log,
        "wrote the randomly initialised encoder (seed {}) to {}; nothing is trained",
        args.seed,
        checkpoint.display()
    )?;
    Ok(f64::NAN)
}

/// Writes the checkpoints of a run folder.
struct Saver<'a> {
    run: &'a Path,
    config: &'a MsnConfig,
    normalization: &'a Normalization,
    seed: u64,
    data: &'a Path,
}

impl Saver<'_> {
    /// Saves the exact state (model record and optimiser moments, named by step), then the
    /// model file, then `state.json`, the commit point; then removes older exact states.
    /// A kill at any moment leaves the previous commit point whole.
    fn save(&self, model: &Pretrained, optimizer: &[u8], state: &RunState) -> Result<()> {
        let resume = self.run.join("resume");
        std::fs::create_dir_all(&resume)
            .with_context(|| format!("cannot create {}", resume.display()))?;
        let record = record_bytes(model)?;
        write_atomic(&resume_file(self.run, "model", state.steps_done), &record)?;
        write_atomic(
            &resume_file(self.run, "optimizer", state.steps_done),
            optimizer,
        )?;
        let mut meta = ModelMeta::pretraining(self.config.clone());
        meta.normalization = self.normalization.clone();
        meta.training.insert("seed".into(), self.seed.to_string());
        meta.training
            .insert("epochs_done".into(), state.epochs_done.to_string());
        meta.training
            .insert("steps_done".into(), state.steps_done.to_string());
        meta.training
            .insert("data".into(), self.data.display().to_string());
        meta.training
            .insert("method".into(), self.config.method.name().into());
        write_atomic(
            &self.run.join("checkpoint.safetensors"),
            &model.to_model_file(&meta)?,
        )?;
        write_atomic(
            &self.run.join("state.json"),
            serde_json::to_string(state)?.as_bytes(),
        )?;
        let current: Vec<PathBuf> = ["model", "optimizer"]
            .iter()
            .map(|k| resume_file(self.run, k, state.steps_done))
            .collect();
        for entry in std::fs::read_dir(&resume)?.flatten() {
            let path = entry.path();
            if !current.contains(&path) && path.extension().is_some_and(|e| e == "bpk") {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }
}

/// An error for a panic inside a training step: out-of-memory gets the batch size to try.
/// What is left to continue from: "the last checkpoint, X, is intact" or that there is none.
fn last_checkpoint(checkpoint: &Path) -> String {
    if checkpoint.exists() {
        format!("the last checkpoint, {}, is intact", checkpoint.display())
    } else {
        "no checkpoint had been written yet".to_string()
    }
}

fn explain_panic(
    panic: &(dyn std::any::Any + Send),
    step: usize,
    batch_size: usize,
    checkpoint: &Path,
) -> anyhow::Error {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    let lower = message.to_lowercase();
    let oom = [
        "out of memory",
        "outofmemory",
        "out_of_memory",
        "allocation failed",
    ]
    .iter()
    .any(|k| lower.contains(k));
    let kept = last_checkpoint(checkpoint);
    if oom {
        anyhow::anyhow!(
            "the device ran out of memory at step {step} with batches of {batch_size} images; \
             try --batch-size {} (or a smaller --preset, or fewer --focal-views); {kept}. \
             Device message: {message}",
            (batch_size / 2).max(2)
        )
    } else {
        anyhow::anyhow!("the training step {step} failed inside the backend: {message}; {kept}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_top_prototypes_counts_each_rows_largest_column() {
        let count = |rows: &[f32], k: usize| {
            let probs = Tensor::<2>::from_data(
                TensorData::new(rows.to_vec(), [rows.len() / k, k]),
                &Device::flex(),
            );
            distinct(&read_values(top_prototypes(probs)).unwrap())
        };
        // Hand-made rows over 4 columns: tops 2, 0, 2 and 1.
        let probs = [
            0.1, 0.2, 0.6, 0.1, //
            0.7, 0.1, 0.1, 0.1, //
            0.0, 0.0, 1.0, 0.0, //
            0.1, 0.5, 0.1, 0.3,
        ];
        assert_eq!(count(&probs, 4), 3);
        assert_eq!(count(&probs[..4], 4), 1);
        // Identical rows, as after a collapse: one prototype.
        assert_eq!(count(&[0.2, 0.8, 0.2, 0.8, 0.2, 0.8], 2), 1);
    }

    #[test]
    fn another_configuration_is_refused_naming_what_differs() {
        let was = MsnConfig::paper(VitPreset::Tiny);
        let mut now = was.clone();
        assert!(config_differences(&was, &now).is_empty());
        now.optim.epochs = was.optim.epochs + 1;
        now.mask_ratio = 0.3;
        let differences = config_differences(&was, &now);
        assert_eq!(differences.len(), 2, "{differences:?}");
        let epochs = format!(
            "optim.epochs: {} in the run, {} asked",
            was.optim.epochs, now.optim.epochs
        );
        assert!(differences.contains(&epochs), "{differences:?}");
        let message = other_configuration(Path::new("runs/a"), &was, &now).to_string();
        assert!(
            message.starts_with("runs/a holds a run with another configuration (")
                && message.contains(&epochs)
                && message.contains("mask_ratio: 0.15 in the run, 0.3 asked"),
            "{message}"
        );
        // A part present on one side only (vanilla MSN against MSN + EHR).
        let with_ehr = was
            .clone()
            .with_ehr(cxr_msn::ehr::FeatureSet::from_name("sex").unwrap());
        let differences = config_differences(&was, &with_ehr);
        assert!(
            differences
                .iter()
                .any(|d| d.starts_with("ehr: null in the run, {")),
            "{differences:?}"
        );
    }

    #[test]
    fn a_run_continued_on_other_data_keeps_every_earlier_path() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Path::new("data/a.csv"), Path::new("data/b.csv"));
        assert_eq!(previous_data(dir.path(), a), (vec![], None));
        let write = |data: &str, previous: &[String]| {
            let settings = serde_json::json!({ "data": data, "previous_data": previous });
            std::fs::write(dir.path().join("config.json"), settings.to_string()).unwrap();
        };
        write("data/a.csv", &[]);
        assert_eq!(previous_data(dir.path(), a), (vec![], None));
        let (history, changed) = previous_data(dir.path(), b);
        assert_eq!(history, ["data/a.csv"]);
        assert_eq!(changed.as_deref(), Some("data/a.csv"));
        write("data/b.csv", &history);
        assert_eq!(previous_data(dir.path(), b), (history.clone(), None));
        let (again, changed) = previous_data(dir.path(), a);
        assert_eq!(again, ["data/a.csv", "data/b.csv"]);
        assert_eq!(changed.as_deref(), Some("data/b.csv"));
    }

    #[test]
    fn toml_overrides_apply_by_section_and_typos_or_wrong_types_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        let base = MsnConfig::paper(VitPreset::Tiny);
        std::fs::write(
            &file,
            "mask_ratio = 0.3\n[loss]\nsinkhorn_iterations = 5\n[optim]\npeak_lr = 5e-4\n",
        )
        .unwrap();
        let c = apply_toml(base.clone(), &file).unwrap();
        assert_eq!(
            (c.mask_ratio, c.loss.sinkhorn_iterations, c.optim.peak_lr),
            (0.3, 5, 5e-4)
        );
        assert_eq!(
            c.head, base.head,
            "untouched sections stay as the profile has them"
        );
        std::fs::write(&file, "[loss]\nsinkhorn_iters = 5\n").unwrap();
        let err = format!("{:#}", apply_toml(base.clone(), &file).unwrap_err());
        assert!(
            err.contains("loss.sinkhorn_iters") && err.contains("sinkhorn_iterations"),
            "{err}"
        );
        std::fs::write(&file, "[loss]\ntemperature = \"hot\"\n").unwrap();
        assert!(format!("{:#}", apply_toml(base, &file).unwrap_err()).contains("wrong type"));
    }

    #[test]
    fn a_device_out_of_memory_panic_becomes_an_error_with_a_batch_size_to_try() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("checkpoint.safetensors");
        let panic: Box<dyn std::any::Any + Send> =
            Box::new("wgpu: Out of Memory while allocating 512 MiB".to_string());
        let err = explain_panic(panic.as_ref(), 7, 64, &checkpoint).to_string();
        assert!(
            err.contains("ran out of memory at step 7")
                && err.contains("--batch-size 32")
                && err.contains("no checkpoint had been written yet"),
            "{err}"
        );
        std::fs::write(&checkpoint, b"x").unwrap();
        let panic: Box<dyn std::any::Any + Send> = Box::new("index out of bounds");
        let err = explain_panic(panic.as_ref(), 3, 64, &checkpoint).to_string();
        assert!(
            err.contains("step 3 failed")
                && err.contains("is intact")
                && !err.contains("--batch-size"),
            "{err}"
        );
    }
}
