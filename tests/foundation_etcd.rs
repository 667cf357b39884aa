//! Real-process tests (filled in by its issue).
