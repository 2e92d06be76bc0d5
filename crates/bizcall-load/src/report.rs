//! Latency histograms, the summary table, the JSON results and the SVG plot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latencies in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, micros: u64) {
    let _ = h.record(micros.clamp(1, 60_000_000));
}

/// One measured series (bizcall, or a baseline).
pub struct Series {
    pub name: String,
    pub hist: Histogram<u64>,
    pub seconds: f64,
    pub extra: Value,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Series {
    pub fn summary(&self) -> Value {
        let h = &self.hist;
        let q = |p: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(p))
            }
        };
        let mut v = json!({
            "name": self.name,
            "count": h.len(),
            "seconds": self.seconds,
            "throughput_per_s": if self.seconds > 0.0 { h.len() as f64 / self.seconds } else { 0.0 },
            "p50_ms": q(0.50),
            "p90_ms": q(0.90),
            "p99_ms": q(0.99),
            "p999_ms": q(0.999),
            "max_ms": if h.is_empty() { 0.0 } else { ms(h.max()) },
        });
        if let (Value::Object(base), Value::Object(extra)) = (&mut v, &self.extra) {
            for (k, x) in extra {
                base.insert(k.clone(), x.clone());
            }
        }
        v
    }
}

/// The table people read at the end of a run.
pub fn table(series: &[Series]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| series | deliveries | per s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | lost | duplicates |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for s in series {
        let v = s.summary();
        let n = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let c = |k: &str| {
            v.get(k)
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            s.name,
            s.hist.len(),
            n("throughput_per_s"),
            n("p50_ms"),
            n("p90_ms"),
            n("p99_ms"),
            n("p999_ms"),
            n("max_ms"),
            c("errors"),
            c("lost"),
            c("duplicates"),
        );
    }
    out
}

/// Latency by percentile (log scale of 1/(1-p)), one line per series.
pub fn svg(series: &[Series], path: &Path) -> std::io::Result<()> {
    const W: f64 = 900.0;
    const H: f64 = 500.0;
    const L: f64 = 70.0;
    const B: f64 = 60.0;
    let colours = [
        "#0b6bcb", "#c62828", "#1a7f37", "#b35900", "#6a1b9a", "#00838f", "#5d4037", "#757575",
    ];
    let quantiles: Vec<f64> = (0..=400)
        .map(|i| 1.0 - 10f64.powf(-(i as f64) / 100.0))
        .collect();
    let max_ms = series
        .iter()
        .filter(|s| !s.hist.is_empty())
        .map(|s| ms(s.hist.value_at_quantile(0.9999)))
        .fold(1.0, f64::max);
    let y_top = max_ms * 1.1;
    let x = |q: f64| L + (-(1.0 - q).max(1e-4).log10() / 4.0) * (W - L - 20.0);
    let y = |v: f64| H - B - (v / y_top) * (H - B - 20.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (label, q) in [
        ("0%", 0.0),
        ("90%", 0.9),
        ("99%", 0.99),
        ("99.9%", 0.999),
        ("99.99%", 0.9999),
    ] {
        let _ = writeln!(
            out,
            r#"<line x1="{0:.1}" y1="20" x2="{0:.1}" y2="{1}" stroke="lightgray"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"#,
            x(q),
            H - B,
            H - B + 18.0,
            label
        );
    }
    for i in 0..=5 {
        let v = y_top * i as f64 / 5.0;
        let _ = writeln!(
            out,
            r#"<line x1="{L}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="whitesmoke"/><text x="{2}" y="{0:.1}" text-anchor="end">{3:.1}</text>"#,
            y(v),
            W - 20.0,
            L - 6.0,
            v
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (W + L) / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        out,
        r#"<text x="15" y="{}" transform="rotate(-90 15 {})" text-anchor="middle">latency (ms)</text>"#,
        (H - B) / 2.0,
        (H - B) / 2.0
    );
    for (i, s) in series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.hist.is_empty())
    {
        let colour = colours[i % colours.len()];
        let points: Vec<String> = quantiles
            .iter()
            .map(|q| format!("{:.1},{:.1}", x(*q), y(ms(s.hist.value_at_quantile(*q)))))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" fill="{colour}">{}</text>"#,
            L + 10.0,
            35.0 + 16.0 * i as f64,
            s.name
        );
    }
    out.push_str("</svg>\n");
    std::fs::write(path, out)
}

pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

pub(crate) fn write_json(
    out: &Option<PathBuf>,
    name: &str,
    value: &serde_json::Value,
) -> anyhow::Result<()> {
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Quantile samples, so `plot` can draw several runs together later.
pub(crate) fn histogram_text(h: &hdrhistogram::Histogram<u64>) -> String {
    (0..=400)
        .map(|i| {
            let q = 1.0 - 10f64.powf(-(i as f64) / 100.0);
            format!(
                "{q} {}\n",
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(q)
                }
            )
        })
        .collect()
}
