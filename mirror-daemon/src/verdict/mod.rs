//! verdict stage (see DESIGN.md).
