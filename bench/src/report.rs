//! Writes a run's results: the JSON document, a Markdown table and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::scenario::BResult;

/// Writes `<dir>/<date>-<backend>.{json,md,svg}`.
pub fn write(dir: &Path, doc: &Value) -> BResult<()> {
    std::fs::create_dir_all(dir)?;
    let base = format!(
        "{}-{}{}",
        doc["date"].as_str().unwrap_or("undated"),
        doc["backend"].as_str().unwrap_or("backend"),
        doc["file_suffix"].as_str().unwrap_or("")
    );
    let json_path = dir.join(format!("{base}.json"));
    std::fs::write(&json_path, format!("{doc:#}\n"))?;
    let svg_path = dir.join(format!("{base}.svg"));
    chart(&svg_path, doc)?;
    let md = markdown(doc, &format!("{base}.svg"));
    let md_path = dir.join(format!("{base}.md"));
    std::fs::write(&md_path, &md)?;
    eprintln!(
        "==> wrote {}, {} and {}",
        json_path.display(),
        md_path.display(),
        svg_path.display()
    );
    Ok(())
}

fn results(doc: &Value) -> &[Value] {
    doc["results"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn find<'a>(doc: &'a Value, imp: &str, scenario: &str, n: Option<u64>) -> Option<&'a Value> {
    results(doc).iter().find(|r| {
        r["impl"] == imp
            && r["scenario"] == scenario
            && n.map_or(true, |n| r["contenders"].as_u64() == Some(n))
    })
}

/// The herd of `imp` with a connection per waiter (`own`) or as the harness shares them.
fn find_herd<'a>(doc: &'a Value, imp: &str, own: bool) -> Option<&'a Value> {
    results(doc)
        .iter()
        .find(|r| r["impl"] == imp && r["scenario"] == "herd" && (r["connections"] == "own") == own)
}

/// ", CPU 123 µs/grant" when the run measured the client's CPU.
fn cpu(r: &Value) -> String {
    num(&r["cpu_us_per_grant"]).map_or(String::new(), |c| format!(", CPU {c:.0} µs/grant"))
}

/// Implementation names in run order, without the floor.
fn impl_names(doc: &Value) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in results(doc) {
        if let Some(n) = r["impl"].as_str() {
            if n != "floor" && !names.iter().any(|x| x == n) {
                names.push(n.to_owned());
            }
        }
    }
    names
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt_ms(v: &Value) -> String {
    num(v).map_or("–".into(), |x| format!("{x:.2}"))
}

fn fmt_int(x: f64) -> String {
    let s = format!("{:.0}", x);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// One cell: the figure, an error, or a dash.
fn cell(r: Option<&Value>, f: impl Fn(&Value) -> Option<String>) -> String {
    match r {
        None => "–".into(),
        Some(r) if r.get("error").is_some() => "failed ¹".into(),
        Some(r) => {
            let v = f(r).unwrap_or_else(|| "n/m".into());
            if r.get("note").is_some() {
                format!("{v} ²")
            } else {
                v
            }
        }
    }
}

fn markdown(doc: &Value, svg_name: &str) -> String {
    let names = impl_names(doc);
    // Ratios are to the better of the floors measured first and last (the least loaded
    // moment), so that load on a shared machine does not flatter the implementations.
    let floors: Vec<&Value> = results(doc)
        .iter()
        .filter(|r| r["impl"] == "floor" && r["scenario"] == "floor" && r.get("error").is_none())
        .collect();
    let floor_p50 = floors
        .iter()
        .filter_map(|f| num(&f["p50_ms"]))
        .reduce(f64::min);
    let floor_rate = floors
        .iter()
        .filter_map(|f| num(&f["ops_per_s"]))
        .reduce(f64::max);
    let ratio_ms = |x: Option<f64>| match (x, floor_p50) {
        (Some(x), Some(f)) if f > 0.0 => format!(" ({:.1}× floor)", x / f),
        _ => String::new(),
    };
    let ratio_rate = |x: f64| match floor_rate {
        Some(f) if f > 0.0 => format!(" ({:.2}× floor)", x / f),
        _ => String::new(),
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### {} — {} ({} run, {}: {})\n",
        doc["server"].as_str().unwrap_or("?"),
        doc["date"].as_str().unwrap_or("?"),
        doc["mode"].as_str().unwrap_or("?"),
        doc["topology"].as_str().unwrap_or("single member"),
        doc["settings"].as_str().unwrap_or(""),
    );
    let _ = writeln!(md, "Machine: {}.", doc["machine"].as_str().unwrap_or("?"));
    if let Some(n) = doc["note"].as_str().filter(|n| !n.is_empty()) {
        let _ = writeln!(md, "{n}");
    }
    let _ = writeln!(
        md,
        "Bench run took {:.0} s for this backend.\n",
        num(&doc["bench_seconds"]).unwrap_or(0.0)
    );
    let entity_floor = results(doc)
        .iter()
        .find(|r| r["impl"] == "floor" && r["scenario"] == "per-entity");
    for f in &floors {
        if f["scenario"] == "per-entity" {
            continue;
        }
        let _ = writeln!(
            md,
            "**Floor**, measured {} ({}, same Rust client): p50 {} / p99 {} / max {} ms, {} pairs/s.\n",
            f["when"].as_str().unwrap_or("once"),
            f["operations"].as_str().unwrap_or("raw write pair"),
            fmt_ms(&f["p50_ms"]),
            fmt_ms(&f["p99_ms"]),
            fmt_ms(&f["max_ms"]),
            num(&f["ops_per_s"]).map_or("?".into(), fmt_int),
        );
    }
    let e = &doc["plan"]["per_entity"];
    let entity_label = format!(
        "per-entity locks ({} names, {} tasks over {} clients)",
        fmt_int(num(&e["names"]).unwrap_or(0.0)),
        e["tasks"],
        e["clients"]
    );
    if let Some(f) = entity_floor {
        if let Some(err) = f["error"].as_str() {
            let _ = writeln!(md, "**Floor at {entity_label}** failed: {err}\n");
        } else {
            let _ = writeln!(
                md,
                "**Floor at {entity_label}** (each task: {} of its own key, raw ops): {} pairs/s, \
                 pair p50 {} / p99 {} ms{}.\n",
                f["operations"].as_str().unwrap_or("raw write pair"),
                num(&f["grants_per_s"]).map_or("?".into(), fmt_int),
                fmt_ms(&f["acquire_p50_ms"]),
                fmt_ms(&f["acquire_p99_ms"]),
                cpu(f).replace("grant", "pair"),
            );
        }
    }
    let entity_rate = entity_floor.and_then(|f| num(&f["grants_per_s"]));
    let _ = write!(md, "| scenario |");
    for n in &names {
        let _ = write!(md, " {n} |");
    }
    let _ = write!(md, "\n|---|");
    for _ in &names {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    // A row nobody ran (e.g. the herd in a cluster run) is left out.
    let mut row = |label: String, f: &dyn Fn(&str) -> String| {
        let cells: Vec<String> = names.iter().map(|n| f(n)).collect();
        if cells.iter().all(|c| c == "–") {
            return;
        }
        let _ = write!(md, "| {label} |");
        for c in cells {
            let _ = write!(md, " {c} |");
        }
        md.push('\n');
    };
    row("uncontended lock+release p50 / p99 / max ms".into(), &|n| {
        cell(find(doc, n, "uncontended", None), |r| {
            Some(format!(
                "{} / {} / {}{}{}",
                fmt_ms(&r["p50_ms"]),
                fmt_ms(&r["p99_ms"]),
                fmt_ms(&r["max_ms"]),
                ratio_ms(num(&r["p50_ms"])),
                cpu(r)
            ))
        })
    });
    let contenders: Vec<u64> = doc["plan"]["contenders"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    for c in &contenders {
        row(
            format!("contended, {c} sessions: grants/s (fairness max/min)"),
            &|n| {
                cell(find(doc, n, "contended", Some(*c)), |r| {
                    let rate = num(&r["grants_per_s"])?;
                    let fair = num(&r["fairness"])
                        .map_or("∞: a contender got 0".into(), |f| format!("{f:.2}"));
                    Some(format!(
                        "{}{} ({fair}){}",
                        fmt_int(rate),
                        ratio_rate(rate),
                        cpu(r)
                    ))
                })
            },
        );
    }
    for c in contenders.iter().filter(|c| **c == 8 || **c == 128) {
        row(format!("handoff, {c} sessions: p50 / p99 / max ms"), &|n| {
            cell(find(doc, n, "contended", Some(*c)), |r| {
                num(&r["handoff_p50_ms"])?;
                Some(format!(
                    "{} / {} / {}{}",
                    fmt_ms(&r["handoff_p50_ms"]),
                    fmt_ms(&r["handoff_p99_ms"]),
                    fmt_ms(&r["handoff_max_ms"]),
                    ratio_ms(num(&r["handoff_p50_ms"]))
                ))
            })
        });
    }
    row(
        format!("{entity_label}: grants/s (acquire p50 / p99 ms)"),
        &|n| {
            cell(find(doc, n, "per-entity", None), |r| {
                let rate = num(&r["grants_per_s"])?;
                let vs = match entity_rate {
                    Some(f) if f > 0.0 => format!(" ({:.2}× its floor)", rate / f),
                    _ => String::new(),
                };
                Some(format!(
                    "{}{vs} ({} / {}){}",
                    fmt_int(rate),
                    fmt_ms(&r["acquire_p50_ms"]),
                    fmt_ms(&r["acquire_p99_ms"]),
                    cpu(r)
                ))
            })
        },
    );
    let herd = doc["plan"]["herd_waiters"].as_u64().unwrap_or(0);
    // What the notification count is on this store: the server's own counter (etcd,
    // ZooKeeper), a monitoring subscriber (Redis), or the harness's LISTEN connection
    // (PostgreSQL, which counts no NOTIFYs).
    let counted = match doc["backend"].as_str() {
        Some("postgres") => {
            "NOTIFYs received per release, counted at the harness's LISTEN connection"
        }
        Some("redis") => {
            "pub/sub messages published per release (a PSUBSCRIBE * subscriber in the driver)"
        }
        _ => "notifications per release (server count)",
    };
    row(format!("herd, {herd} waiters: {counted}"), &|n| {
        cell(find_herd(doc, n, false), |r| {
            let mut s = format!("{:.2}", num(&r["notifications_per_release"])?);
            if let Some(w) = r["client_wakeups"].as_u64() {
                let rel = num(&r["releases"]).unwrap_or(1.0);
                let _ = write!(s, " (client wakeups {:.2})", w as f64 / rel);
            }
            Some(s)
        })
    });
    if let Some(what) = results(doc)
        .iter()
        .find_map(|r| r["server_work_counted"].as_str())
    {
        row(
            format!("herd, {herd} waiters: server work per waiter: {what}"),
            &|n| {
                cell(find_herd(doc, n, false), |r| {
                    Some(format!("{:.1}", num(&r["server_work_per_waiter"])?))
                })
            },
        );
    }
    row(format!("herd, {herd} waiters: drain time s"), &|n| {
        cell(find_herd(doc, n, false), |r| {
            Some(format!("{:.2}", num(&r["drain_s"])?))
        })
    });
    row(
        "client memory per waiting contender, KiB RSS (as the harness shares connections)".into(),
        &|n| {
            cell(find_herd(doc, n, false), |r| {
                Some(format!("{:.0}", num(&r["rss_kib_per_waiter"])?))
            })
        },
    );
    row(
        "client memory per waiting contender, KiB RSS, one connection per waiter".into(),
        &|n| {
            cell(find_herd(doc, n, true), |r| {
                Some(format!(
                    "{:.0} (drain {:.2} s)",
                    num(&r["rss_kib_per_waiter"])?,
                    num(&r["drain_s"]).unwrap_or(0.0)
                ))
            })
        },
    );
    row(
        "how the herd's waiting contenders share connections".into(),
        &|n| {
            cell(find_herd(doc, n, false), |r| {
                Some(r["sharing"].as_str()?.to_owned())
            })
        },
    );
    let locks = doc["plan"]["footprint_locks"].as_u64().unwrap_or(0);
    row(
        format!(
            "{} on the server for {} held locks",
            match doc["backend"].as_str() {
                Some("postgres") => "client connections (server processes)",
                Some("redis") => "client connections",
                _ => "sessions/leases",
            },
            fmt_int(locks as f64)
        ),
        &|n| {
            cell(find(doc, n, "footprint", None), |r| {
                Some(format!(
                    "{} (took {:.2} s)",
                    r["sessions_on_server"].as_u64()?,
                    num(&r["acquire_s"]).unwrap_or(0.0)
                ))
            })
        },
    );
    let _ = writeln!(
        md,
        "\n“n/m”: not measurable for this implementation; “–”: not run. Ratios are to the \
         better floor: its p50 (latencies) or pairs/s (throughput; contended grants can beat \
         it because many sessions keep the server busy at once, while the floor is one \
         client's sequential round trips). CPU: {}.",
        doc["cpu_method"].as_str().unwrap_or("not measured")
    );
    rounds(&mut md, doc);
    footnotes(&mut md, doc, "error", "¹ Failures");
    footnotes(&mut md, doc, "note", "² Notes");
    if let Some(u) = doc["unavailable"].as_array().filter(|u| !u.is_empty()) {
        let _ = writeln!(md, "\nPeers that could not run here:\n");
        for p in u {
            let _ = writeln!(
                md,
                "- {}: {}",
                p["impl"].as_str().unwrap_or("?"),
                p["reason"].as_str().unwrap_or("?")
            );
        }
    }
    let _ = writeln!(md, "\n![grants per second by contenders]({svg_name})");
    md
}

/// "implementation / scenario \[contenders\]": which run a list line is about.
fn row_label(r: &Value) -> String {
    let contenders = r["contenders"]
        .as_u64()
        .map_or(String::new(), |c| format!(" {c}"));
    format!(
        "{} / {}{contenders}",
        r["impl"].as_str().unwrap_or("?"),
        r["scenario"].as_str().unwrap_or("?"),
    )
}

/// Every round of every timed row (the tables show the median round), so a reader sees
/// how far the rounds spread and whether the ordering held in each.
fn rounds(md: &mut String, doc: &Value) {
    let hits: Vec<&Value> = results(doc)
        .iter()
        .filter(|r| r["rounds"]["values"].is_array())
        .collect();
    if hits.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nRounds (each timed row ran {} times, interleaved, every implementation once per \
         round in an order rotated each round; the tables show the median round):\n",
        doc["plan"]["rounds"]
    );
    for r in hits {
        let values: Vec<String> = r["rounds"]["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| num(v).map_or("failed".into(), |x| format!("{x}")))
            .collect();
        let _ = writeln!(
            md,
            "- {}: {} {}",
            row_label(r),
            r["rounds"]["field"].as_str().unwrap_or("?"),
            values.join(" / ")
        );
    }
}

/// Lists every result carrying `field` (an error or a note) under `title`.
fn footnotes(md: &mut String, doc: &Value, field: &str, title: &str) {
    let hits: Vec<&Value> = results(doc)
        .iter()
        .filter(|r| r.get(field).is_some())
        .collect();
    if hits.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n{title}:\n");
    for r in hits {
        let _ = writeln!(
            md,
            "- {}: {}",
            row_label(r),
            r[field].as_str().unwrap_or("?")
        );
    }
}

/// Grants per second against contenders, one line per implementation.
fn chart(path: &Path, doc: &Value) -> BResult<()> {
    use plotters::prelude::*;
    let contenders: Vec<u64> = doc["plan"]["contenders"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let names = impl_names(doc);
    let series: Vec<(String, Vec<(f64, f64)>)> = names
        .iter()
        .map(|n| {
            let pts = contenders
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let r = find(doc, n, "contended", Some(*c))?;
                    Some((i as f64, num(&r["grants_per_s"])?))
                })
                .collect();
            (n.clone(), pts)
        })
        .collect();
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(10.0_f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (860, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "{}: grants/s by contenders on one lock",
        doc["server"].as_str().unwrap_or("?")
    );
    let xmax = (contenders.len().max(2) - 1) as f64;
    let mut ch = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.2..xmax + 0.2, 0.0..ymax)?;
    let labels = contenders.clone();
    ch.configure_mesh()
        .x_desc("contenders")
        .y_desc("grants per second")
        .x_labels(contenders.len().max(2))
        .x_label_formatter(&|x| {
            let i = x.round() as usize;
            if (x - i as f64).abs() < 0.01 {
                labels.get(i).map_or(String::new(), |c| c.to_string())
            } else {
                String::new()
            }
        })
        .draw()?;
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        ch.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        ch.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
