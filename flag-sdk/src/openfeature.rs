//! OpenFeature provider (filled in below).
