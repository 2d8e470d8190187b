//! guard stage (see DESIGN.md).
