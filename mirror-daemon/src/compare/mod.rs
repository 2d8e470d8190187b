//! Compare: normalize the legacy and candidate responses and list their differences.
mod model;

pub use model::{Comparison, Diff, DiffKind, FieldDiffKind};
