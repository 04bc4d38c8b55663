//! A hand-written SVG line chart: median time against lease count, both plugin sets, with a
//! second panel that zooms on ours.

pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    /// (lease count, ms)
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The smallest 1, 2, 2.5 or 5 × 10^k that is ≥ v.
fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if m * e >= v * 0.999_999 {
            return m * e;
        }
    }
    10.0 * e
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 1000.0 && (v / 1000.0).fract() == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Where a panel goes.
struct Frame {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
}

/// One panel.
fn panel(out: &mut String, f: Frame, title: &str, series: &[&Series], xmax: f64) {
    let Frame { x0, y0, w, h } = f;
    let (l, r, t, b) = (56.0, 14.0, 28.0, 40.0);
    let (pw, ph) = (w - l - r, h - t - b);
    let ymax_data = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let ymax = nice_ceil(ymax_data * 1.08);
    let xmax = if xmax > 0.0 { xmax } else { 1.0 };
    let px = |x: f64| x0 + l + x / xmax * pw;
    let py = |y: f64| y0 + t + ph - y / ymax * ph;
    out.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" font-weight=\"bold\">{}</text>\n",
        x0 + l,
        y0 + 17.0,
        esc(title)
    ));
    // Grid and y ticks.
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let y = py(v);
        out.push_str(&format!(
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e3e3e3\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n",
            px(0.0),
            px(xmax),
            px(0.0) - 6.0,
            y + 4.0,
            fmt_num(v)
        ));
    }
    // X ticks.
    let xstep = nice_ceil(xmax / 5.0);
    let mut x = 0.0;
    while x <= xmax * 1.000_001 {
        out.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"#999\"/>\n\
             <text x=\"{0:.1}\" y=\"{3:.1}\" font-size=\"11\" text-anchor=\"middle\">{4}</text>\n",
            px(x),
            py(0.0),
            py(0.0) + 4.0,
            py(0.0) + 17.0,
            fmt_num(x)
        ));
        x += xstep;
    }
    out.push_str(&format!(
        "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{2:.1}\" y2=\"{1:.1}\" stroke=\"#333\"/>\n\
         <line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{3:.1}\" stroke=\"#333\"/>\n\
         <text x=\"{4:.1}\" y=\"{5:.1}\" font-size=\"11\" text-anchor=\"middle\">leases in the store</text>\n\
         <text x=\"{6:.1}\" y=\"{7:.1}\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 {6:.1} {7:.1})\">median ms</text>\n",
        px(0.0),
        py(0.0),
        px(xmax),
        py(ymax),
        px(xmax / 2.0),
        py(0.0) + 33.0,
        x0 + 14.0,
        y0 + t + ph / 2.0
    ));
    let mut end_labels: Vec<(f64, f64, String, &str)> = Vec::new();
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{} points=\"{}\"/>\n",
            s.color,
            if s.dashed { " stroke-dasharray=\"6 4\"" } else { "" },
            pts.join(" ")
        ));
        for &(x, y) in &s.points {
            out.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>\n",
                px(x),
                py(y),
                s.color
            ));
        }
        if let Some(&(x, y)) = s.points.last() {
            end_labels.push((px(x) - 8.0, py(y), format!("{} ms", fmt_num(y)), s.color));
        }
    }
    // End-of-line values, left of the last point, pushed apart so that none overlap.
    end_labels.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut last_y = f64::MIN;
    for (x, y, text, color) in end_labels {
        let y = (y - 6.0).max(last_y + 13.0);
        last_y = y;
        out.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"{color}\">{text}</text>\n"
        ));
    }
}

/// The whole chart: left, every series; right, the series whose label starts with `zoom`.
pub fn scale_chart(title: &str, series: &[Series], zoom: &str) -> String {
    let (w, h) = (900.0, 380.0);
    let xmax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"12\" y=\"20\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    );
    let all: Vec<&Series> = series.iter().collect();
    let ours: Vec<&Series> = series.iter().filter(|s| s.label.starts_with(zoom)).collect();
    panel(
        &mut out,
        Frame {
            x0: 0.0,
            y0: 30.0,
            w: 450.0,
            h: h - 70.0,
        },
        "both plugin sets",
        &all,
        xmax,
    );
    let title = format!("{zoom} only (zoomed)");
    panel(
        &mut out,
        Frame {
            x0: 450.0,
            y0: 30.0,
            w: 450.0,
            h: h - 70.0,
        },
        &title,
        &ours,
        xmax,
    );
    // Legend.
    let mut x = 60.0;
    for s in series {
        out.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"{2}\" stroke-width=\"2\"{3}/>\n\
             <text x=\"{4:.1}\" y=\"{5:.1}\" font-size=\"12\">{6}</text>\n",
            h - 18.0,
            x + 26.0,
            s.color,
            if s.dashed { " stroke-dasharray=\"6 4\"" } else { "" },
            x + 31.0,
            h - 14.0,
            esc(&s.label)
        ));
        x += 40.0 + 7.0 * s.label.len() as f64;
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice() {
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(3.3), 4.0);
        assert_eq!(nice_ceil(21.0), 25.0);
        assert_eq!(nice_ceil(35.6), 40.0);
        assert_eq!(nice_ceil(50_000.0), 50_000.0);
        assert!((nice_ceil(0.13) - 0.15).abs() < 1e-9);
    }

    #[test]
    fn chart_is_svg() {
        let s = scale_chart(
            "t",
            &[Series {
                label: "ours ADD".into(),
                color: "#d95f02",
                dashed: false,
                points: vec![(0.0, 1.0), (1000.0, 1.1)],
            }],
            "ours",
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("polyline"));
    }
}
