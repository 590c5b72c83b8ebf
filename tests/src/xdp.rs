//! Running the data plane on fixture frames through `BPF_PROG_TEST_RUN`.

use aya::programs::{TestRun, TestRunOptions, Xdp};
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

/// The `struct xdp_md` context for a test run of a `frame_len`-byte frame
/// received on interface `ifindex`: data, data_end, data_meta,
/// ingress_ifindex, rx_queue_index, egress_ifindex.
pub fn xdp_md(frame_len: usize, ifindex: u32) -> Vec<u8> {
    [0, frame_len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

/// Runs the loaded program once on `frame`, as received on the interface
/// with index `ifindex` (0: none, the kernel's default); returns its action
/// and the frame as the program left it.
pub fn run_on(dataplane: &mut Dataplane, ifindex: u32, frame: &[u8]) -> (Action, Vec<u8>) {
    run_program(dataplane.program().expect("program loaded"), ifindex, frame)
}

/// [`run_on`] for `program` itself, which several threads may run at once
/// (each on the CPU it is pinned to).
pub fn run_program(program: &Xdp, ifindex: u32, frame: &[u8]) -> (Action, Vec<u8>) {
    // Room for the program to grow the frame (encapsulation, VLAN push).
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = xdp_md(frame.len(), ifindex);
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: (ifindex != 0).then_some(ctx.as_slice()),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (Action::from_raw(result.return_value), out)
}

/// [`run_on`] without an ingress interface.
pub fn run(dataplane: &mut Dataplane, frame: &[u8]) -> (Action, Vec<u8>) {
    run_on(dataplane, 0, frame)
}
