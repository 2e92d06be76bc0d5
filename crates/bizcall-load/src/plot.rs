//! `plot`: every series of a results directory in one SVG and one table.

use crate::report::{self, Series};

use serde_json::json;

/// Rebuilds a histogram-like series from the quantile samples of a `.hist`.
pub(crate) fn load_series(
    dir: &std::path::Path,
    name: &str,
) -> Option<(Series, serde_json::Value)> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?)
            .ok()?;
    let text = std::fs::read_to_string(dir.join(format!("{name}.hist"))).ok()?;
    let mut hist = report::histogram();
    // Re-sample: 10,000 points following the recorded quantiles.
    let samples: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| {
            let (q, v) = l.split_once(' ')?;
            Some((q.parse().ok()?, v.parse().ok()?))
        })
        .collect();
    for i in 0..10_000 {
        let q = i as f64 / 10_000.0;
        let v = samples
            .iter()
            .find(|(sq, _)| *sq >= q)
            .map(|(_, v)| *v)
            .unwrap_or(0);
        report::record(&mut hist, v);
    }
    let label = json["name"].as_str().unwrap_or(name).to_string();
    Some((
        Series {
            name: label,
            hist,
            seconds: 0.0,
            extra: json!({}),
        },
        json,
    ))
}

pub(crate) fn plot(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut series = Vec::new();
    let mut md = String::new();
    md.push_str("| series | deliveries | per s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | lost | duplicates |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for name in [
        "floor",
        "bizcall",
        "busleg",
        "sockjs-websocket",
        "sockjs-xhr-streaming",
        "webstomp",
        "socketio",
    ] {
        let Some((s, json)) = load_series(dir, name) else {
            continue;
        };
        let f = |k: &str| {
            json.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
        };
        let c = |k: &str| {
            json.get(k)
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into())
        };
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |\n",
            s.name,
            c("count"),
            f("throughput_per_s"),
            f("p50_ms"),
            f("p90_ms"),
            f("p99_ms"),
            f("p999_ms"),
            f("max_ms"),
            c("errors"),
            c("lost"),
            c("duplicates")
        ));
        series.push((s, json));
    }
    let json = |name: &str| -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    };
    let get = |name: &str, key: &str| -> Option<f64> { json(name)?.get(key)?.as_f64() };
    // The bus leg (publish header → MESSAGE written) of the one instance
    // whose metrics a series scraped: B, which holds the tablets.
    let leg = |name: &str, key: &str| -> Option<f64> {
        match json(name)?.get("instances")?.as_array()?.as_slice() {
            [one] => one.get(key)?.as_f64(),
            _ => None,
        }
    };
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b.max(1e-9));
    md.push_str("\n| measure | value |\n|---|---|\n");
    let rows: Vec<(&str, Option<f64>, &str)> = vec![
        ("bizcall tablets connected", get("bizcall", "tablets"), ""),
        (
            "bizcall connect rate",
            get("bizcall", "connect_per_s"),
            "/s",
        ),
        (
            "bizcall resident memory per idle subscribed tablet",
            get("bizcall", "rss_per_idle_tablet_kib"),
            "KiB",
        ),
        (
            "capacity run: tablets on one fresh instance",
            get("capacity", "tablets"),
            "",
        ),
        (
            "capacity run: resident memory per idle subscribed tablet",
            get("capacity", "rss_per_idle_tablet_kib"),
            "KiB",
        ),
        (
            "capacity run: lost + duplicate popups",
            get("capacity", "lost")
                .zip(get("capacity", "duplicates"))
                .map(|(l, d)| l + d),
            "",
        ),
        (
            "bizcall CPU per 1000 deliveries",
            get("bizcall", "cpu_s_per_1000_deliveries").map(|s| s * 1000.0),
            "ms",
        ),
        (
            "bizcall POST → `OK` p50 (intake, answered after the publish confirm)",
            get("bizcall", "webhook_ok_p50_ms"),
            "ms",
        ),
        (
            "bizcall POST → `OK` p99",
            get("bizcall", "webhook_ok_p99_ms"),
            "ms",
        ),
        (
            "bizcall publishedAt → popup p50 (publishedAt has whole milliseconds: reads ~0.5 ms high)",
            get("bizcall", "published_to_popup_p50_ms"),
            "ms",
        ),
        (
            "bizcall publishedAt → popup p99",
            get("bizcall", "published_to_popup_p99_ms"),
            "ms",
        ),
        (
            "bizcall bus leg p50 (publish header → MESSAGE written, on B)",
            leg("bizcall", "bus_leg_p50_ms"),
            "ms",
        ),
        (
            "bizcall bus leg p99",
            leg("bizcall", "bus_leg_p99_ms"),
            "ms",
        ),
        (
            "bizcall bus leg p50 on B, `busleg` series",
            leg("busleg", "bus_leg_p50_ms"),
            "ms",
        ),
        (
            "bizcall bus leg p99 on B, `busleg` series",
            leg("busleg", "bus_leg_p99_ms"),
            "ms",
        ),
        (
            "bus leg at the server (B, `bizcall` series) p50 ÷ Web-STOMP publish → receipt at the client p50",
            ratio(leg("bizcall", "bus_leg_p50_ms"), get("webstomp", "p50_ms")),
            "×",
        ),
        (
            "bus leg at the server (B, `bizcall` series) p99 ÷ Web-STOMP publish → receipt at the client p99",
            ratio(leg("bizcall", "bus_leg_p99_ms"), get("webstomp", "p99_ms")),
            "×",
        ),
        (
            "bizcall publish → popup at the tablet (`busleg`) p50 ÷ Web-STOMP publish → receipt p50",
            ratio(get("busleg", "p50_ms"), get("webstomp", "p50_ms")),
            "×",
        ),
        (
            "bizcall publish → popup at the tablet (`busleg`) p99 ÷ Web-STOMP publish → receipt p99",
            ratio(get("busleg", "p99_ms"), get("webstomp", "p99_ms")),
            "×",
        ),
        (
            "bizcall publish → popup at the tablet (`busleg`): tablets connected",
            get("busleg", "tablets"),
            "",
        ),
        (
            "Web-STOMP subscribed connections",
            get("webstomp", "tablets"),
            "",
        ),
        (
            "Web-STOMP broker memory per idle subscribed connection",
            get("webstomp", "rss_per_idle_tablet_kib"),
            "KiB",
        ),
        (
            "Socket.IO clients connected",
            get("socketio", "tablets"),
            "",
        ),
        (
            "Socket.IO instance memory per idle connected client",
            get("socketio", "rss_per_idle_tablet_kib"),
            "KiB",
        ),
        (
            "p50 bizcall − p50 Socket.IO",
            get("bizcall", "p50_ms")
                .zip(get("socketio", "p50_ms"))
                .map(|(a, b)| a - b),
            "ms",
        ),
        (
            "p50 bizcall − p50 floor",
            get("bizcall", "p50_ms")
                .zip(get("floor", "p50_ms"))
                .map(|(a, b)| a - b),
            "ms",
        ),
        (
            "p99 bizcall ÷ p99 floor",
            get("bizcall", "p99_ms")
                .zip(get("floor", "p99_ms"))
                .map(|(a, b)| a / b.max(1e-9)),
            "×",
        ),
        (
            "intake, stored-only path ÷ direct upserts",
            get("intake", "ratio"),
            "×",
        ),
        (
            "intake: INSERT … ON CONFLICT directly",
            get("intake", "direct_upserts_per_s"),
            "/s",
        ),
        (
            "intake: POST /bizcall/cdr with a durable OK (no store matched: nothing published)",
            get("intake", "http_cdrs_per_s"),
            "/s",
        ),
        (
            "intake: POST /bizcall/cdr with a durable OK after the publish confirm",
            get("intake", "http_published_cdrs_per_s"),
            "/s",
        ),
        (
            "intake, published path ÷ direct upserts",
            get("intake", "published_ratio"),
            "×",
        ),
    ];
    let mut rows: Vec<(String, Option<f64>, &str)> = rows
        .into_iter()
        .map(|(l, v, u)| (l.to_string(), v, u))
        .collect();
    // SockJS beside /ws ("bizcall"), measured in the same run.
    let ratio = |name: &str, key: &str| {
        get(name, key)
            .zip(get("bizcall", key))
            .map(|(a, b)| a / b.max(1e-9))
    };
    for (name, label) in [
        ("sockjs-websocket", "SockJS websocket"),
        ("sockjs-xhr-streaming", "SockJS xhr-streaming"),
    ] {
        if get(name, "tablets").is_none() {
            continue;
        }
        let row = |what: &str| format!("{label}: {what}");
        rows.extend([
            (row("tablets connected"), get(name, "tablets"), ""),
            (
                row("resident memory per idle subscribed tablet"),
                get(name, "rss_per_idle_tablet_kib"),
                "KiB",
            ),
            (
                row("memory per idle tablet ÷ /ws"),
                ratio(name, "rss_per_idle_tablet_kib"),
                "×",
            ),
            (row("webhook → popup p50"), get(name, "p50_ms"), "ms"),
            (row("webhook → popup p99"), get(name, "p99_ms"), "ms"),
            (row("p50 ÷ /ws p50"), ratio(name, "p50_ms"), "×"),
            (row("p99 ÷ /ws p99"), ratio(name, "p99_ms"), "×"),
            (
                row("CPU per 1000 deliveries ÷ /ws"),
                ratio(name, "cpu_s_per_1000_deliveries"),
                "×",
            ),
            (
                row("lost + duplicate popups"),
                get(name, "lost")
                    .zip(get(name, "duplicates"))
                    .map(|(l, d)| l + d),
                "",
            ),
        ]);
    }
    for (label, value, unit) in rows {
        let shown = match value {
            Some(v) => format!("{v:.2} {unit}"),
            None => "not measured".into(),
        };
        md.push_str(&format!("| {label} | {shown} |\n"));
    }
    let cores = load_series(dir, "bizcall")
        .and_then(|(_, j)| j.get("cores_used").and_then(|c| c.as_array().cloned()))
        .unwrap_or_default();
    if !cores.is_empty() {
        md.push_str("\n| process, while bizcall's CDRs were sent | cores used |\n|---|---|\n");
        for c in &cores {
            md.push_str(&format!(
                "| {} | {:.2} |\n",
                c.get("process").and_then(|p| p.as_str()).unwrap_or("?"),
                c.get("cores").and_then(|p| p.as_f64()).unwrap_or(0.0)
            ));
        }
    }
    let only: Vec<Series> = series.into_iter().map(|(s, _)| s).collect();
    report::svg(&only, &dir.join("latency.svg"))?;
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    eprintln!(
        "wrote {} and {}",
        dir.join("latency.svg").display(),
        dir.join("results.md").display()
    );
    Ok(())
}
