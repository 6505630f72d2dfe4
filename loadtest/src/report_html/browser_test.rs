//! The HTML report as a browser shows it: a real churn run against an in-process edge writes the page
//! and the JSON report, headless Chromium renders the page, and the test checks that every chart drew
//! its data, that the screenshot is not blank, and that every number the page shows is the JSON
//! report's.
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::run::{run, Options, Popularity};
use crate::test_edge;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMIUM_BOUND: Duration = Duration::from_secs(60);
const CHARTS: [&str; 5] = ["chart-latency", "chart-rps", "chart-percentiles", "chart-status", "chart-found-after"];

#[test]
fn the_html_report_draws_its_charts_and_shows_the_json_reports_numbers() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test renders the HTML report in headless Chromium; install the Debian \
         package `chromium` (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (json_path, html_path) = (dir.path().join("report.json"), dir.path().join("report.html"));
    load_run(&json_path, &html_path);
    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();

    let dom = chromium(&["--dump-dom".to_owned(), file_url(&html_path)]);
    let dom = String::from_utf8(dom).expect("the DOM is UTF-8");
    let elements = elements(&dom);

    let embedded = script_text(&dom, "report");
    assert_eq!(serde_json::from_str::<Value>(&embedded).unwrap(), report, "the page embeds the JSON report");
    check_shown_numbers(&elements, &report);
    check_charts(&dom, &report);

    let screenshot = dir.path().join("report.png");
    chromium(&[
        format!("--screenshot={}", screenshot.display()),
        "--window-size=1200,2000".to_owned(),
        "--hide-scrollbars".to_owned(),
        file_url(&html_path),
    ]);
    check_not_blank(&screenshot);
    if let Some(keep) = std::env::var_os("LOADGEN_REPORT_KEEP") {
        // For looking at the page and the screenshot by hand.
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        for file in [&json_path, &html_path, &screenshot] {
            std::fs::copy(file, keep.join(file.file_name().unwrap())).unwrap();
        }
    }
}

/// Two seconds (so the timeline has more than one point) of a closed-loop churn run, with malformed
/// IDs so that there is more than one status code.
fn load_run(json: &Path, html: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let test_edge::TestEdge { edge, core_url } = test_edge::start().await;
        let options = Options {
            target: edge.grpc_addr.to_string(),
            connections: 2,
            duration: Duration::from_millis(2000),
            concurrency: 4,
            rate: None,
            popularity: Popularity::Zipf,
            merchants: 1000,
            unknown: 0.05,
            malformed: 0.05,
            seed: 3,
            churn: Some((core_url, edge.admin_addr.to_string(), 20.0)),
            timeout: Duration::from_secs(5),
            json: Some(json.to_owned()),
            html: Some(html.to_owned()),
            progress: false,
        };
        run(options).await.expect("the run passes: no stale answers");
        edge.shutdown().await.unwrap();
    });
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Runs headless Chromium with a fresh profile and returns its stdout; kills it (its whole process
/// group: the browser forks renderers) if it takes longer than [`CHROMIUM_BOUND`].
fn chromium(args: &[String]) -> Vec<u8> {
    use std::os::unix::process::CommandExt;
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
    let pid = child.id();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    // The browser's process group is killed only while the browser itself is not yet reaped: until
    // then its pid (which is the group's id) cannot be handed to another process, so the kill cannot
    // reach anything but the browser's own renderers. (Killing `-pid` after `wait` returned once hit an
    // unrelated process group whose leader had been given the recycled pid.)
    let started = Instant::now();
    while !exited_unreaped(pid) {
        if started.elapsed() > CHROMIUM_BOUND {
            kill_group(pid);
            let _ = child.wait();
            panic!("chromium did not finish within {CHROMIUM_BOUND:?} (args {args:?}); killed it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Renderers left behind by the browser would hold the pipes open.
    kill_group(pid);
    let status = child.wait().unwrap();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(status.success(), "chromium {args:?} failed ({status}): {}", String::from_utf8_lossy(&stderr));
    stdout
}

/// Whether process `pid`, a child of this one, has exited but is not reaped yet (a zombie).
fn exited_unreaped(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may itself hold spaces.
    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
}

/// SIGKILL to the process group `pid` leads (only call it while `pid` is not reaped).
fn kill_group(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
}

/// A start tag of the dumped DOM, with the text right after it (enough for the leaf elements that
/// carry the numbers).
#[derive(Debug)]
struct Element {
    attributes: HashMap<String, String>,
    text: String,
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Chromium serializes every attribute as `name="value"`, which keeps this scan simple. The text of
/// a script or style element is left out.
fn elements(dom: &str) -> Vec<Element> {
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        if rest.starts_with('/') || rest.starts_with('!') {
            continue;
        }
        let Some(close) = rest.find('>') else { break };
        let tag = &rest[..close];
        let mut attributes = HashMap::new();
        let mut attrs = tag.split_once(char::is_whitespace).map_or("", |(_, a)| a);
        while let Some(eq) = attrs.find("=\"") {
            let name = attrs[..eq].trim().to_owned();
            let value_end = attrs[eq + 2..].find('"').expect("closed attribute value");
            attributes.insert(name, unescape(&attrs[eq + 2..eq + 2 + value_end]));
            attrs = &attrs[eq + 2 + value_end + 1..];
        }
        rest = &rest[close + 1..];
        // Script and style text is code, not markup.
        for raw in ["script", "style"] {
            if tag == raw || tag.starts_with(&format!("{raw} ")) {
                let end = rest.find(&format!("</{raw}>")).expect("raw text element closed");
                rest = &rest[end..];
            }
        }
        let text = unescape(&rest[..rest.find('<').unwrap_or(rest.len())]);
        found.push(Element { attributes, text });
    }
    found
}

fn script_text(dom: &str, id: &str) -> String {
    let open = format!("id=\"{id}\">");
    let start = dom.find(&open).unwrap_or_else(|| panic!("no element with id {id}")) + open.len();
    let end = start + dom[start..].find("</script>").expect("script closed");
    dom[start..end].to_owned()
}

/// A number in the report by the page's `data-key`: dotted object keys, and for
/// `latencyDistribution` the percentage, standing for that entry's latency.
fn lookup<'a>(report: &'a Value, key: &str) -> &'a Value {
    let mut value = report;
    for part in key.split('.') {
        value = match value {
            Value::Array(entries) => entries
                .iter()
                .find(|entry| entry["percentage"].as_u64().map(|p| p.to_string()).as_deref() == Some(part))
                .map(|entry| &entry["latency"])
                .unwrap_or_else(|| panic!("{key}: no percentage {part} in the report")),
            object => object.get(part).unwrap_or_else(|| panic!("{key}: not in the report")),
        };
    }
    value
}

fn check_shown_numbers(elements: &[Element], report: &Value) {
    let mut shown = HashMap::new();
    for element in elements {
        let Some(key) = element.attributes.get("data-key") else { continue };
        let value: f64 = element.attributes["data-value"].parse().unwrap();
        let expected = lookup(report, key).as_f64().unwrap_or_else(|| panic!("{key} is not a number"));
        // Exact: the page prints the shortest form that reads back as the same double, and the report is
        // parsed with serde_json's correctly rounded float parser (feature `float_roundtrip`).
        assert_eq!(value, expected, "{key}: data-value against the JSON report");
        let text = element.text.trim();
        let number = |suffix: &str| -> f64 {
            let digits = text.strip_suffix(suffix).unwrap_or_else(|| panic!("{key}: {text:?} lacks {suffix:?}"));
            digits.trim().replace(',', "").parse().unwrap_or_else(|e| panic!("{key}: {text:?}: {e}"))
        };
        // Shown with two decimals; the bound allows for the last digit's rounding.
        let close = |shown: f64, exact: f64| (shown - exact).abs() <= 0.005 + 1e-9;
        match element.attributes["data-unit"].as_str() {
            "count" => assert_eq!(number(""), expected, "{key}: shown as {text:?}"),
            "rate" => assert!(close(number(""), expected), "{key}: {text:?} against {expected}"),
            "ms" => assert!(close(number(" ms"), expected / 1e6), "{key}: {text:?} against {expected} ns"),
            "s" => assert!(close(number(" s"), expected / 1e9), "{key}: {text:?} against {expected} ns"),
            unit => panic!("{key}: unknown unit {unit}"),
        }
        *shown.entry(key.clone()).or_insert(0) += 1;
    }
    let mut expected: Vec<String> = ["count", "rps", "average", "fastest", "slowest", "total"].map(String::from).into();
    expected.extend(report["latencyDistribution"].as_array().unwrap().iter().map(|d| {
        format!("latencyDistribution.{}", d["percentage"]) //
    }));
    expected.extend(report["statusCodeDistribution"].as_object().unwrap().keys().map(|code| {
        format!("statusCodeDistribution.{code}") //
    }));
    for churn in ["onboarded", "checked", "stale", "failures", "foundAfter.count", "foundAfter.p50", "foundAfter.p99"] {
        expected.push(format!("churn.{churn}"));
    }
    for key in &expected {
        assert_eq!(shown.get(key), Some(&1), "{key} is shown once on the page; shown: {shown:?}");
    }
    let statuses = report["statusCodeDistribution"].as_object().unwrap();
    assert!(statuses.len() >= 2, "malformed IDs give InvalidArgument besides OK: {statuses:?}");
    let errors = elements.iter().find(|e| e.attributes.get("id").map(String::as_str) == Some("errors-total")).unwrap();
    let not_ok: u64 = statuses.iter().filter(|(code, _)| *code != "OK").map(|(_, n)| n.as_u64().unwrap()).sum();
    assert_eq!(errors.attributes["data-value"], not_ok.to_string());
    assert_eq!(report["churn"]["stale"], 0);
    assert!(report["churn"]["foundAfter"]["count"].as_u64().unwrap() > 0, "{}", report["churn"]);
}

/// The marks of one chart: its `<svg>` says how many it drew, and they must be there and add up to
/// the report's counts.
fn marks(dom: &str, id: &str) -> (usize, Vec<Element>) {
    let open = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no chart {id}"));
    let start = dom[..open].rfind("<svg").expect("the chart is an svg");
    let end = start + dom[start..].find("</svg>").expect("svg closed");
    let chart = elements(&dom[start..end]);
    let drawn: usize =
        chart[0].attributes.get("data-drawn").unwrap_or_else(|| panic!("{id} was not drawn")).parse().unwrap();
    let marks: Vec<_> =
        chart.into_iter().filter(|e| e.attributes.get("class").map(String::as_str) == Some("mark")).collect();
    (drawn, marks)
}

fn sum(marks: &[Element], attribute: &str) -> u64 {
    marks.iter().map(|m| m.attributes[attribute].parse::<u64>().unwrap()).sum()
}

fn check_charts(dom: &str, report: &Value) {
    for id in CHARTS {
        let (drawn, marks) = marks(dom, id);
        assert!(drawn > 0, "{id} drew nothing");
        assert_eq!(marks.len(), drawn, "{id}: data-drawn against its marks");
        for mark in &marks {
            let has_shape =
                ["height", "d", "width"].iter().any(|a| mark.attributes.get(*a).is_some_and(|v| !v.is_empty()));
            assert!(has_shape, "{id}: an empty mark {mark:?}");
        }
    }
    let statuses = &report["statusCodeDistribution"];
    let (_, latency) = marks(dom, "chart-latency");
    assert_eq!(sum(&latency, "data-count"), statuses["OK"].as_u64().unwrap(), "the histogram holds every success");
    let (_, seconds) = marks(dom, "chart-rps");
    let numbered: Vec<_> = seconds.iter().map(|s| s.attributes["data-second"].clone()).collect();
    assert!(numbered.len() >= 2, "one bar a second of the 2 s run: {numbered:?}");
    assert!(numbered.iter().enumerate().all(|(i, s)| *s == i.to_string()), "{numbered:?}");
    assert_eq!(sum(&seconds, "data-requests"), report["count"].as_u64().unwrap(), "requests/s adds up to the count");
    let (_, lines) = marks(dom, "chart-percentiles");
    let series: Vec<_> = lines.iter().map(|l| l.attributes["data-series"].as_str()).collect();
    assert_eq!(series, ["p50", "p99"]);
    let (_, bars) = marks(dom, "chart-status");
    for bar in &bars {
        assert_eq!(bar.attributes["data-count"], statuses[&bar.attributes["data-code"]].to_string());
    }
    assert_eq!(bars.len(), statuses.as_object().unwrap().len());
    let (_, found) = marks(dom, "chart-found-after");
    assert_eq!(sum(&found, "data-count"), report["churn"]["foundAfter"]["count"].as_u64().unwrap());
}

/// The charts' bar colour must be painted over a good area, and the page must be more than a few
/// colours: a page whose script failed is white and grey text.
fn check_not_blank(png: &Path) {
    let file = std::io::BufReader::new(std::fs::File::open(png).expect("chromium wrote the screenshot"));
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(frame.bit_depth, png::BitDepth::Eight);
    let channels = frame.color_type.samples();
    assert!(channels >= 3, "{:?}", frame.color_type);
    let pixels = &pixels[..frame.buffer_size()];
    let mut colours = std::collections::HashSet::new();
    let (mut bar_blue, mut not_white) = (0, 0);
    for pixel in pixels.chunks_exact(channels) {
        let (r, g, b) = (pixel[0], pixel[1], pixel[2]);
        colours.insert((r, g, b));
        if r.abs_diff(0x2f) < 8 && g.abs_diff(0x6f) < 8 && b.abs_diff(0xdf) < 8 {
            bar_blue += 1;
        }
        if r < 235 || g < 235 || b < 235 {
            not_white += 1;
        }
    }
    let (width, height) = (frame.width, frame.height);
    assert!((width, height) == (1200, 2000), "screenshot is {width}x{height}");
    assert!(bar_blue > 5_000, "only {bar_blue} pixels in the bar colour: were the charts painted?");
    assert!(not_white > 20_000, "only {not_white} non-white pixels");
    assert!(colours.len() > 100, "only {} distinct colours", colours.len());
}
