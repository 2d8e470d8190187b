//! store stage (see DESIGN.md).
