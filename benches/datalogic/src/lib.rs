//! Marker crate: the datalogic benchmark lives in `benches/datalogic.rs`.
