//! `read --html FILE` and `watch --html FILE`: one self-contained page (inline SVG drawn by
//! an inline script from inline JSON; nothing is fetched) with a lane per flow: its life,
//! the idle gaps before reuses shaded with their length, keep-alive probes and their ACKs,
//! how it ended (FIN, RST, silence) and who ended it, failed reuses highlighted; the flows
//! with something to say first; details on hover; idle limits listed above.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use kaprobe_capture::flow::ending::{EndHow, IdleLimit};
use kaprobe_capture::{FlowSummary, Kind, PacketEvent};
use serde_json::{json, Value};

/// Lanes drawn at most; the rest are counted in a line under the picture.
pub const MAX_LANES: usize = 2000;
/// Probe and ACK markers kept per lane.
const MAX_MARKS: usize = 200;

/// Probe and ACK times per flow, gathered while events stream past (bounded per flow).
#[derive(Debug, Default)]
pub struct Marks {
    by_flow: HashMap<(SocketAddr, SocketAddr), Vec<(Duration, Kind)>>,
}

impl Marks {
    /// Remember one packet event.
    pub fn add(&mut self, p: &PacketEvent) {
        let key = if p.src <= p.dst {
            (p.src, p.dst)
        } else {
            (p.dst, p.src)
        };
        let v = self.by_flow.entry(key).or_default();
        if v.len() < MAX_MARKS {
            v.push((p.ts, p.kind));
        }
    }

    fn of(&self, f: &FlowSummary) -> &[(Duration, Kind)] {
        let key = if f.client <= f.server {
            (f.client, f.server)
        } else {
            (f.server, f.client)
        };
        self.by_flow.get(&key).map_or(&[], Vec::as_slice)
    }
}

/// Whether a flow has something to say: probes, a failed reuse, or an end other than a
/// clean FIN.
pub fn telling(f: &FlowSummary) -> bool {
    f.keepalives + f.zero_window_probes > 0
        || f.ending.reuse_failed
        || matches!(
            f.ending.how,
            Some(EndHow::Rst | EndHow::Silent | EndHow::KeepaliveTimeout)
        )
}

/// The page for `flows` (already in display order), the probe `marks` and the idle
/// `limits`, titled `title`.
#[must_use]
pub fn page(title: &str, flows: &[FlowSummary], marks: &Marks, limits: &[IdleLimit]) -> String {
    let mut order: Vec<&FlowSummary> = flows.iter().filter(|f| telling(f)).collect();
    order.extend(flows.iter().filter(|f| !telling(f)));
    let t0 = flows.iter().map(|f| f.first_seen).min().unwrap_or_default();
    let t1 = flows.iter().map(|f| f.last_seen).max().unwrap_or_default();
    let rel = |t: Duration| t.saturating_sub(t0).as_secs_f64();
    let lanes: Vec<Value> = order
        .iter()
        .take(MAX_LANES)
        .map(|f| {
            let e = &f.ending;
            json!({
                "client": f.client.to_string(),
                "server": f.server.to_string(),
                "start": rel(f.first_seen),
                "end": rel(f.last_seen),
                "open": e.how.is_none(),
                "by": e.by.map(|b| b.as_str()),
                "how": e.how.map(EndHow::as_str),
                "idle_before_end": e.idle_before_end.map(|d| d.as_secs_f64()),
                "evidence": e.evidence,
                "verdict": e.verdict,
                "reuse_failed": e.reuse_failed,
                "reuses": e.reuses.iter().map(|r| json!({
                    "at": rel(r.at),
                    "idle": r.idle.as_secs_f64(),
                    "by": r.by.as_str(),
                    "result": r.result.as_str(),
                })).collect::<Vec<_>>(),
                "marks": marks.of(f).iter().map(|(t, k)| json!([rel(*t), k.as_str()])).collect::<Vec<_>>(),
                "keepalives": f.keepalives,
                "outcome": f.outcome.as_str(),
                "telling": telling(f),
            })
        })
        .collect();
    let limits: Vec<Value> = limits.iter().map(super::capture::idle_limit_json).collect();
    let data = json!({
        "title": title,
        "span": t1.saturating_sub(t0).as_secs_f64(),
        "flows": flows.len(),
        "drawn": lanes.len(),
        "lanes": lanes,
        "limits": limits,
    });
    // `</` cannot end the script element early once escaped.
    let data = data.to_string().replace("</", "<\\/");
    let mut out = String::with_capacity(data.len() + 8192);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n\
         <h1>{}</h1>\n<p id=\"summary\"></p>\n<ul id=\"limits\"></ul>\n\
         <div id=\"legend\">{LEGEND}</div>\n<svg id=\"lanes\" xmlns=\"http://www.w3.org/2000/svg\"></svg>\n\
         <p id=\"more\"></p>\n<div id=\"tip\" hidden></div>\n\
         <script id=\"data\" type=\"application/json\">{data}</script>\n\
         <script>{SCRIPT}</script>\n</body></html>\n",
        escape(title),
        escape(title)
    );
    out
}

/// Write the HTML picture to `path`; an unwritable file is exit 7, naming it.
pub fn write(path: &std::path::Path, page: &str) -> anyhow::Result<()> {
    std::fs::write(path, page).map_err(|e| {
        crate::exit::Failure::new(
            crate::exit::FILE,
            format!(
                "--html {}: {}",
                path.display(),
                kaprobe_sock::fmt::os_error(&e)
            ),
        )
        .into()
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const STYLE: &str = "body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}\
h1{font-size:18px}#legend span{margin-right:14px}\
.life{stroke:#999;stroke-width:2}.idle{fill:#f2d7a0}.idle.failed{fill:#f4a3a3}\
.probe{fill:#3a6fd8}.ack{fill:#3aa757}.fin{fill:#555}.rst{fill:#d93025}.silent{fill:#9c27b0}\
.keepalive_timeout{fill:#ff6d00}.reuse.failed{stroke:#d93025;stroke-width:3}\
.reuse.ok{stroke:#3aa757;stroke-width:2}.label{font-size:11px;fill:#333}\
.lane:hover .life{stroke:#000}#tip{position:fixed;background:#fff;border:1px solid #888;\
padding:6px;max-width:480px;font-size:12px;pointer-events:none}";

const LEGEND: &str = "<span style=\"color:#3a6fd8\">&#9679; keep-alive probe</span>\
<span style=\"color:#3aa757\">&#9679; its ACK</span>\
<span style=\"background:#f2d7a0\">&nbsp;idle before a reuse&nbsp;</span>\
<span style=\"background:#f4a3a3\">&nbsp;idle before a failed reuse&nbsp;</span>\
<span style=\"color:#555\">&#9632; FIN</span><span style=\"color:#d93025\">&#9632; RST</span>\
<span style=\"color:#9c27b0\">&#9632; silent</span>\
<span style=\"color:#ff6d00\">&#9632; keep-alive timeout</span>";

/// Draws the lanes from the inline JSON: a real browser is what makes the picture.
const SCRIPT: &str = r#"
(function(){
const d = JSON.parse(document.getElementById('data').textContent);
const NS = 'http://www.w3.org/2000/svg';
const svg = document.getElementById('lanes');
const W = Math.max(800, Math.min(1600, window.innerWidth - 40)), LABEL = 300, H = 22;
const span = d.span > 0 ? d.span : 1;
const x = t => LABEL + (W - LABEL - 20) * (t / span);
svg.setAttribute('width', W);
svg.setAttribute('height', d.lanes.length * H + 30);
function el(name, attrs, parent, tip){
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (tip) e.dataset.tip = tip;
  parent.appendChild(e); return e;
}
const f2 = v => (v === null || v === undefined) ? '-' : v.toFixed(2) + 's';
d.lanes.forEach((l, i) => {
  const y = 20 + i * H;
  const g = el('g', {class: 'lane' + (l.telling ? ' telling' : ''), 'data-client': l.client,
    'data-server': l.server, 'data-how': l.how || 'open', 'data-by': l.by || ''}, svg,
    l.client + ' -> ' + l.server + (l.verdict ? ': ' + l.verdict : ' (still open)'));
  el('text', {x: 4, y: y + 4, class: 'label'}, g).textContent = l.client + ' -> ' + l.server;
  el('line', {x1: x(l.start), x2: x(l.end), y1: y, y2: y, class: 'life'}, g);
  l.reuses.forEach(r => {
    const failed = r.result !== 'ok';
    el('rect', {x: x(r.at - r.idle), y: y - 6, width: Math.max(1, x(r.at) - x(r.at - r.idle)),
      height: 12, class: 'idle' + (failed ? ' failed' : '')}, g,
      'idle ' + f2(r.idle) + ', then the ' + r.by + ' wrote: ' + r.result);
    el('line', {x1: x(r.at), x2: x(r.at), y1: y - 8, y2: y + 8,
      class: 'marker reuse ' + (failed ? 'failed' : 'ok')}, g,
      'reuse after ' + f2(r.idle) + ': ' + r.result);
  });
  l.marks.forEach(m => {
    const kind = m[1] === 'keepalive_ack' ? 'ack' : 'probe';
    el('circle', {cx: x(m[0]), cy: y + (kind === 'ack' ? 4 : -4), r: 3,
      class: 'marker ' + kind}, g, m[1] + ' at ' + f2(m[0]));
  });
  if (l.how) {
    el('rect', {x: x(l.end) - 4, y: y - 7, width: 8, height: 14, class: 'marker end ' + l.how}, g,
      l.how + ' by ' + l.by + ' after ' + f2(l.idle_before_end) + ' idle' +
      (l.evidence ? ' (' + l.evidence + ')' : ''));
  }
});
document.getElementById('summary').textContent = d.flows + ' flows over ' + f2(d.span) +
  '; ' + d.drawn + ' drawn, those with something to say first.';
const ul = document.getElementById('limits');
d.limits.forEach(l => {
  const li = document.createElement('li');
  li.className = 'limit';
  li.textContent = 'idle limit of ' + l.server + ': reuses worked after ' + f2(l.longest_ok) +
    ' and failed (' + l.how + ') after ' + f2(l.shortest_failed) + ' (' + l.flows + ' flows)' +
    (l.hint ? '; that fits ' + l.hint : '');
  ul.appendChild(li);
});
if (d.flows > d.drawn) document.getElementById('more').textContent =
  (d.flows - d.drawn) + ' more flows not drawn (quiet ones): see --json.';
const tip = document.getElementById('tip');
svg.addEventListener('mousemove', ev => {
  const t = ev.target.closest('[data-tip]');
  if (!t) { tip.hidden = true; return; }
  tip.textContent = t.dataset.tip; tip.hidden = false;
  tip.style.left = (ev.clientX + 12) + 'px'; tip.style.top = (ev.clientY + 12) + 'px';
});
document.body.dataset.drawn = String(svg.querySelectorAll('g.lane').length);
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_cannot_close_its_script_element() {
        let p = page("a</script><b>", &[], &Marks::default(), &[]);
        assert!(!p.contains("a</script><b>"), "{p}");
        assert!(p.contains("a&lt;/script&gt;&lt;b&gt;"));
        assert_eq!(p.matches("</script>").count(), 2);
    }
}
