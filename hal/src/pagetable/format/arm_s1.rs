//! PLACEHOLDER

/// PLACEHOLDER
#[derive(Debug, Clone, Copy)]
pub struct ArmS1;
