//! Reading the flow table: live flows per backend, and a service's flows
//! as `xlb flows` lists them.

use std::{collections::HashMap, net::SocketAddr};

use aya::Ebpf;
use lb_common::{
    BackendLoad, Flow, FlowKey, ServiceKey,
    flow::{
        FLOW_CLOSING, FLOW_MIDSTREAM, FLOW_PROXY_SYN, FLOW_REFUSED, FLOW_SYN_SENT, FlowTimeouts,
        is_live,
    },
    load,
};
use serde::Serialize;

use super::{maps, tables::Tables, unmapped};
use crate::protocol::FlowState;

/// One flow-table entry, as `xlb flows` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FlowInfo {
    pub client: SocketAddr,
    /// `None` if the backend has left the service.
    pub backend: Option<SocketAddr>,
    pub state: FlowState,
    pub idle_seconds: f64,
}

/// Live flows per (service, backend), all services in one pass over the
/// flow table: entries that have not passed their idle timeout, began with a
/// SYN (or are UDP) and have seen no FIN or RST.
pub(super) fn live(
    ebpf: &Ebpf,
    tables: &Tables,
    timeouts: &FlowTimeouts,
) -> anyhow::Result<HashMap<(String, SocketAddr), u64>> {
    let owners = owners(tables);
    let mut counts = HashMap::new();
    for_each_current(ebpf, timeouts, |key, flow, _| {
        if is_live(flow.state)
            && let Some((service, addr)) = owners.get(&(*key.service_key(), flow.backend))
        {
            *counts.entry(((*service).to_owned(), *addr)).or_insert(0) += 1;
        }
        true
    })?;
    Ok(counts)
}

/// Recounts every backend's live flows from the flow table and writes the
/// data plane's correction (`BACKEND_GONE`, see `lb_common::load`), so that
/// flows whose entries expired idle or were evicted, which the data plane
/// never sees end, stop counting. The counts are read before and after the
/// pass over the table (`load::correction`): flows that open or end during
/// it may count one too many until the next, never one too few, which would
/// let a backend past its `max_conns`. Returns the live flows per backend id.
pub(super) fn recount_live(
    ebpf: &mut Ebpf,
    tables: &Tables,
    timeouts: &FlowTimeouts,
) -> anyhow::Result<HashMap<u32, u64>> {
    let ids: Vec<u32> = tables
        .services
        .values()
        .flat_map(|s| s.backends.values().copied())
        .collect();
    let (corrections, counted) = recount(
        &ids,
        || {
            let loads = maps::backend_load(ebpf)?;
            ids.iter().map(|&id| loads.get(id)).collect()
        },
        || {
            let mut counted: HashMap<u32, u64> = HashMap::new();
            for_each_current(ebpf, timeouts, |_, flow, _| {
                if is_live(flow.state) {
                    *counted.entry(flow.backend).or_insert(0) += 1;
                }
                true
            })?;
            Ok(counted)
        },
    )?;
    let mut gone = maps::backend_gone_mut(ebpf)?;
    for (id, correction) in ids.iter().zip(corrections) {
        gone.set(*id, correction)?;
    }
    Ok(counted)
}

/// [`recount_live`]'s order, apart from the maps: the loads of backends
/// `ids` (`read_loads`, in that order) read before and after `count_live`
/// walks the table; returns each backend's correction, in `ids`' order, and
/// the live flows counted per backend id.
fn recount(
    ids: &[u32],
    mut read_loads: impl FnMut() -> anyhow::Result<Vec<BackendLoad>>,
    count_live: impl FnOnce() -> anyhow::Result<HashMap<u32, u64>>,
) -> anyhow::Result<(Vec<u64>, HashMap<u32, u64>)> {
    let before = read_loads()?;
    let counted = count_live()?;
    let after = read_loads()?;
    let corrections = ids
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(id, (before, after))| {
            load::correction(before, after, counted.get(id).copied().unwrap_or(0))
        })
        .collect();
    Ok((corrections, counted))
}

/// Flow-table entries of `service` (at most `limit`): client, backend,
/// state and idle time; expired ones left out.
pub(super) fn of_service(
    ebpf: &Ebpf,
    tables: &Tables,
    timeouts: &FlowTimeouts,
    service: &str,
    limit: usize,
) -> anyhow::Result<Vec<FlowInfo>> {
    let wanted = tables.service(service)?.key;
    let owners = owners(tables);
    let mut out = Vec::new();
    for_each_current(ebpf, timeouts, |key, flow, now| {
        if *key.service_key() == wanted {
            out.push(FlowInfo {
                client: SocketAddr::new(unmapped(key.src), u16::from_be(key.src_port_be)),
                backend: owners.get(&(wanted, flow.backend)).map(|(_, addr)| *addr),
                state: flow_state(flow.state),
                idle_seconds: now.saturating_sub(flow.last_seen_ns) as f64 / 1e9,
            });
        }
        out.len() < limit
    })?;
    Ok(out)
}

/// What `xlb flows` calls a flow entry's `FLOW_*` state.
fn flow_state(state: u8) -> FlowState {
    match state {
        // The data plane's own SYN awaits the backend's answer too.
        FLOW_SYN_SENT | FLOW_PROXY_SYN => FlowState::SynSent,
        FLOW_CLOSING => FlowState::Closing,
        FLOW_MIDSTREAM => FlowState::Midstream,
        FLOW_REFUSED => FlowState::Refused,
        _ => FlowState::Established,
    }
}

/// Which service and backend a flow entry's (service key, backend id)
/// names.
fn owners(tables: &Tables) -> HashMap<(ServiceKey, u32), (&str, SocketAddr)> {
    tables
        .services
        .iter()
        .flat_map(|(name, state)| {
            let key = state.key;
            state
                .backends
                .iter()
                .map(move |(addr, id)| ((key, *id), (name.as_str(), *addr)))
        })
        .collect()
}

/// Calls `f` with every flow-table entry not past its idle timeout, and
/// the time it judged that at, until `f` returns false.
fn for_each_current(
    ebpf: &Ebpf,
    timeouts: &FlowTimeouts,
    mut f: impl FnMut(&FlowKey, &Flow, u64) -> bool,
) -> anyhow::Result<()> {
    let flows = maps::flows(ebpf)?;
    let now = coarse_monotonic_ns();
    for (key, flow) in flows.entries() {
        if !flow.is_expired(key.proto, now, timeouts) && !f(&key, &flow, now) {
            break;
        }
    }
    Ok(())
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock the data plane stamps
/// flows with (`bpf_ktime_get_coarse_ns`).
fn coarse_monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use lb_common::flow::FLOW_ESTABLISHED;

    use super::*;

    #[test]
    fn every_flow_state_has_a_name_the_cli_reads_back() {
        for state in [
            FLOW_SYN_SENT,
            FLOW_ESTABLISHED,
            FLOW_CLOSING,
            FLOW_MIDSTREAM,
            FLOW_REFUSED,
            FLOW_PROXY_SYN,
        ] {
            let named = flow_state(state);
            assert_eq!(named.to_string().parse::<FlowState>().unwrap(), named);
        }
        assert_eq!(flow_state(FLOW_REFUSED), FlowState::Refused);
    }

    /// Backends 7 and 8 have two live flows each. While the walk runs, one
    /// of 7's ends before the walk reaches it, and 8 opens a third after
    /// the walk has passed its place: the walk counts one flow of 7 and two
    /// of 8. The data plane counted that end and that open itself: the
    /// corrections must leave 1 and 3 live, neither taking the end off
    /// again nor losing the open.
    #[test]
    fn flows_opening_and_ending_during_the_recount_are_counted_once() {
        let loads = std::cell::RefCell::new(
            [BackendLoad {
                opened: 2,
                ..BackendLoad::default()
            }; 2],
        );
        let (corrections, counted) = recount(
            &[7, 8],
            || Ok(loads.borrow().to_vec()),
            || {
                loads.borrow_mut()[0].ended += 1;
                loads.borrow_mut()[1].opened += 1;
                Ok(HashMap::from([(7, 1), (8, 2)]))
            },
        )
        .unwrap();
        assert_eq!(counted, HashMap::from([(7, 1), (8, 2)]));
        let live: Vec<u64> = loads
            .borrow()
            .iter()
            .zip(&corrections)
            .map(|(load, gone)| load::live_flows(load, *gone))
            .collect();
        assert_eq!(live, [1, 3], "corrections {corrections:?}");
    }
}
