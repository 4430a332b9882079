//! Small time-series charts as inline SVG: a line over the last 15 minutes with its latest and
//! highest value, drawn on the server, so the page needs no chart library.

use std::fmt::Write as _;

use crate::collector::{Series, HISTORY};

const WIDTH: f64 = 260.0;
const HEIGHT: f64 = 56.0;
const PAD: f64 = 3.0;

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG sparkline of `series` ending at `now_ms`, spanning [`HISTORY`]; `label` names it and
/// `format` writes its values.
pub fn sparkline(label: &str, series: &Series, now_ms: i64, format: fn(f64) -> String) -> String {
    // Up to [`HISTORY`]: a console that started a minute ago spreads its minute over the width.
    let history = HISTORY.as_millis() as f64;
    let first = series
        .first()
        .map_or(now_ms as f64 - history, |(t, _)| *t as f64);
    let span = (now_ms as f64 - first).clamp(60_000.0, history);
    let start = now_ms as f64 - span;
    let max = series.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let x = |t: i64| PAD + ((t as f64 - start) / span).clamp(0.0, 1.0) * (WIDTH - 2.0 * PAD);
    let y = |v: f64| HEIGHT - PAD - (v / top).clamp(0.0, 1.0) * (HEIGHT - 2.0 * PAD);
    let mut points = String::new();
    for (t, v) in series {
        let _ = write!(points, "{:.1},{:.1} ", x(*t), y(*v));
    }
    let latest = series
        .last()
        .map_or_else(|| "–".to_owned(), |(_, v)| format(*v));
    let minutes = (span / 60_000.0).round();
    let title = format!(
        "{label}: latest {latest}, highest {} over the last {minutes} minutes",
        format(max)
    );
    let mut svg = format!(
        r#"<svg class="spark" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}"><title>{t}</title><rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" class="spark-bg"/>"#,
        t = escape(&title)
    );
    if series.len() >= 2 {
        let area = format!(
            "{:.1},{:.1} {points}{:.1},{:.1}",
            x(series[0].0),
            HEIGHT - PAD,
            x(series[series.len() - 1].0),
            HEIGHT - PAD
        );
        let _ = write!(
            svg,
            r#"<polygon class="spark-area" points="{area}"/><polyline class="spark-line" points="{}"/>"#,
            points.trim_end()
        );
    } else {
        let _ = write!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" class="spark-empty">collecting…</text>"#,
            WIDTH / 2.0 - 30.0,
            HEIGHT / 2.0 + 4.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.0}" y="12" class="spark-max">max {}</text><text x="4" y="{:.0}" class="spark-span">{minutes} min</text></svg>"#,
        WIDTH - 4.0,
        escape(&format(max)),
        HEIGHT - 5.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_line_within_the_box() {
        let now = 1_000_000_000;
        let series = vec![(now - 60_000, 0.0), (now - 30_000, 50.0), (now, 100.0)];
        let svg = sparkline("produced <events/s>", &series, now, |v| format!("{v:.0}"));
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("polyline"));
        assert!(svg.contains("produced &lt;events/s&gt;: latest 100"));
        // One minute of points spans the width.
        assert!(svg.contains("257.0,3.0"));
        assert!(svg.contains("3.0,53.0 "), "{svg}");
        let empty = sparkline("lag", &Vec::new(), now, |v| format!("{v}"));
        assert!(empty.contains("collecting"));
    }
}
