//! Draws results/*.svg from the collected results (plotters, SVG backend):
//! `cargo run -p courier-bench --bin plots -- results`.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

/// Grouped bars: one group per category, one bar per series.
fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let top = series.iter().flat_map(|(_, v)| v.iter().copied()).fold(0.0f64, f64::max).max(1e-9) * 1.15;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = series.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..categories.len() as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < categories.len() {
                categories[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .draw()?;
    for (s, (name, values)) in series.iter().enumerate() {
        let color = Palette99::pick(s).to_rgba();
        chart
            .draw_series(values.iter().enumerate().filter(|(_, v)| **v > 0.0).map(|(i, &v)| {
                let x0 = i as f64 + 0.1 + 0.8 * s as f64 / n;
                Rectangle::new([(x0, 0.0), (x0 + 0.8 / n, v)], color.filled())
            }))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "results".into());
    let dir = Path::new(&dir);

    // Transport throughput and round trips, from the criterion CSV.
    let csv = std::fs::read_to_string(dir.join("transports.csv"))?;
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).ok_or(format!("no column {name}"));
    let (g, t, p, gib, ops) =
        (col("group")?, col("transport")?, col("payload")?, col("throughput_gib_s")?, col("ops_per_s")?);
    let mut stream: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut echo: BTreeMap<String, f64> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f[g] == "stream" && f[t] != "inproc" && f[t] != "memcpy" {
            stream.entry(f[t].to_owned()).or_default().insert(f[p].to_owned(), f[gib].parse().unwrap_or(0.0));
        }
        if f[g] == "echo" {
            echo.insert(f[t].to_owned(), f[ops].parse().unwrap_or(0.0));
        }
    }
    let payloads: Vec<String> = ["1MiB", "8MiB", "64MiB"].iter().map(|s| s.to_string()).collect();
    let series: Vec<(String, Vec<f64>)> = stream
        .iter()
        .map(|(tr, m)| (tr.clone(), payloads.iter().map(|p| m.get(p).copied().unwrap_or(0.0)).collect()))
        .collect();
    bars(
        &dir.join("throughput.svg"),
        "One-way stream throughput, median (inproc:// and memcpy off scale)",
        "GiB/s",
        &payloads,
        &series,
    )?;
    let names: Vec<String> = echo.keys().cloned().collect();
    let series: Vec<(String, Vec<f64>)> = vec![("round trips/s".into(), names.iter().map(|n| echo[n]).collect())];
    bars(
        &dir.join("round_trips.svg"),
        "100-byte round trips (criterion, multi-thread runtime)",
        "round trips / s",
        &names,
        &series,
    )?;

    // Task throughput.
    let tasks: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tasks.json"))?)?;
    let mut by: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for row in tasks.as_array().into_iter().flatten() {
        let cluster =
            row["cluster"].as_str().unwrap_or_default().split_whitespace().next().unwrap_or_default().to_owned();
        let m = row["measurement"].as_str().unwrap_or_default().to_owned();
        by.entry(m).or_default().insert(cluster, row["median_tasks_per_s"].as_f64().unwrap_or(0.0));
    }
    let clusters: Vec<String> =
        by.values().flat_map(|m| m.keys().cloned()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let series: Vec<(String, Vec<f64>)> = by
        .iter()
        .map(|(m, v)| (m.clone(), clusters.iter().map(|c| v.get(c).copied().unwrap_or(0.0)).collect()))
        .collect();
    bars(&dir.join("tasks.svg"), "Trivial tasks per second, median of 3 (2 workers)", "tasks / s", &clusters, &series)?;

    // Stability.
    let stab: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("stability.json"))?)?;
    let rows: Vec<&serde_json::Value> = stab.as_array().into_iter().flatten().collect();
    let names: Vec<String> = rows
        .iter()
        .map(|r| r["transport"].as_str().unwrap_or_default().split("://").next().unwrap_or_default().to_owned())
        .collect();
    let count = |k: &str| rows.iter().map(|r| r[k].as_f64().unwrap_or(0.0)).collect::<Vec<f64>>();
    let series = vec![
        ("repetitions ok".to_owned(), count("ok")),
        ("failures".to_owned(), count("failures")),
        ("hangs".to_owned(), count("hangs")),
        ("lost".to_owned(), count("lost")),
        ("corrupt".to_owned(), count("corrupt")),
        ("proxy cuts survived".to_owned(), count("proxy_cuts")),
        ("freezes survived".to_owned(), count("freezes_ok")),
        ("restarts survived".to_owned(), count("restarts_ok")),
    ];
    bars(
        &dir.join("stability.svg"),
        "Stability runs with injected faults: repetitions ok, failures, hangs, lost and corrupt messages",
        "count",
        &names,
        &series,
    )?;
    // GLM seconds per pass over the data (when the glm part ran).
    if let Ok(text) = std::fs::read_to_string(dir.join("glm.json")) {
        let glm: serde_json::Value = serde_json::from_str(&text)?;
        let rows: Vec<&serde_json::Value> = glm["configs"].as_array().into_iter().flatten().collect();
        let get = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(0.0);
        let mut names = Vec::new();
        let (mut median, mut cpu) = (Vec::new(), Vec::new());
        for r in &rows {
            let name = r["config"].as_str().unwrap_or_default().to_owned();
            if name == "floor" {
                names.push("floor / 2 (ideal, 2 cores)".to_owned());
                median.push(get(r, "seconds_per_eval_median") / 2.0);
                cpu.push(0.0);
            }
            names.push(name);
            median.push(get(r, "seconds_per_eval_median"));
            cpu.push(get(r, "cpu_seconds_per_eval"));
        }
        let title = format!(
            "Logistic regression: seconds per pass over X ({} × {} f64, {} chunks), median",
            glm["rows"], glm["cols"], glm["chunks"]
        );
        let series = vec![("wall seconds".to_owned(), median), ("CPU seconds (all processes)".to_owned(), cpu)];
        bars(&dir.join("glm.svg"), &title, "seconds", &names, &series)?;
        println!("wrote glm.svg");
    }
    println!("wrote throughput.svg, round_trips.svg, tasks.svg, stability.svg in {}", dir.display());
    Ok(())
}
