//! `sweep-plot`: the sweeps of `scripts/bench` (rate, tablets, instances)
//! as one table each and line charts, from the `run` results in a
//! directory: `rate-<calls per s>.json`, `tablets-<n>.json` and
//! `scale-<routing>-<instances>.json`.

use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

/// One point of a sweep: its x value and its `run` result.
type Point = (f64, Value);

/// The results whose file name is `<prefix><x>.json`, by x.
fn points(dir: &Path, prefix: &str) -> Vec<Point> {
    let mut out: Vec<Point> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let x: f64 = name
                .strip_prefix(prefix)?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            let json = serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
            Some((x, json))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Cores a process used while sending (`cores_used`), by its name.
fn cores(v: &Value, process: &str) -> Option<f64> {
    v["cores_used"]
        .as_array()?
        .iter()
        .find(|c| c["process"] == process)
        .and_then(|c| c["cores"].as_f64())
}

/// The mean over a run's instances (`--metrics-of`) of one of their figures.
fn per_instance(v: &Value, key: &str) -> Option<f64> {
    let list: Vec<f64> = v["instances"]
        .as_array()?
        .iter()
        .filter_map(|i| i[key].as_f64())
        .collect();
    (!list.is_empty()).then(|| list.iter().sum::<f64>() / list.len() as f64)
}

/// Mean cores of the processes named `instance 1`, `instance 2`, ….
fn instance_cores(v: &Value) -> Option<f64> {
    let list: Vec<f64> = v["cores_used"]
        .as_array()?
        .iter()
        .filter(|c| {
            c["process"]
                .as_str()
                .is_some_and(|p| p.starts_with("instance "))
        })
        .filter_map(|c| c["cores"].as_f64())
        .collect();
    (!list.is_empty()).then(|| list.iter().sum::<f64>() / list.len() as f64)
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// A line chart: x by value (log scale when `log_x`), one line per series.
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    lines: &[(&str, Vec<(f64, f64)>)],
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 400.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 40.0;
    const B: f64 = 55.0;
    let colours = ["#0b6bcb", "#c62828", "#1a7f37", "#b35900", "#6a1b9a"];
    let xs: Vec<f64> = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .collect();
    let (x_min, x_max) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let tx = |x: f64| if log_x { x.max(1e-9).ln() } else { x };
    let span = (tx(x_max) - tx(x_min)).max(1e-9);
    let px = |x: f64| L + (tx(x) - tx(x_min)) / span * (W - L - R);
    let py = |y: f64| H - B - y / y_max * (H - B - T);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{title}</text>"#,
        W / 2.0
    );
    let mut ticks = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let _ = writeln!(
            out,
            r#"<line x1="{0:.1}" y1="{T}" x2="{0:.1}" y2="{1}" stroke="whitesmoke"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"#,
            px(x),
            H - B,
            H - B + 16.0,
            x
        );
    }
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let _ = writeln!(
            out,
            r#"<line x1="{L}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="whitesmoke"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"#,
            py(v),
            W - R,
            L - 6.0,
            py(v) + 4.0,
            if y_max < 10.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.0}")
            }
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        (L + W - R) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">{y_label}</text>"#,
        (T + H - B) / 2.0
    );
    for (i, (name, pts)) in lines.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (x, y) in pts {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                px(*x),
                py(*y)
            );
        }
        let _ = writeln!(
            out,
            r#"<rect x="{0}" y="{1}" width="12" height="3" fill="{colour}"/><text x="{2}" y="{3}">{name}</text>"#,
            L + 10.0,
            T + 6.0 + 16.0 * i as f64,
            L + 28.0,
            T + 11.0 + 16.0 * i as f64
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The (x, y) pairs of a sweep where `y` has a value.
fn series(points: &[Point], y: impl Fn(&Value) -> Option<f64>) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter_map(|(x, v)| Some((*x, y(v)?)))
        .collect()
}

pub(crate) fn plot(dir: &Path) -> anyhow::Result<()> {
    let mut md = String::new();
    let write = |name: &str, svg: String| std::fs::write(dir.join(name), svg);

    let rate = points(dir, "rate-");
    if !rate.is_empty() {
        md.push_str("### Rate\n\n| calls/s | deliveries/s | p50 ms | p99 ms | lost | dup | 503s/errors | tablet instance CPU ms / 1000 deliveries | cores: webhook instance / tablet instance / RabbitMQ / PostgreSQL | machine: cores busy / runnable threads mean, p90 |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for (x, v) in &rate {
            let _ = writeln!(
                md,
                "| {x} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} / {} | {} / {}, {} |",
                cell(num(v, "throughput_per_s"), 0),
                cell(num(v, "p50_ms"), 2),
                cell(num(v, "p99_ms"), 2),
                v["lost"],
                v["duplicates"],
                v["errors"],
                cell(num(v, "cpu_s_per_1000_deliveries").map(|s| s * 1000.0), 1),
                cell(cores(v, "A"), 2),
                cell(cores(v, "B"), 2),
                cell(cores(v, "rabbitmq"), 2),
                cell(cores(v, "postgres"), 2),
                cell(num(v, "machine_cores_busy"), 2),
                cell(num(v, "run_queue_mean"), 1),
                cell(num(v, "run_queue_p90"), 0),
            );
        }
        write(
            "sweep-rate-latency.svg",
            chart(
                "webhook → popup by call rate (10,000 tablets)",
                "calls per second (log scale)",
                "ms",
                true,
                &[
                    ("p50", series(&rate, |v| num(v, "p50_ms"))),
                    ("p99", series(&rate, |v| num(v, "p99_ms"))),
                ],
            ),
        )?;
        write(
            "sweep-rate-cpu.svg",
            chart(
                "cores used by call rate",
                "calls per second (log scale)",
                "cores",
                true,
                &[
                    ("webhook instance", series(&rate, |v| cores(v, "A"))),
                    ("tablet instance", series(&rate, |v| cores(v, "B"))),
                    ("RabbitMQ", series(&rate, |v| cores(v, "rabbitmq"))),
                    ("PostgreSQL", series(&rate, |v| cores(v, "postgres"))),
                ],
            ),
        )?;
    }

    let tablets = points(dir, "tablets-");
    if !tablets.is_empty() {
        md.push_str("\n### Tablets on one instance\n\n| tablets | KiB per idle tablet | connects/s | p50 ms | p99 ms | lost | dup |\n|---|---|---|---|---|---|---|\n");
        for (x, v) in &tablets {
            let _ = writeln!(
                md,
                "| {x} | {} | {} | {} | {} | {} | {} |",
                cell(num(v, "rss_per_idle_tablet_kib"), 2),
                cell(num(v, "connect_per_s"), 0),
                cell(num(v, "p50_ms"), 2),
                cell(num(v, "p99_ms"), 2),
                v["lost"],
                v["duplicates"],
            );
        }
        write(
            "sweep-tablets-memory.svg",
            chart(
                "resident memory per idle subscribed tablet",
                "tablets on the instance",
                "KiB per tablet",
                false,
                &[(
                    "KiB per tablet",
                    series(&tablets, |v| num(v, "rss_per_idle_tablet_kib")),
                )],
            ),
        )?;
        write(
            "sweep-tablets-latency.svg",
            chart(
                "webhook → popup by tablets on the instance",
                "tablets on the instance",
                "ms",
                false,
                &[
                    ("p50", series(&tablets, |v| num(v, "p50_ms"))),
                    ("p99", series(&tablets, |v| num(v, "p99_ms"))),
                ],
            ),
        )?;
    }

    let fanout = points(dir, "scale-fanout-");
    let store = points(dir, "scale-store-");
    if !fanout.is_empty() || !store.is_empty() {
        md.push_str("\n### Instances, fanout and store routing\n\n| routing | instances | events/s into each instance's queue | cores per instance | RabbitMQ cores | p50 ms | p99 ms | bus leg p50 / p99 ms | lost | dup |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for (routing, pts) in [("fanout", &fanout), ("store", &store)] {
            for (x, v) in pts {
                let _ = writeln!(
                    md,
                    "| {routing} | {x} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
                    cell(per_instance(v, "consumed_per_s"), 0),
                    cell(instance_cores(v), 2),
                    cell(cores(v, "rabbitmq"), 2),
                    cell(num(v, "p50_ms"), 2),
                    cell(num(v, "p99_ms"), 2),
                    cell(per_instance(v, "bus_leg_p50_ms"), 2),
                    cell(per_instance(v, "bus_leg_p99_ms"), 2),
                    v["lost"],
                    v["duplicates"],
                );
            }
        }
        write(
            "sweep-instances-messages.svg",
            chart(
                "events delivered into each instance's queue, same total load",
                "instances",
                "events per second, per instance",
                false,
                &[
                    (
                        "fanout",
                        series(&fanout, |v| per_instance(v, "consumed_per_s")),
                    ),
                    (
                        "store",
                        series(&store, |v| per_instance(v, "consumed_per_s")),
                    ),
                ],
            ),
        )?;
        write(
            "sweep-instances-cpu.svg",
            chart(
                "cores per instance and RabbitMQ's, same total load",
                "instances",
                "cores",
                false,
                &[
                    ("per instance, fanout", series(&fanout, instance_cores)),
                    ("per instance, store", series(&store, instance_cores)),
                    (
                        "RabbitMQ, fanout",
                        series(&fanout, |v| cores(v, "rabbitmq")),
                    ),
                    ("RabbitMQ, store", series(&store, |v| cores(v, "rabbitmq"))),
                ],
            ),
        )?;
    }
    std::fs::write(dir.join("sweeps.md"), &md)?;
    println!("{md}");
    Ok(())
}
