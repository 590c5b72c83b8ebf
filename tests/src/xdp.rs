//! Running the data plane on fixture frames through `BPF_PROG_TEST_RUN`.

use aya::programs::{TestRun, TestRunOptions};
use xlb::dataplane::Dataplane;

/// XDP verdicts, as the kernel numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Aborted = 0,
    Drop = 1,
    Pass = 2,
    Tx = 3,
    Redirect = 4,
}

impl Action {
    fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            other => panic!("XDP program returned {other}, not an XDP action"),
        }
    }
}

/// Runs the loaded program once on `frame`; returns its action and the
/// frame as the program left it.
pub fn run(dataplane: &mut Dataplane, frame: &[u8]) -> (Action, Vec<u8>) {
    let program = dataplane.program().expect("program loaded");
    // Room for the program to grow the frame (encapsulation, VLAN push).
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (Action::from_raw(result.return_value), out)
}
