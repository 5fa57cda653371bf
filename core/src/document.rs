//! Kong declarative configuration model (being written).
