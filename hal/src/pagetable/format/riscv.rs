//! PLACEHOLDER

/// PLACEHOLDER
#[derive(Debug, Clone, Copy)]
pub struct RiscvSv;
