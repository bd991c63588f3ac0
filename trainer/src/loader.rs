//! The batch loader: decodes images and draws their views on worker threads, so that the
//! device never waits for the CPU, and hands batches out in order.
//!
//! Determinism: the order of an epoch is a seeded shuffle, and the views of an image come
//! from a generator seeded by (seed, epoch, image index); batch contents therefore do not
//! depend on the number of threads or on timing.
//!
//! Resolution: every image is loaded downscaled so that its shorter side is at most
//! `shorter_side` pixels (512 by default), which is as much detail as the views use (see
//! [`decode_downscaled`](cxr_msn::decode::decode_downscaled)).
//!
//! Pictures: a loaded image is kept as 16-bit levels ([`Grey16`]), half the bytes of floats
//! for the views to read; the views themselves are floats.
//!
//! Cache: with a cache folder, each image is decoded once and kept, so downscaled, as a small
//! raw file of those 16-bit levels keyed by the source path, size and modification time;
//! later epochs read that instead of decoding a full-size JPEG again. With or without the
//! cache the views are drawn from the same picture, to the bit.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use cxr_msn::config::{Normalization, ViewConfig};
use cxr_msn::image::{Grey16, GreyImage};
use cxr_msn::preprocess::BatchData;
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;
use cxr_msn::rand::seq::SliceRandom;
use cxr_msn::views::{
    AffineConfig, LOAD_SHORTER_SIDE, eval_view, msn_views, resize_shorter_side, train_view,
};

use crate::files::write_atomic;

/// One image to load: where it is, its encoded EHR vector and its label targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Image file.
    pub path: PathBuf,
    /// Encoded EHR (empty for vanilla MSN).
    pub ehr: Vec<f32>,
    /// Label targets after the label policy (`None` = left out of the loss).
    pub labels: Vec<Option<f32>>,
}

/// Which views a batch holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Views {
    /// MSN pretraining: target, random anchor and focal anchors.
    Msn(ViewConfig),
    /// Fine-tuning augmentation (flip, random affine, centre crop 224).
    Train(AffineConfig),
    /// Evaluation: shorter side 256, centre crop 224.
    Eval,
}

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Images per batch. Default 64 (the paper).
    pub batch_size: usize,
    /// Worker threads; 0 = all cores. Default 0.
    pub threads: usize,
    /// Seed of the shuffles and views. Default 0.
    pub seed: u64,
    /// Shuffle each epoch (training) or keep the item order (evaluation). Default true.
    pub shuffle: bool,
    /// Drop a last, smaller batch (MSN's batch statistics want full batches). Default true.
    pub drop_last: bool,
    /// Batches prepared ahead of the consumer. Default 4.
    pub prefetch: usize,
    /// Folder of the preprocessed-image cache; `None` decodes every time. Default none.
    pub cache_dir: Option<PathBuf>,
    /// Images are loaded (and cached) downscaled to this shorter side when theirs is longer.
    /// Default [`LOAD_SHORTER_SIDE`] (512), which `predict` and the browser page use too.
    pub shorter_side: usize,
    /// Pixel normalisation of the model.
    pub normalization: Normalization,
}

impl LoaderConfig {
    /// Defaults for a model with this normalisation.
    pub fn new(normalization: Normalization) -> Self {
        Self {
            batch_size: 64,
            threads: 0,
            seed: 0,
            shuffle: true,
            drop_last: true,
            prefetch: 4,
            cache_dir: None,
            shorter_side: LOAD_SHORTER_SIDE,
            normalization,
        }
    }
}

impl LoaderConfig {
    /// For scoring: the items in order, every item once (no shuffle, a last partial batch
    /// kept), batches of 16.
    pub fn for_scoring(normalization: Normalization, threads: usize) -> Self {
        Self {
            batch_size: 16,
            threads,
            shuffle: false,
            drop_last: false,
            ..Self::new(normalization)
        }
    }
}

/// One batch, as plain data (tensors are made on the device's thread).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Indices of the items in this batch, in order.
    pub items: Vec<usize>,
    /// MSN: target views `[B, 1, 224, 224]` (grey, with the normalisation the encoder
    /// applies); otherwise the one view per image.
    pub images: BatchData,
    /// MSN only: the random anchors `[B, 1, 224, 224]`.
    pub anchors: Option<BatchData>,
    /// MSN only: focal anchors `[F*B, 1, 96, 96]`, view-major.
    pub focal: Option<BatchData>,
    /// EHR `[B, ehr_in]`, row-major (empty when the items carry none).
    pub ehr: Vec<f32>,
    /// Label targets `[B, labels]`, row-major; `None` = ignored.
    pub labels: Vec<Option<f32>>,
}

/// Reads an image file into a grey image of 16-bit levels. The second argument is the
/// loader's [`LoaderConfig::shorter_side`]: the decoder may skip detail beyond it (the loader
/// downscales whatever is still larger).
pub type DecodeFn = dyn Fn(&Path, usize) -> Result<Grey16> + Send + Sync;

/// Batches of one epoch, in order, prepared by worker threads.
pub struct EpochBatches {
    receiver: Receiver<(usize, Result<Batch>)>,
    pending: BTreeMap<usize, Result<Batch>>,
    next: usize,
    total: usize,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// The views' seed for one image of one epoch.
fn view_seed(seed: u64, epoch: usize, item: usize) -> u64 {
    let mut h = DefaultHasher::new();
    (seed, epoch as u64, item as u64).hash(&mut h);
    h.finish()
}

/// The item order of an epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        order.shuffle(&mut StdRng::seed_from_u64(view_seed(
            seed,
            epoch,
            usize::MAX,
        )));
    }
    order
}

/// A batch loader over a fixed list of items.
pub struct Loader {
    items: Arc<Vec<Item>>,
    views: Views,
    config: LoaderConfig,
    decode: Arc<DecodeFn>,
}

impl Loader {
    /// The loader scoring uses: the evaluation view of every item, in order, none dropped,
    /// decoded from its file with the default limits.
    pub fn for_scoring(
        items: Vec<Item>,
        normalization: Normalization,
        threads: usize,
    ) -> Result<Self> {
        Self::new(
            items,
            Views::Eval,
            LoaderConfig::for_scoring(normalization, threads),
            crate::images::file_decoder(cxr_msn::decode::DecodeLimits::default()),
        )
    }

    /// A loader; `decode` reads one file (the project's decoder, or any other).
    pub fn new(
        items: Vec<Item>,
        views: Views,
        config: LoaderConfig,
        decode: Arc<DecodeFn>,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        if items.is_empty() {
            bail!("the dataset has no images");
        }
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
        }
        Ok(Self {
            items: Arc::new(items),
            views,
            config,
            decode,
        })
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.items.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Starts the workers for `epoch` and returns its batches in order.
    pub fn epoch(&self, epoch: usize) -> EpochBatches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on (the earlier ones are not prepared):
    /// what a run resumed in the middle of an epoch needs. Batch `i` is the same whichever
    /// batch the epoch started from.
    pub fn epoch_from(&self, epoch: usize, first: usize) -> EpochBatches {
        let order = Arc::new(epoch_order(
            self.items.len(),
            self.config.seed,
            epoch,
            self.config.shuffle,
        ));
        let total = self.batches_per_epoch();
        let threads = match self.config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (sender, receiver) = sync_channel(self.config.prefetch.max(1));
        let first = first.min(total);
        let next_batch = Arc::new(AtomicUsize::new(first));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..threads.min((total - first).max(1)))
            .map(|_| {
                let (sender, next_batch, stop, order) = (
                    sender.clone(),
                    next_batch.clone(),
                    stop.clone(),
                    order.clone(),
                );
                let (items, views, config, decode) = (
                    self.items.clone(),
                    self.views.clone(),
                    self.config.clone(),
                    self.decode.clone(),
                );
                std::thread::spawn(move || {
                    loop {
                        let b = next_batch.fetch_add(1, Ordering::Relaxed);
                        if b >= total || stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let end = ((b + 1) * config.batch_size).min(order.len());
                        let members = &order[b * config.batch_size..end];
                        let batch = build_batch(&items, members, &views, &config, epoch, &*decode);
                        if sender.send((b, batch)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        EpochBatches {
            receiver,
            pending: BTreeMap::new(),
            next: first,
            total,
            stop,
            workers,
        }
    }
}

impl Iterator for EpochBatches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        while !self.pending.contains_key(&self.next) {
            match self.receiver.recv() {
                Ok((i, batch)) => {
                    self.pending.insert(i, batch);
                }
                Err(_) => return Some(Err(anyhow::anyhow!("the loader's workers stopped early"))),
            }
        }
        let batch = self.pending.remove(&self.next);
        self.next += 1;
        batch
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock workers waiting on a full channel, then wait for them.
        while self.receiver.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            while !w.is_finished() {
                while self.receiver.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = w.join();
        }
    }
}

/// Loads one image, downscaled to the configured shorter side, through the cache when there
/// is one.
fn load_image(item: &Item, config: &LoaderConfig, decode: &DecodeFn) -> Result<Grey16> {
    let side = config.shorter_side;
    let decode = || -> Result<Grey16> {
        let img = decode(&item.path, side)?;
        Ok(if img.width.min(img.height) > side {
            Grey16::from_grey(resize_shorter_side(&img, side))
        } else {
            img
        })
    };
    let Some(dir) = &config.cache_dir else {
        return decode();
    };
    let meta = std::fs::metadata(&item.path)
        .with_context(|| format!("cannot read {}", item.path.display()))?;
    let mut h = DefaultHasher::new();
    (
        item.path.as_os_str(),
        meta.len(),
        meta.modified().ok(),
        side,
    )
        .hash(&mut h);
    let cached = dir.join(format!("{:016x}.grey16", h.finish()));
    if let Ok(bytes) = std::fs::read(&cached)
        && let Some(img) = grey16_decode(&bytes)
    {
        return Ok(img);
    }
    let img = decode()?;
    write_atomic(&cached, &grey16_encode(&img))?;
    Ok(img)
}

const GREY16_MAGIC: &[u8; 8] = b"CXRGREY1";

/// Raw cache format: magic, width and height (u32 LE), then the 16-bit levels (u16 LE).
fn grey16_encode(img: &Grey16) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 2 * img.pixels.len());
    out.extend_from_slice(GREY16_MAGIC);
    out.extend_from_slice(&(img.width as u32).to_le_bytes());
    out.extend_from_slice(&(img.height as u32).to_le_bytes());
    out.extend(img.pixels.iter().flat_map(|p| p.to_le_bytes()));
    out
}

/// Reads the cache format; `None` for anything malformed (the entry is then rebuilt).
fn grey16_decode(bytes: &[u8]) -> Option<Grey16> {
    let header = bytes.get(..16)?;
    if &header[..8] != GREY16_MAGIC {
        return None;
    }
    let width = u32::from_le_bytes(header[8..12].try_into().ok()?) as usize;
    let height = u32::from_le_bytes(header[12..16].try_into().ok()?) as usize;
    let body = &bytes[16..];
    if body.len() != 2 * width.checked_mul(height)? {
        return None;
    }
    let pixels = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Grey16::new(width, height, pixels)
}

fn build_batch(
    items: &[Item],
    members: &[usize],
    views: &Views,
    config: &LoaderConfig,
    epoch: usize,
    decode: &DecodeFn,
) -> Result<Batch> {
    let norm = &config.normalization;
    let mut targets = Vec::with_capacity(members.len());
    let mut anchors = Vec::new();
    let mut focal: Vec<Vec<GreyImage>> = Vec::new();
    let mut ehr = Vec::new();
    let mut labels = Vec::new();
    for &i in members {
        let item = &items[i];
        let img = load_image(item, config, decode)?;
        let mut rng = StdRng::seed_from_u64(view_seed(config.seed, epoch, i));
        match views {
            Views::Msn(cfg) => {
                let v = msn_views(&img, cfg, &mut rng);
                targets.push(v.target);
                anchors.push(v.anchor);
                focal.push(v.focal);
            }
            Views::Train(cfg) => targets.push(train_view(&img, cfg, &mut rng)),
            Views::Eval => targets.push(eval_view(&img)),
        }
        ehr.extend_from_slice(&item.ehr);
        labels.extend_from_slice(&item.labels);
    }
    let pack = |imgs: Vec<&GreyImage>| BatchData::pack(&imgs, norm).map_err(anyhow::Error::new);
    let images = pack(targets.iter().collect())?;
    let (anchors, focal) = match views {
        Views::Msn(cfg) => {
            // View-major: all images' first focal view, then all second views, ...
            let focal_refs = (0..cfg.focal_views)
                .flat_map(|j| focal.iter().map(move |f| &f[j]))
                .collect();
            (
                Some(pack(anchors.iter().collect())?),
                Some(pack(focal_refs)?),
            )
        }
        _ => (None, None),
    };
    Ok(Batch {
        items: members.to_vec(),
        images,
        anchors,
        focal,
        ehr,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder that makes a distinct gradient image per file name, without files.
    fn fake_decode() -> Arc<DecodeFn> {
        Arc::new(|path: &Path, _side: usize| {
            let k: usize = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
                .context("test paths are numbers")?;
            let (w, h) = (300 + k, 260);
            let pixels = (0..w * h)
                .map(|i| ((i % w) as f32 + k as f32) / (w + k) as f32)
                .collect();
            Ok(Grey16::from_grey(
                GreyImage::new(w, h, pixels).expect("size matches"),
            ))
        })
    }

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                path: PathBuf::from(format!("{i}.png")),
                ehr: vec![i as f32, 1.0],
                labels: vec![Some((i % 2) as f32), None],
            })
            .collect()
    }

    fn config(threads: usize) -> LoaderConfig {
        let mut c = LoaderConfig::new(Normalization::imagenet(1));
        c.batch_size = 4;
        c.threads = threads;
        c.seed = 9;
        c
    }

    #[test]
    fn batches_are_in_order_complete_and_independent_of_thread_count() {
        let views = ViewConfig {
            focal_views: 2,
            ..Default::default()
        };
        let one = Loader::new(
            items(10),
            Views::Msn(views.clone()),
            config(1),
            fake_decode(),
        )
        .unwrap();
        let four = Loader::new(items(10), Views::Msn(views), config(4), fake_decode()).unwrap();
        assert_eq!(
            one.batches_per_epoch(),
            2,
            "10 images, batches of 4, last dropped"
        );
        let a: Vec<Batch> = one.epoch(0).map(Result::unwrap).collect();
        let b: Vec<Batch> = four.epoch(0).map(Result::unwrap).collect();
        assert_eq!(a, b);
        assert_eq!(a[0].images.shape, [4, 1, 224, 224]);
        assert_eq!(a[0].anchors.as_ref().unwrap().shape, [4, 1, 224, 224]);
        assert_eq!(a[0].focal.as_ref().unwrap().shape, [8, 1, 96, 96]);
        assert_eq!(a[0].ehr.len(), 8);
        assert_eq!(
            a[0].ehr[0], a[0].items[0] as f32,
            "EHR rows follow the items"
        );
        let next_epoch: Vec<Batch> = one.epoch(1).map(Result::unwrap).collect();
        assert_ne!(a[0].items, next_epoch[0].items, "each epoch reshuffles");
        let resumed: Vec<Batch> = four.epoch_from(0, 1).map(Result::unwrap).collect();
        assert_eq!(
            resumed,
            a[1..],
            "an epoch started later gives the same later batches"
        );
        assert_eq!(four.epoch_from(0, 7).count(), 0, "past the end: no batches");
    }

    #[test]
    fn evaluation_keeps_the_order_and_the_last_partial_batch() {
        let mut c = config(2);
        c.shuffle = false;
        c.drop_last = false;
        let loader = Loader::new(items(10), Views::Eval, c, fake_decode()).unwrap();
        let batches: Vec<Batch> = loader.epoch(0).map(Result::unwrap).collect();
        assert_eq!(batches.len(), 3);
        let order: Vec<usize> = batches.iter().flat_map(|b| b.items.clone()).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        assert_eq!(batches[2].images.shape, [2, 1, 224, 224]);
        assert_eq!(batches[2].labels, vec![Some(0.0), None, Some(1.0), None]);
    }

    #[test]
    fn a_decode_error_reaches_the_consumer_and_stopping_early_is_clean() {
        let failing: Arc<DecodeFn> = Arc::new(|p: &Path, _| bail!("{}: corrupt JPEG", p.display()));
        let loader = Loader::new(items(12), Views::Eval, config(2), failing).unwrap();
        let first = loader.epoch(0).next().unwrap();
        assert!(format!("{:#}", first.unwrap_err()).contains("corrupt JPEG"));
        let ok = Loader::new(items(40), Views::Eval, config(3), fake_decode()).unwrap();
        let mut epoch = ok.epoch(0);
        assert!(epoch.next().unwrap().is_ok());
        drop(epoch); // workers blocked on a full channel must still end
    }

    #[test]
    fn the_cache_returns_the_downscaled_image_and_survives_corruption() {
        let dir = std::env::temp_dir().join(format!("cxr-msn-cache-{}", std::process::id()));
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        let path = src.join("3.png");
        std::fs::write(&path, b"stand-in").unwrap();
        let mut c = config(1);
        c.cache_dir = Some(dir.join("cache"));
        c.shorter_side = 128;
        std::fs::create_dir_all(dir.join("cache")).unwrap();
        let decode = fake_decode();
        let item = Item {
            path,
            ehr: vec![],
            labels: vec![],
        };
        let first = load_image(&item, &c, &*decode).unwrap();
        assert_eq!(first.height, 128, "shorter side downscaled");
        let cached: Vec<_> = std::fs::read_dir(dir.join("cache")).unwrap().collect();
        assert_eq!(cached.len(), 1);
        let failing: Arc<DecodeFn> = Arc::new(|_: &Path, _| bail!("must not decode again"));
        let second = load_image(&item, &c, &*failing).unwrap();
        assert_eq!(
            second, first,
            "the cache keeps the picture's levels exactly"
        );
        // Without the cache the views start from the same downscaled picture.
        let mut uncached = c.clone();
        uncached.cache_dir = None;
        assert_eq!(load_image(&item, &uncached, &*decode).unwrap(), first);
        // A damaged entry is rebuilt, not trusted.
        let entry = cached[0].as_ref().unwrap().path();
        std::fs::write(&entry, b"CXRGREY1junk").unwrap();
        assert!(load_image(&item, &c, &*failing).is_err());
        assert!(load_image(&item, &c, &*decode).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }
}
