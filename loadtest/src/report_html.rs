//! `--html FILE`: one self-contained page for platform teams. It embeds the ghz-format JSON report
//! as it was written (`<script type="application/json" id="report">`) and the series behind the
//! charts (`id="charts"`); its own script draws the charts as inline SVG and fills the tables from
//! those two blocks, so the page fetches nothing and shows exactly the numbers of the JSON report.
use serde_json::{json, Value};

use crate::timeline::Point;

const TEMPLATE: &str = include_str!("report_html/page.html");
const STYLE: &str = include_str!("report_html/report.css");
const SCRIPT: &str = include_str!("report_html/report.js");

/// Log-spaced bins: loopback latencies span from tens of microseconds to the timeout, and linear
/// bins would put nearly everything in the first one.
const BINS: usize = 40;

/// What the charts draw beyond the report's summary numbers.
pub struct Charts {
    /// Requests, errors and p50/p99 per second of the run.
    pub timeline: Vec<Point>,
    /// (latency in nanoseconds, calls) of the calls that succeeded.
    pub latencies: Vec<(u64, u64)>,
    /// Nanoseconds from `UpsertMerchant` returning to the edge answering FOUND, for churn runs.
    pub found_after: Option<Vec<u64>>,
}

pub fn page(report: &Value, charts: &Charts) -> String {
    let timeline: Vec<_> = charts
        .timeline
        .iter()
        .map(|p| {
            json!({
                "second": p.second, "requests": p.requests, "errors": p.errors,
                "rps": p.rps, "p50": p.p50, "p99": p.p99,
            })
        })
        .collect();
    let found_after = charts.found_after.as_ref().map(|values| {
        let counted: Vec<_> = values.iter().map(|&v| (v, 1)).collect();
        bins(&counted, 20)
    });
    let series = json!({
        "timeline": timeline,
        "latencyBins": bins(&charts.latencies, BINS),
        "foundAfterBins": found_after,
    });
    // The report goes in last: its error messages are server text, which must not be taken for a
    // placeholder.
    TEMPLATE
        .replace("{{STYLE}}", STYLE)
        .replace("{{SCRIPT}}", SCRIPT)
        .replace("{{CHARTS}}", &script_json(&series))
        .replace("{{REPORT}}", &script_json(report))
}

/// JSON inside a `<script>` element ends at the first `</script`, and error messages come from the
/// server: escaping `<`, `>` and `&` keeps the JSON equal in value and the page intact.
fn script_json(value: &Value) -> String {
    serde_json::to_string(value).expect("JSON").replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

/// `count` log-spaced bins from the smallest to the largest value, each `{from, to, count}`; every
/// value lands in exactly one bin, so the bins add up to the calls counted.
pub fn bins(values: &[(u64, u64)], count: usize) -> Vec<Value> {
    let (Some(low), Some(high)) =
        (values.iter().map(|v| v.0).min().map(|v| v.max(1)), values.iter().map(|v| v.0).max())
    else {
        return Vec::new();
    };
    let count = if high > low { count.max(1) } else { 1 };
    let span = (high as f64 / low as f64).ln();
    let edge = |i: usize| {
        if i == count {
            high
        } else {
            (low as f64 * (span * i as f64 / count as f64).exp()).round() as u64
        }
    };
    let mut counts = vec![0u64; count];
    for &(value, calls) in values {
        let index =
            if span > 0.0 { ((value.max(1) as f64 / low as f64).ln() / span * count as f64) as usize } else { 0 };
        counts[index.min(count - 1)] += calls;
    }
    counts.iter().enumerate().map(|(i, &n)| json!({ "from": edge(i), "to": edge(i + 1), "count": n })).collect()
}

#[cfg(test)]
mod browser_test;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_log_spaced_and_keep_every_call() {
        let values = [(100, 3), (900, 2), (1_100, 5), (10_000, 1)];
        let bins = bins(&values, 2);
        assert_eq!(
            bins,
            [json!({"from": 100, "to": 1000, "count": 5}), json!({"from": 1000, "to": 10000, "count": 6})]
        );
    }

    #[test]
    fn one_value_is_one_bin_and_none_is_no_bin() {
        assert_eq!(bins(&[(5, 4)], 40), [json!({"from": 5, "to": 5, "count": 4})]);
        assert!(bins(&[], 40).is_empty());
    }

    #[test]
    fn server_text_cannot_end_the_script_element() {
        let report = json!({ "errorDistribution": { "</script><script>alert(1)</script> & more": 1 } });
        let charts = Charts { timeline: Vec::new(), latencies: Vec::new(), found_after: None };
        let page = page(&report, &charts);
        assert_eq!(page.matches("</script>").count(), TEMPLATE.matches("</script>").count());
        let start = page.find(r#"id="report">"#).unwrap() + r#"id="report">"#.len();
        let end = start + page[start..].find("</script>").unwrap();
        assert_eq!(serde_json::from_str::<Value>(&page[start..end]).unwrap(), report);
    }
}
