//! SVG charts of the benchmarks' curves (plotters' SVG backend: no fonts or bitmaps needed; the
//! text is left to the browser).

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One named line of points.
#[derive(Debug)]
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, axis names and its lines; `diagonal` draws y = x for reference.
#[derive(Debug)]
pub struct Panel<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    pub series: Vec<Series<'a>>,
    pub diagonal: bool,
}

fn create_dir_for(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

/// Draws the panels side by side, each a line chart with markers, into `path` (SVG).
pub fn lines(path: &Path, panels: &[Panel<'_>]) -> Result<()> {
    create_dir_for(path)?;
    let width = 480 * u32::try_from(panels.len().max(1))?;
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(&areas) {
        let all = panel.series.iter().flat_map(|s| s.points.iter());
        let (mut x_max, mut y_min, mut y_max) = (1.0_f64, 0.0_f64, 1.0_f64);
        for &(x, y) in all.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
        if panel.diagonal {
            y_max = y_max.max(x_max);
        }
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(38)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max * 1.08, y_min * 1.1..y_max * 1.1)?;
        chart
            .configure_mesh()
            .x_desc(panel.x)
            .y_desc(panel.y)
            .draw()?;
        if panel.diagonal {
            let grey = BLACK.mix(0.3);
            chart
                .draw_series(LineSeries::new(vec![(0.0, 0.0), (x_max, x_max)], grey))?
                .label("y = x")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], grey));
        }
        for (series, color) in panel.series.iter().zip(COLORS.iter().cycle()) {
            let points: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color))?
                .label(series.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Cumulative distributions of latencies (ms, each sorted ascending) on a log-scaled time axis:
/// the fraction of changes readable within each time.
pub fn cdf(path: &Path, title: &str, distributions: &[(&str, &[f64])]) -> Result<()> {
    create_dir_for(path)?;
    let positive = distributions
        .iter()
        .flat_map(|(_, d)| d.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = positive.fold((f64::INFINITY, 1.0_f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let lo = if lo.is_finite() { lo.min(hi) } else { 0.1 };
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(38)
        .y_label_area_size(56)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_desc("fraction of changes")
        .draw()?;
    for ((name, values), color) in distributions.iter().zip(COLORS.iter().cycle()) {
        #[allow(clippy::cast_precision_loss)]
        let n = values.len().max(1) as f64;
        #[allow(clippy::cast_precision_loss)]
        let points = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite() && **v > 0.0)
            .map(|(i, v)| (*v, (i + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
