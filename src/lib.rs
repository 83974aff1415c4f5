//! stead
