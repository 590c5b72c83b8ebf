//! Namespace tests: the data plane attached in a lab, with real TCP traffic
//! from the client namespace.

use lb_common::GlobalCounter;
use xlb::{
    config::Config,
    dataplane::Dataplane,
    xdp::{AttachedMode, ModeRequest},
};
use xlb_lab::{Lab, LabSpec, client, topology::LB_IFACE};
use xlb_tests::require_root;

/// Loads the data plane in the lab's load-balancer namespace and attaches it
/// to its interface in `mode`.
fn attach(lab: &Lab, config: &Config, mode: ModeRequest) -> (Dataplane, AttachedMode) {
    lab.in_lb(|| {
        let mut dataplane = Dataplane::load()?;
        dataplane.set_services(&config.services)?;
        let mode = dataplane.attach(LB_IFACE, mode)?;
        anyhow::Ok((dataplane, mode))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("attaching xlb in the lab: {e:#}"))
}

#[test]
fn counts_real_tcp_traffic_through_the_attached_interface() {
    require_root();
    let lab = Lab::up(LabSpec::for_test(2)).expect("lab up");
    let b0 = lab.backend(0);
    // The load balancer host forwards client traffic to b0; count it as a
    // service on b0's address.
    let config = Config::parse(&format!(
        "[[service]]\nname = \"b0\"\nvip = \"{}\"\nport = {}\n",
        b0.v4, b0.port
    ))
    .unwrap();

    for mode in [ModeRequest::Native, ModeRequest::Generic] {
        let (dataplane, attached) = attach(&lab, &config, mode);
        assert_eq!(
            attached,
            match mode {
                ModeRequest::Generic => AttachedMode::Generic,
                _ => AttachedMode::Native,
            }
        );
        let not_service_before = counter(&dataplane, GlobalCounter::PassNotService);
        const REQUESTS: u64 = 20;
        let answers = lab
            .in_client(|| {
                (0..REQUESTS)
                    .map(|_| client::http_get(b0.addr_v4(), client::DEFAULT_TIMEOUT))
                    .collect::<anyhow::Result<Vec<String>>>()
            })
            .unwrap()
            .expect("requests through the load balancer host");
        assert!(answers.iter().all(|a| a == "b0"), "{answers:?}");

        // Each request is at least SYN, ACK, request, FIN from the client.
        let counters = dataplane.service_counters(0).unwrap();
        assert!(
            counters.packets >= 4 * REQUESTS,
            "{mode:?}: {} packets counted for {REQUESTS} requests",
            counters.packets
        );
        assert!(counters.bytes >= counters.packets * 54, "{counters:?}");
        // b0's replies cross the interface too, addressed to the client.
        assert!(
            counter(&dataplane, GlobalCounter::PassNotService) >= not_service_before + 4 * REQUESTS
        );
        drop(dataplane); // detaches before the next mode attaches
    }
}

fn counter(dataplane: &Dataplane, which: GlobalCounter) -> u64 {
    let all = dataplane.global_counters().unwrap();
    all.into_iter().find(|(c, _)| *c == which).unwrap().1
}
