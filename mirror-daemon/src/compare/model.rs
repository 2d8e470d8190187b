use serde::{Deserialize, Serialize};

/// How a JSON field differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldDiffKind {
    /// In legacy, not in candidate.
    Missing,
    /// In candidate, not in legacy.
    Extra,
    /// Different JSON types.
    Type,
    /// Same type, different value (beyond tolerance).
    Value,
    /// Same elements, different order (arrays not declared unordered).
    Order,
}

/// The kind of one difference. `Display` gives a stable key such as `status`,
/// `header(content-type)`, `field($.user.name,value)`, `size`, `body`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DiffKind {
    Status,
    /// Header name, lower-case.
    Header {
        name: String,
    },
    /// JSON path (`$.a.b[3]`, with array indexes kept) and how it differs.
    Field {
        path: String,
        how: FieldDiffKind,
    },
    /// Body sizes differ (non-JSON bodies compared by length and hash).
    Size,
    /// Non-JSON bodies of equal size with different content.
    Body,
}

impl std::fmt::Display for DiffKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiffKind::Status => f.write_str("status"),
            DiffKind::Header { name } => write!(f, "header({name})"),
            DiffKind::Field { path, how } => {
                let how = match how {
                    FieldDiffKind::Missing => "missing",
                    FieldDiffKind::Extra => "extra",
                    FieldDiffKind::Type => "type",
                    FieldDiffKind::Value => "value",
                    FieldDiffKind::Order => "order",
                };
                write!(f, "field({path},{how})")
            }
            DiffKind::Size => f.write_str("size"),
            DiffKind::Body => f.write_str("body"),
        }
    }
}

/// One difference, with short (already masked) renderings of both sides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    pub kind: DiffKind,
    pub legacy: Option<String>,
    pub candidate: Option<String>,
}

/// Result of comparing one legacy response with the candidate's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    pub diffs: Vec<Diff>,
}

impl Comparison {
    pub fn matched(&self) -> bool {
        self.diffs.is_empty()
    }
}
