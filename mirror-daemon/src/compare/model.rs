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
    /// A difference in what the exchange did to a dependency (`effects`): `call` names the
    /// call (`POST /charges`), `what` is `missing`, `extra` or the payload's diff key.
    SideEffect {
        call: String,
        what: String,
    },
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
            DiffKind::SideEffect { call, what } => write!(f, "side_effect({call},{what})"),
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

/// How the bodies of one exchange were compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyMode {
    /// Both bodies empty.
    #[default]
    Empty,
    /// Parsed and compared as JSON.
    Json,
    /// Compared as UTF-8 text.
    Text,
    /// Compared byte for byte.
    Bytes,
    /// A decoded body was over `max_decoded_body`: compared by length and SHA-256.
    Hashed,
    /// A body could not be decoded (unknown coding, corrupt stream): raw bytes compared.
    Undecodable,
}

/// Result of comparing one legacy response with the candidate's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// At most `CompareConfig::max_diffs` diffs, in order: status, headers, body.
    pub diffs: Vec<Diff>,
    /// Diffs found beyond the cap, counted but not kept.
    #[serde(default)]
    pub omitted: u64,
    #[serde(default)]
    pub body: BodyMode,
}

impl Comparison {
    pub fn matched(&self) -> bool {
        self.diffs.is_empty() && self.omitted == 0
    }

    /// Diffs found, kept or not.
    pub fn total_diffs(&self) -> u64 {
        self.diffs.len() as u64 + self.omitted
    }
}
