//! The loaded XDP data plane: its program, its maps, and their contents.

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{Xdp, xdp::XdpLinkId},
};
use lb_common::{GlobalCounter, Service, ServiceKey, TrafficCounters};

use crate::{
    config::ServiceConfig,
    xdp::{self, AttachedMode, ModeRequest},
};

/// Name of the main XDP program in the eBPF object.
pub const PROGRAM: &str = "xlb";

/// The xlb eBPF object, loaded into the kernel.
pub struct Dataplane {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId, AttachedMode)>,
}

impl Dataplane {
    /// Loads the embedded eBPF object and verifies the XDP program.
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(crate::ebpf_object()).context("loading the xlb eBPF object")?;
        xdp_program(&mut ebpf)?
            .load()
            .context("loading the xlb XDP program (verifier)")?;
        Ok(Self {
            ebpf,
            links: Vec::new(),
        })
    }

    /// The XDP program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_program(&mut self.ebpf)
    }

    /// Attaches the program to `iface`; returns the mode it got.
    pub fn attach(&mut self, iface: &str, request: ModeRequest) -> anyhow::Result<AttachedMode> {
        let (link, mode) = xdp::attach(xdp_program(&mut self.ebpf)?, iface, request)?;
        tracing::info!(iface, %mode, "XDP program attached");
        self.links.push((iface.to_owned(), link, mode));
        Ok(mode)
    }

    /// Interfaces the program is attached to, with their modes.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachedMode)> {
        self.links
            .iter()
            .map(|(iface, _, mode)| (iface.as_str(), *mode))
    }

    /// Makes the `SERVICES` map hold exactly `services`; a service's id is
    /// its index in the slice.
    pub fn set_services(&mut self, services: &[ServiceConfig]) -> anyhow::Result<()> {
        let mut map = self.services_map()?;
        let wanted: Vec<ServiceKey> = services.iter().map(ServiceConfig::key).collect();
        let stale: Vec<ServiceKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !wanted.contains(key))
            .collect();
        for key in stale {
            map.remove(&key).context("removing a service")?;
        }
        for (id, key) in wanted.iter().enumerate() {
            let id = u32::try_from(id)?;
            map.insert(key, Service { id, _reserved: 0 }, 0)
                .with_context(|| format!("inserting service {}", services[id as usize].name))?;
        }
        Ok(())
    }

    /// Packets and bytes of the service with `id`, summed over CPUs.
    pub fn service_counters(&self, id: u32) -> anyhow::Result<TrafficCounters> {
        let array: PerCpuArray<&MapData, TrafficCounters> = self.map("SERVICE_STATS")?;
        let mut total = TrafficCounters::default();
        for cpu in array.get(&id, 0)?.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// Every global counter with its value, summed over CPUs.
    pub fn global_counters(&self) -> anyhow::Result<Vec<(GlobalCounter, u64)>> {
        let array: PerCpuArray<&MapData, u64> = self.map("GLOBAL_STATS")?;
        GlobalCounter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu = array.get(&(counter as u32), 0)?;
                Ok((counter, per_cpu.iter().sum()))
            })
            .collect()
    }

    fn services_map(&mut self) -> anyhow::Result<HashMap<&mut MapData, ServiceKey, Service>> {
        let map = self
            .ebpf
            .map_mut("SERVICES")
            .ok_or_else(|| anyhow!("map SERVICES missing from the eBPF object"))?;
        Ok(HashMap::try_from(map)?)
    }

    fn map<'a, T>(&'a self, name: &str) -> anyhow::Result<T>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
        Ok(T::try_from(map)?)
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing from the eBPF object"))?
        .try_into()?)
}
