//! Plots as standalone SVG files (no plotting library, no fonts to ship): line charts for
//! loss and ROC curves, scatter plots for embedding maps. Every browser and most image
//! viewers open them; the numbers behind each plot are written beside it as CSV or JSON.

use std::fmt::Write as _;

/// A palette that stays distinguishable for the 14 labels of a chest X-ray dataset.
const COLOURS: [&str; 14] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#7b4173",
];

/// The colour of series `i`.
pub fn colour(i: usize) -> &'static str {
    COLOURS[i % COLOURS.len()]
}

/// One named line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points in drawing order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A chart's frame: title, axis names and, when fixed, the axis ranges.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// Title above the plot area.
    pub title: String,
    /// Name of the x axis.
    pub x_label: String,
    /// Name of the y axis.
    pub y_label: String,
    /// Fixed x range (default: the data's).
    pub x_range: Option<(f64, f64)>,
    /// Fixed y range (default: the data's).
    pub y_range: Option<(f64, f64)>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 48.0;

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The data range of some values, widened when flat.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

/// Maps data coordinates into the plot area.
struct Axes {
    x: (f64, f64),
    y: (f64, f64),
}

impl Axes {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (WIDTH - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        HEIGHT - BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (HEIGHT - TOP - BOTTOM)
    }
}

/// Opens the SVG with the frame: title, axes with 5 ticks each, axis names.
fn open(frame: &Frame, axes: &Axes) -> String {
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" font-size="14" text-anchor="middle">{}</text>
"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        escape(&frame.title)
    );
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM);
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        x1 - x0,
        y1 - y0
    );
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let xv = axes.x.0 + f * (axes.x.1 - axes.x.0);
        let yv = axes.y.0 + f * (axes.y.1 - axes.y.0);
        let (px, py) = (axes.px(xv), axes.py(yv));
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{y1}" x2="{px:.1}" y2="{:.1}" stroke="#444"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y1 + 4.0,
            y1 + 16.0,
            tick(xv)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{py:.1}" x2="{x0}" y2="{py:.1}" stroke="#444"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 4.0,
            x0 - 6.0,
            py + 4.0,
            tick(yv)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 10.0,
        escape(&frame.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(&frame.y_label)
    );
    s
}

/// A tick label: short, whatever the magnitude.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// Legend entry `i` (a coloured swatch and the name) right of the plot area.
fn legend(s: &mut String, i: usize, name: &str) {
    let y = TOP + 8.0 + 15.0 * i as f64;
    let x = WIDTH - RIGHT + 12.0;
    let _ = writeln!(
        s,
        r#"<rect x="{x}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
        y - 9.0,
        colour(i),
        x + 14.0,
        y,
        escape(name)
    );
}

/// A line chart of several series.
pub fn line_chart(frame: &Frame, series: &[Series]) -> String {
    let axes = Axes {
        x: frame
            .x_range
            .unwrap_or_else(|| range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)))),
        y: frame
            .y_range
            .unwrap_or_else(|| range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)))),
    };
    let mut s = open(frame, &axes);
    for (i, line) in series.iter().enumerate() {
        let mut path = String::new();
        for &(x, y) in line
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
        {
            let cmd = if path.is_empty() { 'M' } else { 'L' };
            let _ = write!(path, "{cmd}{:.1},{:.1} ", axes.px(x), axes.py(y));
        }
        if !path.is_empty() {
            let _ = writeln!(
                s,
                r#"<path d="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                path.trim_end(),
                colour(i)
            );
        }
        legend(&mut s, i, &line.name);
    }
    s.push_str("</svg>\n");
    s
}

/// A scatter plot: `points[i]` drawn in the colour of `groups[i]`, named by `group_names`.
pub fn scatter(
    frame: &Frame,
    points: &[[f64; 2]],
    groups: &[usize],
    group_names: &[String],
) -> String {
    let axes = Axes {
        x: frame
            .x_range
            .unwrap_or_else(|| range(points.iter().map(|p| p[0]))),
        y: frame
            .y_range
            .unwrap_or_else(|| range(points.iter().map(|p| p[1]))),
    };
    let mut s = open(frame, &axes);
    for (p, &g) in points.iter().zip(groups) {
        if p[0].is_finite() && p[1].is_finite() {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}" fill-opacity="0.7"/>"#,
                axes.px(p[0]),
                axes.py(p[1]),
                colour(g)
            );
        }
    }
    for (i, name) in group_names.iter().enumerate() {
        legend(&mut s, i, name);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_well_formed_svg_with_every_series_and_escaped_text() {
        let frame = Frame {
            title: "loss <train> & co".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            ..Frame::default()
        };
        let svg = line_chart(
            &frame,
            &[
                Series {
                    name: "total".into(),
                    points: vec![(0.0, 3.0), (1.0, f64::NAN), (2.0, 2.0)],
                },
                Series {
                    name: "flat".into(),
                    points: vec![(0.0, 1.0), (2.0, 1.0)],
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains("loss &lt;train&gt; &amp; co"));
        assert!(!svg.contains("NaN"), "non-finite points are skipped");
        // The first point sits at the left edge and the top (highest y).
        assert!(svg.contains(&format!("M{LEFT:.1},{TOP:.1}")), "{svg}");
        let dots = scatter(
            &frame,
            &[[0.0, 0.0], [1.0, 2.0], [f64::INFINITY, 0.0]],
            &[0, 1, 1],
            &["a".into(), "b".into()],
        );
        assert_eq!(dots.matches("<circle").count(), 2);
    }
}

/// One row of an interval chart: a label and, per series, `(value, low, high)`.
#[derive(Debug, Clone)]
pub struct IntervalRow {
    /// Text left of the row.
    pub label: String,
    /// One entry per series; `None` draws nothing.
    pub values: Vec<Option<(f64, f64, f64)>>,
}

/// A forest plot: one row per label, a dot with its interval per series (horizontal), the
/// x axis shared. A dashed line marks 0.5 (chance for AUROC) when it is in range.
pub fn interval_chart(title: &str, x_label: &str, series: &[&str], rows: &[IntervalRow]) -> String {
    const W: f64 = 760.0;
    const L: f64 = 260.0;
    const R: f64 = 24.0;
    const T: f64 = 58.0;
    const ROW: f64 = 28.0;
    let h = T + ROW * rows.len().max(1) as f64 + 46.0;
    let (lo, hi) = range(
        rows.iter()
            .flat_map(|r| r.values.iter().flatten())
            .flat_map(|&(v, l, u)| [v, l, u]),
    );
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = (lo - pad, hi + pad);
    let px = |x: f64| L + (x - lo) / (hi - lo) * (W - L - R);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="18" font-size="13" text-anchor="middle">{}</text>
"#,
        W / 2.0,
        escape(title)
    );
    for (i, name) in series.iter().enumerate() {
        let x = L + 150.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<circle cx="{x}" cy="38" r="4" fill="{}"/><text x="{}" y="42">{}</text>"#,
            colour(i),
            x + 8.0,
            escape(name)
        );
    }
    let bottom = h - 46.0;
    let _ = writeln!(
        s,
        r##"<line x1="{L}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#444"/>"##,
        W - R
    );
    for k in 0..=4 {
        let x = lo + (hi - lo) * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{T}" x2="{0:.1}" y2="{1}" stroke="#ddd"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            px(x),
            bottom + 4.0,
            bottom + 16.0,
            tick(x)
        );
    }
    if (lo..=hi).contains(&0.5) {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{T}" x2="{0:.1}" y2="{bottom}" stroke="#888" stroke-dasharray="4 3"/>"##,
            px(0.5)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (L + W - R) / 2.0,
        h - 10.0,
        escape(x_label)
    );
    let n = series.len().max(1) as f64;
    for (i, row) in rows.iter().enumerate() {
        let y = T + ROW * (i as f64 + 0.5);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            L - 8.0,
            y + 4.0,
            escape(&row.label)
        );
        for (j, value) in row.values.iter().enumerate() {
            let Some((v, l, u)) = value else { continue };
            let yj = y + (j as f64 - (n - 1.0) / 2.0) * 7.0;
            let c = colour(j);
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{yj:.1}" x2="{:.1}" y2="{yj:.1}" stroke="{c}" stroke-width="2"/><circle cx="{:.1}" cy="{yj:.1}" r="4" fill="{c}"/>"#,
                px(*l),
                px(*u),
                px(*v)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
