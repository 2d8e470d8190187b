//! serve stage (see DESIGN.md).
