//! Events for people: one line per event, or a short report with a table of its objects.

use crate::contract::{Alert, RiskEvent};

/// One line per alert message: time, camera, state, level, rule and zone, description.
pub fn alert_line(alert: &Alert) -> String {
    let zone = alert.zone.as_ref().map_or("-", |z| z.id.as_str());
    format!(
        "{}  {}/{}  {:<6} {:<8} {:<13} {:<10} r{:<3} {}",
        alert.updated_at.format("%H:%M:%S%.3f"),
        alert.site,
        alert.camera_id,
        alert.state.as_str().to_uppercase(),
        alert.level.as_str().to_uppercase(),
        alert.rule,
        zone,
        alert.revision,
        alert.description
    )
}

/// One line per event: time, camera, level, score, counts, description.
pub fn event_line(event: &RiskEvent) -> String {
    let counts: Vec<String> = event
        .counts
        .iter()
        .map(|(label, n)| format!("{label}×{n}"))
        .collect();
    format!(
        "{}  {}/{}  {:<8} {:>3}  {:<28} {}",
        event.captured_at.format("%H:%M:%S%.3f"),
        event.site,
        event.camera_id,
        event.risk.level.as_str().to_uppercase(),
        event.risk.score,
        if counts.is_empty() {
            "-".to_string()
        } else {
            counts.join(" ")
        },
        event.description
    )
}

/// An event as a short report with a table of its objects.
pub fn event_report(event: &RiskEvent) -> String {
    let mut out = format!(
        "{}  {}/{}  frame {}\nrisk {} ({}/100), priority {}\n{}\n",
        event.captured_at.to_rfc3339(),
        event.site,
        event.camera_id,
        event.frame_id,
        event.risk.level.as_str().to_uppercase(),
        event.risk.score,
        event.priority,
        event.description
    );
    out += &format!(
        "\n{:>3}  {:<14} {:>5}  {:<25} {:<18} {}\n",
        "id", "label", "conf", "box (x1,y1,x2,y2 px)", "ground (m)", "zones"
    );
    for o in &event.objects {
        let b = &o.bbox;
        let ground = o
            .ground
            .map(|g| format!("{:.1}, {:.1}", g.x_m, g.y_m))
            .unwrap_or_else(|| "-".into());
        out += &format!(
            "{:>3}  {:<14} {:>5.2}  {:<25} {:<18} {}\n",
            o.id,
            o.label,
            o.confidence,
            format!("{:.0},{:.0},{:.0},{:.0}", b.x1, b.y1, b.x2, b.y2),
            ground,
            o.zones.join(",")
        );
    }
    let t = &event.timings_ms;
    out += &format!(
        "\n{}×{} px, model {} · ms: queue {:.1} decode {:.1} infer {:.1} post {:.1} total {:.1}\n",
        event.image.width,
        event.image.height,
        event.model.name,
        t.queue,
        t.decode,
        t.infer,
        t.post,
        t.total
    );
    out
}
