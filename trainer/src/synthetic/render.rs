//! Drawing a chest-radiograph-like grey image for a [`Subject`].
//!
//! A frontal film in display convention (air dark, bone bright; the patient's right on the
//! image's left): soft-tissue body, spine and mediastinum, two lungs with vascular markings
//! brightest at the hila, diaphragm domes, heart (magnified on AP films, as real AP films
//! magnify it), ribs thinning with age, clavicles, breast shadows on adult women; then each
//! finding the subject has, drawn where a radiologist would look for it; then exposure,
//! gamma and noise. Every part draws from its own seeded stream, so adding one finding to
//! a subject changes only that finding's pixels.

use cxr_msn::ehr::{Sex, ViewPosition};
use cxr_msn::image::GreyImage;
use cxr_msn::rand::rngs::StdRng;
use cxr_msn::rand::{RngExt, SeedableRng};

use super::world::{Subject, label_index};

/// Smooth-cornered inside test of an ellipse: 1 well inside, 0 outside, a soft rim of
/// relative width `soft`.
fn ellipse(u: f32, v: f32, c: (f32, f32), r: (f32, f32), soft: f32) -> f32 {
    let d = ((u - c.0) / r.0).powi(2) + ((v - c.1) / r.1).powi(2);
    ((1.0 - d) / soft).clamp(0.0, 1.0)
}

/// Distance from (u, v) to the segment a-b.
fn segment_distance(u: f32, v: f32, a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let t = (((u - a.0) * dx + (v - a.1) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
    ((u - a.0 - t * dx).powi(2) + (v - a.1 - t * dy).powi(2)).sqrt()
}

/// A bright line of half-width `w` along a segment, soft-edged.
fn line(u: f32, v: f32, a: (f32, f32), b: (f32, f32), w: f32) -> f32 {
    (1.0 - segment_distance(u, v, a, b) / w).clamp(0.0, 1.0)
}

/// Smooth random field in [-1, 1]: bilinear interpolation of a coarse random grid.
struct ValueNoise {
    n: usize,
    grid: Vec<f32>,
}

impl ValueNoise {
    fn new(n: usize, rng: &mut StdRng) -> Self {
        let grid = (0..(n + 1) * (n + 1))
            .map(|_| rng.random_range(-1.0..1.0f32))
            .collect();
        Self { n, grid }
    }

    fn at(&self, u: f32, v: f32) -> f32 {
        let (x, y) = (
            u.clamp(0.0, 1.0) * self.n as f32,
            v.clamp(0.0, 1.0) * self.n as f32,
        );
        let (x0, y0) = ((x as usize).min(self.n - 1), (y as usize).min(self.n - 1));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let g = |i: usize, j: usize| self.grid[j * (self.n + 1) + i];
        let top = g(x0, y0) * (1.0 - fx) + g(x0 + 1, y0) * fx;
        let bottom = g(x0, y0 + 1) * (1.0 - fx) + g(x0 + 1, y0 + 1) * fx;
        top * (1.0 - fy) + bottom * fy
    }
}

/// A seeded stream for one part of the drawing.
fn stream(seed: u64, part: u64) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(part))
}

/// Where a finding sits: which lung (0 = image left = patient's right, 1 = image left's
/// opposite), and a position inside it.
struct Site {
    side: usize,
    u: f32,
    v: f32,
}

fn site(rng: &mut StdRng, v_range: (f32, f32)) -> Site {
    let side = rng.random_range(0..2usize);
    let centre = [0.31, 0.69][side];
    Site {
        side,
        u: centre + rng.random_range(-0.06..0.06f32),
        v: rng.random_range(v_range.0..v_range.1),
    }
}

/// Renders `subject` as a `size` x `size` image; the same `(subject, seed)` gives the
/// same pixels.
pub fn render(subject: &Subject, size: usize, seed: u64) -> GreyImage {
    let has = |name: &str| subject.has(name);
    let mut anatomy = stream(seed, 1);
    // Pose: small shift, scale and tilt of the patient on the film.
    let shift = (
        anatomy.random_range(-0.025..0.025f32),
        anatomy.random_range(-0.025..0.025f32),
    );
    let zoom = anatomy.random_range(0.95..1.05f32);
    let tilt = anatomy.random_range(-0.04..0.04f32);
    let markings = ValueNoise::new(24, &mut anatomy);
    let tissue = ValueNoise::new(6, &mut anatomy);
    let rib_phase = anatomy.random_range(-0.01..0.01f32);
    let dome = [
        0.70 + anatomy.random_range(-0.02..0.02f32),
        0.72 + anatomy.random_range(-0.02..0.02f32),
    ];
    let adult_woman = subject.sex == Sex::Female && subject.age >= 15.0;
    let density = 1.0 - 0.006 * (subject.age - 50.0).max(0.0);
    let ap = subject.view == ViewPosition::Ap;
    let heart_width =
        0.12 * if ap { 1.12 } else { 1.0 } * if has("Cardiomegaly") { 1.5 } else { 1.0 };
    let mediastinum = if has("Enlarged Cardiomediastinum") {
        0.105
    } else {
        0.065
    };

    // Findings, each from its own stream.
    let finding_rng = |name: &str| stream(seed, 100 + label_index(name) as u64);
    let effusion = has("Pleural Effusion").then(|| {
        let mut r = finding_rng("Pleural Effusion");
        let sides = match r.random_range(0..3) {
            0 => [true, false],
            1 => [false, true],
            _ => [true, true],
        };
        (sides, r.random_range(0.56..0.62f32))
    });
    let pneumothorax = has("Pneumothorax").then(|| {
        let mut r = finding_rng("Pneumothorax");
        (r.random_range(0..2usize), r.random_range(0.035..0.06f32))
    });
    let blob = |name: &str, v_range, radius: (f32, f32)| {
        has(name).then(|| {
            let mut r = finding_rng(name);
            let s = site(&mut r, v_range);
            let rad = r.random_range(radius.0..radius.1);
            (s, rad, ValueNoise::new(10, &mut r))
        })
    };
    let consolidation = blob("Consolidation", (0.45, 0.62), (0.045, 0.065));
    let pneumonia = blob("Pneumonia", (0.52, 0.65), (0.06, 0.08));
    let opacity = blob("Lung Opacity", (0.3, 0.6), (0.07, 0.1));
    let atelectasis = blob("Atelectasis", (0.58, 0.66), (0.07, 0.1));
    let nodules: Vec<(Site, f32)> = if has("Lung Lesion") {
        let mut r = finding_rng("Lung Lesion");
        let n = r.random_range(1..3);
        (0..n)
            .map(|_| (site(&mut r, (0.25, 0.6)), r.random_range(0.012..0.028f32)))
            .collect()
    } else {
        Vec::new()
    };
    let pleural_other =
        has("Pleural Other").then(|| finding_rng("Pleural Other").random_range(0..2usize));
    let fracture = has("Fracture").then(|| {
        let mut r = finding_rng("Fracture");
        (
            r.random_range(2..8usize),
            r.random_range(0..2usize),
            r.random_range(0.05..0.1f32),
        )
    });
    let devices = has("Support Devices").then(|| {
        let mut r = finding_rng("Support Devices");
        let tube = 0.5 + r.random_range(-0.01..0.01f32);
        let line_start = (r.random_range(0.15..0.25f32), r.random_range(0.08..0.14f32));
        let leads: Vec<(f32, f32)> = (0..3)
            .map(|_| (r.random_range(0.15..0.85f32), r.random_range(0.1..0.8f32)))
            .collect();
        (tube, line_start, leads)
    });

    let mut noise = stream(seed, 2);
    let gain = noise.random_range(0.9..1.1f32);
    let gamma = noise.random_range(0.85..1.15f32);
    let grain = 0.015;

    let (sin, cos) = tilt.sin_cos();
    let mut pixels = Vec::with_capacity(size * size);
    for py in 0..size {
        for px in 0..size {
            // Film coordinates -> body coordinates (undo the pose).
            let (fu, fv) = (
                (px as f32 + 0.5) / size as f32 - 0.5,
                (py as f32 + 0.5) / size as f32 - 0.5,
            );
            let (ru, rv) = (cos * fu - sin * fv, sin * fu + cos * fv);
            let u = ru / zoom + 0.5 - shift.0;
            let v = rv / zoom + 0.5 - shift.1;

            let body = ellipse(u, v, (0.5, 0.58), (0.47, 0.56), 0.08);
            let mut value = 0.04 + 0.34 * body * (1.0 + 0.08 * tissue.at(u, v));
            value += 0.16 * body * (1.0 - (u - 0.5).abs() / 0.035).clamp(0.0, 1.0); // spine
            if (0.06..0.62).contains(&v) {
                value += 0.12 * (1.0 - ((u - 0.5).abs() - mediastinum) / 0.015).clamp(0.0, 1.0);
            }

            // Lungs, cut by the diaphragm domes; atelectasis raises its side's dome.
            let mut lung = [0.0f32; 2];
            for (side, centre) in [0.31f32, 0.69].into_iter().enumerate() {
                let lift = match &atelectasis {
                    Some((s, _, _)) if s.side == side => 0.03,
                    _ => 0.0,
                };
                let dome_v =
                    dome[side] - lift - 0.07 * (1.0 - ((u - centre) / 0.16).powi(2)).max(0.0);
                let below = ((v - dome_v) / 0.01).clamp(0.0, 1.0);
                lung[side] = ellipse(u, v, (centre, 0.47), (0.145, 0.31), 0.1) * (1.0 - below);
            }
            let in_lung = lung[0].max(lung[1]);
            let hilum = [(0.42f32, 0.45f32), (0.58, 0.45)]
                .iter()
                .map(|h| ((u - h.0).powi(2) + (v - h.1).powi(2)).sqrt())
                .fold(f32::MAX, f32::min);
            let vessels = (0.5 + 0.5 * markings.at(u, v)) * (0.04 + 0.08 * (-hilum / 0.12).exp());
            // The heart sits in front of the medial lungs and replaces their air: a soft-tissue
            // silhouette bulging to the patient's left (image right).
            let heart = ellipse(u, v, (0.545, 0.6), (heart_width, 0.12), 0.35);
            // Lung fields that still hold air: findings fill these, not the heart's shadow.
            for l in &mut lung {
                *l *= 1.0 - heart;
            }
            let mut air = 0.30 * in_lung * (1.0 - heart);
            let mut marks = vessels * in_lung * (1.0 - heart);

            if let Some((side, depth)) = pneumothorax {
                // A lateral-apical rim of lung without markings, bounded by the pleural line.
                let centre = [0.31f32, 0.69][side];
                let rim = ellipse(u, v, (centre, 0.47), (0.145 - depth, 0.31 - depth), 0.04);
                let outer = lung[side] * (1.0 - rim) * (v < 0.62) as u8 as f32;
                marks *= 1.0 - outer;
                air += 0.06 * outer;
                let edge = (1.0 - ((rim - 0.5).abs() / 0.25)).clamp(0.0, 1.0) * lung[side];
                value += 0.1 * edge * (v < 0.62) as u8 as f32;
            }
            value += marks - air;

            value += 0.05 * heart;
            if adult_woman {
                for c in [(0.3f32, 0.74f32), (0.7, 0.74)] {
                    value += 0.07 * ellipse(u, v, c, (0.14, 0.1), 0.5);
                }
            }

            // Ribs: curved bands over each lung field; clavicles across the apices.
            let mut bone = 0.0f32;
            if (0.13..0.87).contains(&u) && body > 0.0 {
                let side = (u > 0.5) as usize;
                for k in 0..9usize {
                    let curve = 0.18 + rib_phase + 0.058 * k as f32 + 0.55 * (u - 0.5).powi(2);
                    let (mut centre_v, mut gap) = (curve, false);
                    if let Some((fk, fs, offset)) = fracture
                        && fk == k
                        && fs == side
                    {
                        let break_u =
                            [0.31f32, 0.69][side] + if side == 0 { -offset } else { offset };
                        if (u - break_u).abs() < 0.008 {
                            gap = true;
                        } else if (side == 0 && u < break_u) || (side == 1 && u > break_u) {
                            centre_v += 0.014;
                        }
                    }
                    if !gap {
                        bone = bone.max((1.0 - (v - centre_v).abs() / 0.011).clamp(0.0, 1.0));
                    }
                }
            }
            for end in [(0.2f32, 0.105f32), (0.8, 0.105)] {
                bone = bone.max(line(u, v, (0.5 + (end.0 - 0.5) * 0.15, 0.15), end, 0.014));
            }
            value += 0.13 * density * bone;

            // Findings.
            if let Some((sides, level)) = effusion {
                for (side, present) in sides.into_iter().enumerate() {
                    if present {
                        let centre = [0.31f32, 0.69][side];
                        // Meniscus: the fluid climbs the lateral wall.
                        let meniscus = level - 0.08 * ((u - centre).abs() / 0.145).powi(2);
                        let fluid = ((v - meniscus) / 0.02).clamp(0.0, 1.0);
                        value += 0.30 * fluid * lung[side];
                    }
                }
            }
            for (found, amplitude) in [
                (&consolidation, 0.24f32),
                (&pneumonia, 0.18),
                (&opacity, 0.11),
            ] {
                if let Some((s, radius, texture)) = found {
                    let d = ((u - s.u).powi(2) + (v - s.v).powi(2)).sqrt() / radius;
                    let patchy = 0.75 + 0.25 * texture.at(u, v);
                    value += amplitude * patchy * (-d * d).exp() * lung[s.side];
                }
            }
            if let Some((s, radius, _)) = &atelectasis {
                // A plate: a thin, wide band low in the lung.
                value += 0.2 * ellipse(u, v, (s.u, s.v), (*radius, 0.014), 0.3) * lung[s.side];
            }
            if has("Edema") {
                // Bilateral perihilar ("bat-wing") haze.
                value += 0.16 * (-hilum / 0.11).exp() * lung[0].max(lung[1]);
            }
            for (s, radius) in &nodules {
                value += 0.26 * ellipse(u, v, (s.u, s.v), (*radius, *radius), 0.25);
            }
            if let Some(side) = pleural_other {
                let centre = [0.31f32, 0.69][side];
                let inner = ellipse(u, v, (centre, 0.47), (0.125, 0.29), 0.1);
                value += 0.15 * lung[side] * (1.0 - inner);
            }
            if let Some((tube, start, leads)) = &devices {
                let mut device = line(u, v, (*tube, 0.0), (*tube, 0.3), 0.006);
                device = device.max(line(u, v, *start, (0.45, 0.24), 0.005));
                device = device.max(line(u, v, (0.45, 0.24), (0.48, 0.42), 0.005));
                for lead in leads {
                    let r = ((u - lead.0).powi(2) + (v - lead.1).powi(2)).sqrt();
                    device = device.max((1.0 - (r - 0.012).abs() / 0.004).clamp(0.0, 1.0));
                }
                value = value.max(0.95 * device);
            }

            let exposed = (gain * value).clamp(0.0, 1.0).powf(gamma);
            let grainy = exposed + grain * noise.random_range(-1.7..1.7f32);
            pixels.push(grainy.clamp(0.0, 1.0));
        }
    }
    GreyImage {
        width: size,
        height: size,
        pixels,
    }
}
