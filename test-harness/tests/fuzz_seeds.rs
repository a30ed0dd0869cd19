//! Replays the fuzz targets' seed corpus (`fuzz/seeds/`) on the stable toolchain, through the
//! same functions the targets call (`iommu_test_harness::fuzzing`): the seeds stay valid
//! inputs, and a crash file copied into `fuzz/seeds/<dir>/` becomes a regression test.
//!
//! | seed directory | fuzz targets |
//! |---|---|
//! | `codec` | `codec` |
//! | `requests` | `requests` (mock) |
//! | `server` | `server_mock`, `server_vtd`, `server_smmuv3` |

use std::path::PathBuf;

use iommu_test_harness::fixtures::{Qemu, SmmuFixture, VtdFixture};
use iommu_test_harness::fuzzing;
use iommu_test_harness::mock::MockFixture;

/// Every file of `fuzz/seeds/<dir>/`, by name.
fn seeds(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", path.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("seed readable");
            (p, bytes)
        })
        .collect()
}

/// Runs `check` on every seed of `dir`, naming the seed that fails (and, for server streams,
/// printing the steps it decodes to; the output shows when the test fails).
fn replay(dir: &str, check: impl Fn(&[u8])) {
    for (path, bytes) in seeds(dir) {
        eprintln!("seed {}", path.display());
        if dir == "server" {
            eprintln!("{:#?}", fuzzing::fault_ops(&bytes));
        }
        check(&bytes);
    }
}

#[test]
fn codec() {
    replay("codec", fuzzing::codec);
}

#[test]
fn requests_mock() {
    replay("requests", fuzzing::requests::<MockFixture>);
}

#[test]
fn server_mock() {
    replay("server", fuzzing::server_stream::<MockFixture>);
}

#[test]
fn server_vtd() {
    replay("server", fuzzing::server_stream::<VtdFixture>);
}

#[test]
fn server_smmuv3() {
    replay("server", fuzzing::server_stream::<SmmuFixture<Qemu>>);
}
