//! How the server's public types read in logs on target (defmt): counters by name.

use crate::server::Stats;

impl defmt::Format for Stats {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "Stats {{ requests: {=u64}, invalidations: {=u64}, errors: {{",
            self.requests,
            self.invalidations
        );
        let mut first = true;
        for (code, &n) in self.errors.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let sep = if first { " " } else { ", " };
            first = false;
            match iommu_protocol::Error::from_code(code as u16) {
                Some(e) => defmt::write!(f, "{=str}{}: {=u64}", sep, e, n),
                None => defmt::write!(f, "{=str}code {=usize}: {=u64}", sep, code, n),
            }
        }
        defmt::write!(
            f,
            "{=str}}}, faults_routed: {=u64}, faults_unowned: {=u64}, faults_lost: {=u64}, \
             hw_fault_overflows: {=u64}, drain_errors: {=u64}, quarantined_domains: {=u64}, \
             reclaimed_domains: {=u64}, failed_blocks: {=u64} }}",
            if first { "" } else { " " },
            self.faults_routed,
            self.faults_unowned,
            self.faults_lost,
            self.hw_fault_overflows,
            self.drain_errors,
            self.quarantined_domains,
            self.reclaimed_domains,
            self.failed_blocks
        )
    }
}
