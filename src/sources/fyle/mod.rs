//! Fyle platform source.
