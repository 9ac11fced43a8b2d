//! Charts as inline SVG, drawn on the server: no script, no library, nothing fetched. Pure: data
//! in, markup out.

use super::pages::escape;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 260.0;
const MARGIN: f64 = 44.0;
/// Colours of successive series (and of points by kind).
const PALETTE: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

/// A point of a scatter: where, and how it is drawn (`kind` indexes the palette) with a tooltip.
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub kind: usize,
    pub label: String,
}

struct Scale {
    min_x: f64,
    max_x: f64,
    min_y: f64,
    max_y: f64,
}

impl Scale {
    fn of(points: impl Iterator<Item = (f64, f64)>) -> Option<Scale> {
        let mut scale: Option<Scale> = None;
        for (x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            let s = scale.get_or_insert(Scale { min_x: x, max_x: x, min_y: y, max_y: y });
            s.min_x = s.min_x.min(x);
            s.max_x = s.max_x.max(x);
            s.min_y = s.min_y.min(y);
            s.max_y = s.max_y.max(y);
        }
        // A flat range still gets some height and width.
        scale.map(|mut s| {
            if s.max_x == s.min_x {
                s.max_x += 0.5;
                s.min_x -= 0.5;
            }
            if s.max_y == s.min_y {
                s.max_y += 0.5;
                s.min_y -= 0.5;
            }
            s
        })
    }

    fn x(&self, x: f64) -> f64 {
        MARGIN + (x - self.min_x) / (self.max_x - self.min_x) * (WIDTH - 2.0 * MARGIN)
    }

    fn y(&self, y: f64) -> f64 {
        HEIGHT - MARGIN - (y - self.min_y) / (self.max_y - self.min_y) * (HEIGHT - 2.0 * MARGIN)
    }
}

fn frame(scale: &Scale, x_label: &str, y_label: &str, body: &str) -> String {
    let number = |v: f64| if v.abs() >= 1000.0 || v == v.trunc() { format!("{v:.0}") } else { format!("{v:.4}") };
    format!(
        r##"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" xmlns="http://www.w3.org/2000/svg"><rect x="{m}" y="{m}" width="{w}" height="{h}" fill="none" stroke="#ccc"/><text x="{m}" y="{bottom}" font-size="11">{min_x}</text><text x="{right}" y="{bottom}" font-size="11" text-anchor="end">{max_x}</text><text x="4" y="{low}" font-size="11">{min_y}</text><text x="4" y="{top}" font-size="11">{max_y}</text><text x="{mid}" y="{label_y}" font-size="12" text-anchor="middle">{x_label}</text><text x="4" y="14" font-size="12">{y_label}</text>{body}</svg>"##,
        m = MARGIN,
        w = WIDTH - 2.0 * MARGIN,
        h = HEIGHT - 2.0 * MARGIN,
        bottom = HEIGHT - MARGIN + 14.0,
        right = WIDTH - MARGIN,
        low = HEIGHT - MARGIN,
        top = MARGIN + 4.0,
        mid = WIDTH / 2.0,
        label_y = HEIGHT - 8.0,
        min_x = number(scale.min_x),
        max_x = number(scale.max_x),
        min_y = number(scale.min_y),
        max_y = number(scale.max_y),
        x_label = escape(x_label),
        y_label = escape(y_label),
    )
}

fn polyline(scale: &Scale, points: &[(f64, f64)], colour: &str, class: &str) -> String {
    let path: Vec<String> = points
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(x, y)| format!("{:.1},{:.1}", scale.x(*x), scale.y(*y)))
        .collect();
    format!(
        r#"<polyline class="{class}" fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
        path.join(" ")
    )
}

/// Points (each with its tooltip), and optionally a line through `line` (e.g. the best so far).
/// `None` when there is nothing to draw.
pub fn scatter(points: &[Point], line: Option<&[(f64, f64)]>, x_label: &str, y_label: &str) -> Option<String> {
    let all = points.iter().map(|p| (p.x, p.y)).chain(line.unwrap_or_default().iter().copied());
    let scale = Scale::of(all)?;
    let mut body = String::new();
    if let Some(line) = line {
        body.push_str(&polyline(&scale, line, "#444", "best"));
    }
    for p in points.iter().filter(|p| p.x.is_finite() && p.y.is_finite()) {
        body.push_str(&format!(
            r#"<circle class="point kind-{kind}" cx="{:.1}" cy="{:.1}" r="4" fill="{colour}"><title>{}</title></circle>"#,
            scale.x(p.x),
            scale.y(p.y),
            escape(&p.label),
            kind = p.kind,
            colour = PALETTE[p.kind % PALETTE.len()],
        ));
    }
    Some(frame(&scale, x_label, y_label, &body))
}

/// One line per series (name, points), with a legend. `None` when there is nothing to draw.
pub fn lines(series: &[(String, Vec<(f64, f64)>)], x_label: &str, y_label: &str) -> Option<String> {
    let scale = Scale::of(series.iter().flat_map(|(_, points)| points.iter().copied()))?;
    let mut body = String::new();
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        body.push_str(&polyline(&scale, points, colour, "series"));
        body.push_str(&format!(
            r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{colour}">{}</text>"#,
            WIDTH - MARGIN - 150.0,
            MARGIN + 14.0 * (i as f64 + 1.0),
            escape(name)
        ));
    }
    Some(frame(&scale, x_label, y_label, &body))
}

/// An axis of a parallel-coordinates chart: its name and its ends as text (the lines' values are
/// already placed on it, 0 at the bottom, 1 at the top).
pub struct Axis {
    pub name: String,
    pub low: String,
    pub high: String,
}

/// A trial across the axes: where it crosses each (0..=1, `None` where it has no value), how good
/// it is (0 worst .. 1 best: the colour) and its tooltip.
pub struct Polyline {
    pub at: Vec<Option<f64>>,
    pub quality: f64,
    pub label: String,
}

/// Parallel coordinates: one vertical axis per hyperparameter and the objective last, one line per
/// trial, the best trials darkest and drawn last (on top). `None` with fewer than two axes or no line.
pub fn parallel(axes: &[Axis], lines: &[Polyline]) -> Option<String> {
    if axes.len() < 2 || lines.is_empty() {
        return None;
    }
    let step = (WIDTH - 2.0 * MARGIN) / (axes.len() - 1) as f64;
    let x = |i: usize| MARGIN + step * i as f64;
    let y = |v: f64| HEIGHT - MARGIN - v.clamp(0.0, 1.0) * (HEIGHT - 2.0 * MARGIN);
    let mut body = String::new();
    for (i, axis) in axes.iter().enumerate() {
        body.push_str(&format!(
            r##"<line class="axis" x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#999"/><text x="{x:.1}" y="{name_y}" font-size="11" text-anchor="{anchor}">{}</text><text x="{x:.1}" y="{low_y}" font-size="10" text-anchor="{anchor}" fill="#777">{}</text><text x="{x:.1}" y="{high_y}" font-size="10" text-anchor="{anchor}" fill="#777">{}</text>"##,
            escape(&axis.name),
            escape(&axis.low),
            escape(&axis.high),
            x = x(i),
            top = MARGIN,
            bottom = HEIGHT - MARGIN,
            name_y = HEIGHT - 8.0,
            // The names of the outer axes stay inside the chart.
            anchor = if i == 0 { "start" } else if i + 1 == axes.len() { "end" } else { "middle" },
            low_y = HEIGHT - MARGIN + 14.0,
            high_y = MARGIN - 6.0,
        ));
    }
    let mut ordered: Vec<&Polyline> = lines.iter().collect();
    ordered.sort_by(|a, b| a.quality.total_cmp(&b.quality));
    for line in ordered {
        let points: Vec<String> = line
            .at
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|v| v.is_finite()).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
            .collect();
        if points.len() < 2 {
            continue;
        }
        // From a pale to a deep blue as the objective gets better.
        let q = if line.quality.is_finite() { line.quality.clamp(0.0, 1.0) } else { 0.0 };
        let channel = |pale: f64, deep: f64| (pale + (deep - pale) * q).round() as u8;
        body.push_str(&format!(
            r##"<polyline class="trial" fill="none" stroke="#{:02x}{:02x}{:02x}" stroke-width="{:.1}" points="{}"><title>{}</title></polyline>"##,
            channel(160.0, 8.0),
            channel(190.0, 48.0),
            channel(225.0, 140.0),
            1.0 + q,
            points.join(" "),
            escape(&line.label),
        ));
    }
    Some(format!(
        r#"<svg class="chart parallel" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" xmlns="http://www.w3.org/2000/svg">{body}</svg>"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scatter_places_points_within_its_frame_and_escapes_labels() {
        let points = [
            Point { x: 1.0, y: 0.5, kind: 0, label: "<script>alert(1)</script>".into() },
            Point { x: 2.0, y: 0.9, kind: 1, label: "b".into() },
            Point { x: 3.0, y: f64::NAN, kind: 0, label: "skipped".into() },
        ];
        let svg = scatter(&points, Some(&[(1.0, 0.5), (2.0, 0.9)]), "trial", "accuracy").expect("drawn");
        assert_eq!(svg.matches("<circle").count(), 2, "a point without a value is not drawn");
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;"), "{svg}");
        assert!(svg.contains(r#"class="best""#));
        // The lowest point at the bottom of the plot area, the highest at its top.
        assert!(svg.contains(&format!(r#"cx="{:.1}" cy="{:.1}""#, MARGIN, HEIGHT - MARGIN)), "{svg}");
        assert!(svg.contains(&format!(r#"cx="{:.1}" cy="{:.1}""#, WIDTH - MARGIN, MARGIN)), "{svg}");
        assert!(scatter(&[], None, "x", "y").is_none());
    }

    #[test]
    fn parallel_coordinates_draw_an_axis_per_dimension_and_the_best_trial_on_top() {
        let axes: Vec<Axis> = ["lr", "optimizer", "accuracy"]
            .iter()
            .map(|n| Axis { name: n.to_string(), low: "0".into(), high: "1".into() })
            .collect();
        let lines = [
            Polyline { at: vec![Some(1.0), Some(0.0), Some(1.0)], quality: 1.0, label: "best".into() },
            Polyline { at: vec![Some(0.0), Some(1.0), Some(0.0)], quality: 0.0, label: "<worst>".into() },
            Polyline { at: vec![Some(0.5), None, None], quality: 0.5, label: "one value: not drawn".into() },
        ];
        let svg = parallel(&axes, &lines).expect("drawn");
        assert_eq!(svg.matches(r#"class="axis""#).count(), 3);
        assert_eq!(svg.matches(r#"class="trial""#).count(), 2, "{svg}");
        assert!(svg.contains("&lt;worst&gt;") && !svg.contains("<worst>"));
        // Worst first, best last (drawn on top); the best reaches the top of the first axis.
        assert!(svg.find("&lt;worst&gt;") < svg.find(">best<"), "{svg}");
        assert!(svg.contains(&format!("{:.1},{:.1}", MARGIN, MARGIN)), "{svg}");
        assert!(parallel(&axes[..1], &lines).is_none());
        assert!(parallel(&axes, &[]).is_none());
    }

    #[test]
    fn lines_draw_each_series_with_its_name() {
        let series =
            vec![("train:loss".to_string(), vec![(0.0, 1.0), (1.0, 0.5)]), ("b&c".to_string(), vec![(0.0, 2.0)])];
        let svg = lines(&series, "seconds", "value").expect("drawn");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("train:loss") && svg.contains("b&amp;c"));
        // A single flat point still has a scale.
        assert!(lines(&[("x".into(), vec![(1.0, 1.0)])], "a", "b").is_some());
    }
}
