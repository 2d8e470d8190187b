//! mask stage (see DESIGN.md).
