//! Figures of the report: line charts as SVG and PNG (`plotters`), with a font compiled
//! into the binary so that they need no system fonts.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

use crate::error::{ExpError, write_atomic};

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // A font compiled into the binary, so figures need no system fonts.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// A line chart: named series of (x, y) points.
pub(crate) struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    pub x_log: bool,
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let points = chart.series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0f64, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y1) = (0.0, 1.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    y1 = (y1 * 1.1).max(y0 + 1e-6);
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55);
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(0, 0, 0),
        RGBColor(188, 189, 34),
        RGBColor(127, 127, 127),
        RGBColor(0, 0, 128),
    ];
    macro_rules! plot {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_label)
                .y_desc(chart.y_label)
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, (name, pts)) in chart.series.iter().enumerate() {
                let color = &palette[i % palette.len()];
                ctx.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
            ctx.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(|e| e.to_string())?;
        }};
    }
    if chart.x_log && x0 > 0.0 {
        plot!(
            builder
                .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), y0..y1)
                .map_err(|e| e.to_string())?
        );
    } else {
        plot!(
            builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| e.to_string())?
        );
    }
    root.present().map_err(|e| e.to_string())
}

/// Writes `<stem>.svg` and `<stem>.png`, each atomically.
pub(crate) fn figure(dir: &Path, stem: &str, chart: &Chart) -> Result<(), ExpError> {
    register_font();
    let size = (900, 600);
    let svg_path = dir.join(format!("{stem}.svg"));
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, size).into_drawing_area(),
        chart,
    )
    .map_err(|message| ExpError::Figure {
        path: svg_path.clone(),
        message,
    })?;
    write_atomic(&svg_path, svg.as_bytes())?;
    let png_path = dir.join(format!("{stem}.png"));
    let tmp = dir.join(format!("{stem}.partial.png"));
    draw(BitMapBackend::new(&tmp, size).into_drawing_area(), chart).map_err(|message| {
        ExpError::Figure {
            path: png_path.clone(),
            message,
        }
    })?;
    std::fs::rename(&tmp, &png_path).map_err(|e| ExpError::io(&png_path, e))
}
