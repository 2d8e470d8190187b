//! Aligned text tables for the terminal, with the same rows kept for the JSON report.
use serde_json::{Map, Value};

pub struct Table {
    pub title: String,
    pub columns: Vec<&'static str>,
    /// Columns before this index are text (left-aligned); the rest are figures.
    pub text_columns: usize,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, columns: &[&'static str], text_columns: usize) -> Self {
        Table {
            title: title.into(),
            columns: columns.to_vec(),
            text_columns,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn print(&self) {
        let n = self.columns.len();
        let mut width: Vec<usize> = self.columns.iter().map(|c| c.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        println!("\n== {} ==", self.title);
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .take(n)
                .map(|(i, c)| {
                    if i < self.text_columns {
                        format!("{c:<w$}", w = width[i])
                    } else {
                        format!("{c:>w$}", w = width[i])
                    }
                })
                .collect();
            println!("  {}", parts.join("  ").trim_end());
        };
        line(
            &self
                .columns
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
        );
        for r in &self.rows {
            line(r);
        }
        for note in &self.notes {
            println!("  note: {note}");
        }
    }

    /// The rows as JSON objects keyed by column title (figures as numbers when they parse).
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut m = Map::new();
                for (c, v) in self.columns.iter().zip(r) {
                    let val = v
                        .trim_end_matches(['%', '×'])
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                        .unwrap_or_else(|| Value::String(v.clone()));
                    m.insert((*c).to_string(), val);
                }
                Value::Object(m)
            })
            .collect();
        serde_json::json!({ "title": self.title, "rows": rows, "notes": self.notes })
    }
}

/// Figures: `-` when absent or not a number.
pub fn f(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "-".into(),
    }
}

pub fn ratio(v: f64, base: f64) -> String {
    if base > 0.0 && v.is_finite() {
        format!("{:.2}×", v / base)
    } else {
        "-".into()
    }
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}
