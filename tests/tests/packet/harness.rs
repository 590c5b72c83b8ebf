//! The harness every packet case runs in: a data plane loaded with the
//! fixture services, attached in a fresh fixture namespace.

use std::net::SocketAddr;

use lb_common::GlobalCounter;
use xlb::{
    config::Config,
    dataplane::{Dataplane, LoadOptions},
    desired::Desired,
    xdp::ModeRequest,
};
use xlb_tests::{
    fixture::FixtureNet,
    frames::Frame,
    require_root,
    xdp::{Action, run_on},
};

/// The services of every case.
pub const CONFIG: &str = include_str!("../../fixtures/packet.toml");

/// A loaded data plane inside a fixture namespace.
pub struct Harness {
    pub dp: Dataplane,
    pub ifindex: u32,
    /// What `dp` was last given to serve.
    pub desired: Desired,
}

impl Harness {
    /// Marks `backend` of `service` failed in the desired state and applies
    /// it, as the agent does for a backend down or unhealthy.
    pub fn fail(&mut self, service: &str, backend: SocketAddr) {
        let desired = self.desired.backend_mut(service, backend).unwrap();
        desired.failed = true;
        desired.weight = 0;
        self.dp.apply(&self.desired).unwrap();
    }

    /// Takes `backend` of `service` out of new flows in the desired state
    /// and applies it, as the agent does for one out by failed attempts.
    pub fn take_out_passively(&mut self, service: &str, backend: SocketAddr) {
        let desired = self.desired.backend_mut(service, backend).unwrap();
        desired.no_new_flows = true;
        desired.weight = 0;
        self.dp.apply(&self.desired).unwrap();
    }

    pub fn run(&mut self, frame: &Frame) -> (Action, Vec<u8>) {
        run_on(&mut self.dp, self.ifindex, &frame.build())
    }

    pub fn raw(&mut self, frame: &[u8]) -> (Action, Vec<u8>) {
        run_on(&mut self.dp, self.ifindex, frame)
    }

    pub fn counter(&self, counter: GlobalCounter) -> u64 {
        self.dp.global_counter(counter).unwrap()
    }

    /// Runs `input`; checks the action, the output bytes and that `counter`
    /// counted it. A frame XDP sends on (`XDP_TX`, a redirect) is one hop
    /// further than `output`: its TTL or hop limit is one less; one handed
    /// to the kernel is not (the kernel's forwarding decrements it).
    pub fn expect(
        &mut self,
        input: &Frame,
        action: Action,
        output: &Frame,
        counter: GlobalCounter,
    ) {
        let before = self.counter(counter);
        let (got_action, got) = self.run(input);
        assert_eq!(got_action, action, "action for {input:?}");
        let output = match action {
            Action::Tx | Action::Redirect => output.clone().hop(),
            _ => output.clone(),
        };
        assert_bytes(&got, &output.build());
        assert_eq!(self.counter(counter), before + 1, "{counter:?} not counted");
    }

    /// Runs a raw frame; checks it passes unchanged, counted under `counter`.
    pub fn expect_pass_raw(&mut self, frame: &[u8], counter: GlobalCounter) {
        let before = self.counter(counter);
        let (action, out) = self.raw(frame);
        assert_eq!(action, Action::Pass);
        assert_bytes(&out, frame);
        assert_eq!(self.counter(counter), before + 1, "{counter:?} not counted");
    }

    pub fn new_flows(&self, service: &str, backend: &str) -> u64 {
        self.dp
            .backend_counters(service, backend.parse().unwrap())
            .unwrap()
            .new_flows
    }
}

fn assert_bytes(got: &[u8], want: &[u8]) {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "frames differ at byte {first} (lengths {} and {})\n got: {}\nwant: {}",
            got.len(),
            want.len(),
            hex(got),
            hex(want)
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `test` against a fresh data plane in a fresh fixture namespace.
pub fn with_harness(test: impl FnOnce(&mut Harness) + Send) {
    with_harness_loaded(LoadOptions::default(), test);
}

/// [`with_harness`] with the data plane loaded with `options`.
pub fn with_harness_loaded(options: LoadOptions, test: impl FnOnce(&mut Harness) + Send) {
    require_root();
    let fx = FixtureNet::new().expect("fixture namespace");
    let ifindex = fx.ifindex();
    fx.run(|| {
        let mut dp = Dataplane::load_with(options).expect("load the data plane");
        let desired = Desired::from(&Config::parse(CONFIG).unwrap());
        dp.apply(&desired).unwrap();
        // Attached (generic: nothing really arrives here) so that XDP may
        // send out of fx0, as on a load balancer's NIC.
        dp.attach("fx0", ModeRequest::Generic)
            .expect("attach to fx0");
        test(&mut Harness {
            dp,
            ifindex,
            desired,
        });
    });
}

/// Where an untagged IPv4 TCP or UDP frame the data plane sent on goes:
/// its destination address and port.
pub fn destination(out: &[u8]) -> SocketAddr {
    SocketAddr::new(
        std::net::Ipv4Addr::new(out[30], out[31], out[32], out[33]).into(),
        u16::from_be_bytes([out[36], out[37]]),
    )
}

/// The source port `nat` mode gives a flow whose client port is free on the
/// SNAT address: the client's own.
pub fn first_snat_port(client: &Frame) -> u16 {
    client.src.port()
}
