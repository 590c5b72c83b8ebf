//! The weighted Maglev builder on arbitrary backends, weights and sizes:
//! an error for a size that is not prime or too small, no table when no
//! backend has weight, else a full table naming only weighted backends,
//! the same for the same input.

#![no_main]

use lb_common::maglev::{Candidate, TableError, build_table, is_prime};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Vec<(u16, u8)>)| {
    let (size, backends) = input;
    let size = u32::from(size);
    let backends = &backends[..backends.len().min(64)];
    let identities: Vec<[u8; 2]> = backends.iter().map(|(id, _)| id.to_be_bytes()).collect();
    let candidates: Vec<Candidate<'_>> = identities
        .iter()
        .zip(backends)
        .map(|(identity, &(_, weight))| Candidate {
            identity,
            weight: u32::from(weight),
        })
        .collect();
    let weighted = candidates.iter().filter(|c| c.weight > 0).count();
    match build_table(&candidates, size) {
        Err(TableError::SizeNotPrime(n)) => assert!(n == size && !is_prime(size)),
        Err(TableError::TooSmall { size: n, backends }) => {
            assert!(n == size && is_prime(size) && backends == weighted && weighted > size as usize)
        }
        Ok(None) => assert!(is_prime(size) && weighted == 0),
        Ok(Some(table)) => {
            assert!(is_prime(size) && weighted > 0);
            assert_eq!(table.len(), size as usize);
            assert!(table.iter().all(|&i| candidates[i as usize].weight > 0));
            assert_eq!(build_table(&candidates, size), Ok(Some(table)));
        }
    }
});
