//! A history as a small self-contained HTML page: one lane per client, each operation a
//! bar from its call to its return (to the right edge when its outcome is unknown),
//! the operations of a failing window highlighted and listed. No script, no external
//! file: it opens anywhere.

use super::{describe_op, Report};
use crate::history::{History, OpKind};
use std::collections::BTreeSet;
use std::fmt::Write;

const LANE_HEIGHT_PX: u64 = 22;
const WIDTH_PX: u64 = 1600;
const LABEL_WIDTH_PX: u64 = 48;

/// The page for `history`, highlighting the window of the first non-linearizable
/// partition in `report`, if any.
pub fn history_html(history: &History, report: &Report) -> String {
    let highlight: BTreeSet<usize> = report
        .failure()
        .map(|(_, window)| window.ops.iter().copied().collect())
        .unwrap_or_default();
    let end_us = history
        .ops
        .iter()
        .map(|op| op.complete_us.unwrap_or(op.invoke_us))
        .max()
        .unwrap_or(0)
        .max(1);
    let clients = history
        .ops
        .iter()
        .map(|op| op.client)
        .max()
        .map_or(0, |c| c + 1);
    let x = |time_us: u64| LABEL_WIDTH_PX + time_us * (WIDTH_PX - LABEL_WIDTH_PX) / end_us;
    let mut page = String::new();
    page.push_str(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>chatsim history</title>\
         <style>body{font:12px monospace}.lane{position:relative;height:22px;border-bottom:1px solid #eee}\
         .op{position:absolute;top:3px;height:14px;overflow:hidden;white-space:nowrap;border-radius:2px;opacity:.8}\
         .send{background:#7ab}.read{background:#9c7}.delete{background:#db8}.create{background:#aaa}.list{background:#c9d}\
         .unknown{background:repeating-linear-gradient(45deg,#ccc,#ccc 4px,#fff 4px,#fff 8px)}\
         .error{outline:1px solid #a00}.hot{outline:3px solid #e00;opacity:1;z-index:1}\
         .label{position:absolute;left:0;top:3px}</style></head><body>\n",
    );
    let _ = writeln!(page, "<h3>{}</h3>", summary(report));
    if let Some((partition, window)) = report.failure() {
        let _ = writeln!(
            page,
            "<p>{} is not linearizable; shortest window found:</p><pre>{}</pre>",
            escape(&partition.to_string()),
            escape(&window.text)
        );
    }
    let _ = writeln!(
        page,
        "<div style=\"position:relative;width:{WIDTH_PX}px;height:{}px\">",
        clients as u64 * LANE_HEIGHT_PX
    );
    for client in 0..clients {
        let _ = writeln!(
            page,
            "<div class=\"lane\" style=\"position:absolute;top:{}px;width:{WIDTH_PX}px\"><span class=\"label\">c{client}</span>",
            client as u64 * LANE_HEIGHT_PX
        );
        for (index, op) in history
            .ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.client == client)
        {
            let known = super::inbox::known_outcome(op);
            let left = x(op.invoke_us);
            let right = match (op.complete_us, &known) {
                (Some(t), Some(_)) => x(t),
                _ => WIDTH_PX,
            };
            let kind = match op.kind {
                OpKind::CreateAccount { .. } => "create",
                OpKind::OpenSession { .. } => "open",
                OpKind::Send { .. } => "send",
                OpKind::Read { .. } => "read",
                OpKind::Peek { .. } => "peek",
                OpKind::Delete { .. } => "delete",
                OpKind::List { .. } => "list",
            };
            let mut class = String::from(kind);
            match known {
                None => class.push_str(" unknown"),
                Some(Err(_)) => class.push_str(" error"),
                Some(Ok(_)) => {}
            }
            if highlight.contains(&index) {
                class.push_str(" hot");
            }
            let _ = writeln!(
                page,
                "<div class=\"op {class}\" style=\"left:{left}px;width:{}px\" title=\"{}\">{kind}</div>",
                (right.saturating_sub(left)).max(2),
                escape(&describe_op(history, index))
            );
        }
        page.push_str("</div>\n");
    }
    page.push_str("</div></body></html>\n");
    page
}

fn summary(report: &Report) -> String {
    format!(
        "{} partitions, {} not linearizable, {} undecided (search budget), {} search steps",
        report.partitions.len(),
        report.failure().map_or(0, |_| 1),
        report.unknown_count(),
        report.steps()
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
