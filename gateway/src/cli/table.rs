//! Human-readable tables: a header row and left-aligned columns two spaces apart.

use std::fmt::Write as _;

/// A table being built.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (cells past the header count are dropped, missing ones are blank).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline. Control characters in
    /// cells (a description with a newline) are shown as spaces so that rows stay rows.
    pub fn render(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        };
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                (0..self.headers.len())
                    .map(|i| r.get(i).map(|c| clean(c)).unwrap_or_default())
                    .collect()
            })
            .collect();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut s = String::new();
            for (i, c) in cells.enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                let pad = widths[i].saturating_sub(c.chars().count());
                let _ = write!(s, "{c}{}", " ".repeat(pad));
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(&mut self.headers.iter().copied());
        for r in &rows {
            line(&mut r.iter().map(String::as_str));
        }
        out
    }
}

/// An optional value, or `-`.
pub fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_table_aligns_columns() {
        let mut t = Table::new(&["ID", "STATUS"]);
        t.row(vec!["cvpn-endpoint-1".into(), "available".into()]);
        t.row(vec!["x".into(), "a\nb".into()]);
        assert_eq!(
            t.render(),
            "ID               STATUS\ncvpn-endpoint-1  available\nx                a b\n"
        );
    }
}
