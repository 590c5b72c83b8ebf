//! The configuration parser on arbitrary text: an error or a configuration,
//! never a panic; a configuration it accepts is written back out
//! (`xlb config dump`) as text it accepts again, to the same configuration,
//! and gives a desired state without a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xlb::{config::Config, desired::Desired};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    let dumped = config.to_toml().expect("a parsed configuration serializes");
    let again = Config::parse(&dumped).expect("a dumped configuration parses");
    assert_eq!(again, config, "dump and parse again changed it:\n{dumped}");
    let _ = Desired::from(&config);
});
