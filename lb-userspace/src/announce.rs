//! Announcing the VIPs through the host's BGP daemon, without speaking BGP:
//! a blackhole host route per VIP in a routing table of the agent's own
//! (`[announce] table`), marked with its route protocol number, which BIRD
//! or FRR on the host exports to the router (docs/scale-out.md). The routes
//! outlive the daemon (a restarted one reads them again) and the agent
//! (the data plane forwards on after a crash); a stop removes them.
//!
//! Nothing goes in `main`: a route there (a blackhole) would make the
//! kernel refuse to forward packets from the VIP (reverse-path filter),
//! which a node does for `dsr` backends' replies when it is their gateway
//! and for frames XDP hands it in `dnat` mode.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::Context as _;

use crate::{config::AnnounceConfig, host::Rtnl};

/// The agent's routes, kept equal to the VIPs it wants announced.
pub struct Announcer {
    table: u32,
    protocol: u8,
    rtnl: Rtnl,
    /// The VIPs whose route was there after the last [`Announcer::sync`].
    announced: BTreeSet<IpAddr>,
}

impl Announcer {
    /// Opens a netlink socket in this network namespace; the routes a
    /// previous agent left count as announced.
    pub fn new(config: &AnnounceConfig) -> anyhow::Result<Self> {
        let mut rtnl = Rtnl::open_filtered().context("opening rtnetlink")?;
        let announced = rtnl
            .host_routes(config.table, config.protocol)
            .context("reading the announced VIPs' routes")?
            .into_iter()
            .collect();
        Ok(Self {
            table: config.table,
            protocol: config.protocol,
            rtnl,
            announced,
        })
    }

    /// The VIPs announced.
    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.announced
    }

    /// Makes the routes those of `wanted`, whatever else changed them (an
    /// operator, a previous agent); logs each VIP announced or withdrawn
    /// with `why`.
    pub fn sync(&mut self, wanted: &BTreeSet<IpAddr>, why: &str) -> anyhow::Result<()> {
        let present: BTreeSet<IpAddr> = self
            .rtnl
            .host_routes(self.table, self.protocol)?
            .into_iter()
            .collect();
        for &vip in wanted.difference(&present) {
            self.rtnl
                .add_blackhole(vip, self.table, self.protocol, true)
                .with_context(|| format!("adding the route of {vip} to table {}", self.table))?;
            tracing::info!(%vip, table = self.table, "announcing {vip}");
        }
        for &vip in present.difference(wanted) {
            self.rtnl
                .delete_route(vip, self.table, self.protocol)
                .with_context(|| {
                    format!("deleting the route of {vip} from table {}", self.table)
                })?;
            tracing::info!(%vip, table = self.table, "withdrawing {vip}: {why}");
        }
        self.announced = wanted.clone();
        Ok(())
    }
}
