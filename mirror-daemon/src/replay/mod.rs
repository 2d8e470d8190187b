//! replay stage (see DESIGN.md).
