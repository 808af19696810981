//! Sources: where records come from. Each source streams pages of records.

pub mod fyle;
