//! The web listener's pages: plain HTML with one inline stylesheet, no scripts and nothing
//! loaded from elsewhere (so they work offline, under a strict Content-Security-Policy, and by
//! keyboard). Every value shown is escaped.

use std::fmt::Write as _;

/// HTML-escapes text for element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
:root{color-scheme:light dark;--accent:#2456d6;--muted:#5b6270;--line:#d9dde5;--bg:#f5f7fb;--card:#fff}
@media (prefers-color-scheme:dark){:root{--accent:#7aa2ff;--muted:#a3aab8;--line:#343a46;--bg:#14171d;--card:#1c2027}}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;background:var(--bg)}
header{padding:14px 24px;border-bottom:1px solid var(--line);background:var(--card);display:flex;gap:16px;align-items:center}
header .brand{font-weight:700;letter-spacing:.02em}
header nav{margin-left:auto;display:flex;gap:14px;align-items:center}
header nav form{margin:0}
main{max-width:760px;margin:32px auto;padding:0 16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:24px;margin-bottom:20px}
h1{font-size:1.4rem;margin:0 0 12px}
h2{font-size:1.1rem;margin:0 0 10px}
p.muted,.muted{color:var(--muted)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:6px 18px;margin:16px 0}
dt{color:var(--muted)}
dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
table{width:100%;border-collapse:collapse}
th,td{text-align:left;padding:8px 6px;border-bottom:1px solid var(--line);vertical-align:top}
label{display:block;margin:12px 0 4px;font-weight:600}
input[type=text],input[type=password]{width:100%;padding:10px;border:1px solid var(--line);border-radius:6px;font:inherit;background:var(--bg);color:inherit}
.button,button{display:inline-block;margin-top:16px;padding:10px 18px;border-radius:6px;border:1px solid var(--accent);background:var(--accent);color:#fff;font:inherit;font-weight:600;text-decoration:none;cursor:pointer}
.button.secondary,button.secondary{background:transparent;color:var(--accent)}
a{color:var(--accent)}
:focus-visible{outline:3px solid var(--accent);outline-offset:2px}
.error{border-left:4px solid #c0392b}
.ok{border-left:4px solid #1e8e3e}
.qr{max-width:220px;background:#fff;padding:8px;border-radius:6px}
";

/// A whole page: title, optional navigation (portal pages), body.
pub fn page(title: &str, nav: Option<&str>, body: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · cvpn</title><style>{STYLE}</style></head><body>\
         <header><span class=\"brand\">cvpn</span><span class=\"muted\">Client VPN</span>{}</header>\
         <main>{body}</main></body></html>",
        escape(title),
        nav.map(|n| format!("<nav>{n}</nav>")).unwrap_or_default(),
    );
    out
}

/// A page that says one thing (a result or an error), with a hint of what to do.
pub fn message(title: &str, text: &str, ok: bool) -> String {
    page(
        title,
        None,
        &format!(
            "<section class=\"card {}\"><h1>{}</h1><p>{}</p></section>",
            if ok { "ok" } else { "error" },
            escape(title),
            escape(text)
        ),
    )
}

/// A definition list of (label, value) pairs, values escaped.
pub fn details(rows: &[(&str, String)]) -> String {
    let mut out = String::from("<dl>");
    for (k, v) in rows {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
    }
    out.push_str("</dl>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_in_values() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        let d = details(&[("Platform", "<b>win</b>".into())]);
        assert!(d.contains("&lt;b&gt;win&lt;/b&gt;"));
        assert!(!d.contains("<b>"));
    }
}
