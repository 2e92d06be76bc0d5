//! What an instance's `/metrics` says, read before and after a run: the
//! events its queue delivered, and the bus leg's histogram.

use std::collections::HashMap;

/// An instance whose `/metrics` is read: `name=BASE_URL`.
#[derive(Clone, Debug)]
pub(crate) struct Scraped {
    pub(crate) name: String,
    pub(crate) base: String,
}

impl std::str::FromStr for Scraped {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, base) = s
            .split_once('=')
            .ok_or_else(|| format!("expected name=http://host:port, got \"{s}\""))?;
        Ok(Scraped {
            name: name.to_string(),
            base: base.trim_end_matches('/').to_string(),
        })
    }
}

/// Every sample of one scrape: the series with its labels → value.
pub(crate) type Samples = HashMap<String, f64>;

pub(crate) async fn scrape(client: &reqwest::Client, base: &str) -> anyhow::Result<Samples> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// How much a series grew between two scrapes.
pub(crate) fn grew(before: &Samples, after: &Samples, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

/// The `q` quantile, in milliseconds, of what a histogram recorded between
/// two scrapes, interpolated linearly inside its bucket; `None` when it
/// recorded nothing.
pub(crate) fn quantile_ms(
    before: &Samples,
    after: &Samples,
    histogram: &str,
    q: f64,
) -> Option<f64> {
    let prefix = format!("{histogram}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .keys()
        .filter_map(|k| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, grew(before, after, k)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let want = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (bound, count) in buckets {
        if count >= want {
            if bound.is_infinite() {
                return Some(lower * 1000.0);
            }
            let share = if count > below {
                (want - below) / (count - below)
            } else {
                1.0
            };
            return Some((lower + (bound - lower) * share) * 1000.0);
        }
        (lower, below) = (bound, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let h = |pairs: &[(&str, f64)]| -> Samples {
            pairs
                .iter()
                .map(|(le, v)| (format!("x_bucket{{le=\"{le}\"}}"), *v))
                .collect()
        };
        let before = h(&[("0.001", 10.0), ("0.002", 10.0), ("+Inf", 10.0)]);
        // 100 new samples: 50 under 1 ms, 50 between 1 and 2 ms.
        let after = h(&[("0.001", 60.0), ("0.002", 110.0), ("+Inf", 110.0)]);
        assert_eq!(quantile_ms(&before, &after, "x", 0.5), Some(1.0));
        let p75 = quantile_ms(&before, &after, "x", 0.75).unwrap();
        assert!((p75 - 1.5).abs() < 1e-9, "{p75}");
        assert_eq!(quantile_ms(&before, &before, "x", 0.5), None);
    }
}
