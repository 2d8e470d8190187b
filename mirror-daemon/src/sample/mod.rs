//! sample stage (see DESIGN.md).
