//! Configuration files of the peers, with the settings their users run in
//! production: one worker (process or thread) per core, one listening
//! socket per worker (`SO_REUSEPORT`), client connections kept alive for as
//! long as the client keeps them, no per-connection logging.
//!
//! The bench writes them to `bench/results/configs/` so a run can be
//! repeated by hand (the lab's names and addresses are fixed).

use std::net::SocketAddrV4;

/// Where the peers keep their pid and log files while the bench runs.
pub const RUN_DIR: &str = "/run/xlb-bench";

/// nginx `stream` (layer 4) proxy on `vip` over `backends`, round robin.
pub fn nginx(vip: SocketAddrV4, backends: &[SocketAddrV4], workers: u32) -> String {
    let servers: String = backends
        .iter()
        .map(|b| format!("        server {b};\n"))
        .collect();
    format!(
        "# nginx stream (layer-4) proxy for the xlb bench. Run in the lab's lb namespace:\n\
         #   nginx -p {RUN_DIR}/nginx -e {RUN_DIR}/nginx/error.log -c nginx.conf -g 'daemon off;'\n\
         load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         worker_processes {workers};  # one per core\n\
         worker_rlimit_nofile 20000;\n\
         pid {RUN_DIR}/nginx/nginx.pid;\n\
         error_log {RUN_DIR}/nginx/error.log warn;\n\
         \n\
         events {{\n\
         \x20   worker_connections 8192;\n\
         }}\n\
         \n\
         stream {{\n\
         \x20   upstream web {{\n\
         {servers}\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       # One listening socket per worker; the kernel spreads connections.\n\
         \x20       listen {vip} reuseport backlog=4096;\n\
         \x20       proxy_pass web;\n\
         \x20       proxy_connect_timeout 2s;\n\
         \x20       # Idle client connections stay open this long (keep-alive).\n\
         \x20       proxy_timeout 60s;\n\
         \x20   }}\n\
         }}\n"
    )
}

/// HAProxy `mode tcp` on `vip` over `backends`, round robin.
pub fn haproxy(vip: SocketAddrV4, backends: &[SocketAddrV4], threads: u32) -> String {
    // HAProxy 2.6 has no `shards`: one `bind` line per thread gives each
    // thread its own SO_REUSEPORT socket, as nginx's `reuseport` does.
    let binds: String = (1..=threads)
        .map(|t| format!("    bind {vip} thread {t}\n"))
        .collect();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server b{i} {b}\n"))
        .collect();
    format!(
        "# HAProxy in TCP mode for the xlb bench. Run in the lab's lb namespace:\n\
         #   haproxy -f haproxy.cfg -db\n\
         global\n\
         \x20   nbthread {threads}  # one per core\n\
         \x20   maxconn 8000  # 2 descriptors a connection within a 20000 RLIMIT_NOFILE\n\
         \x20   pidfile {RUN_DIR}/haproxy/haproxy.pid\n\
         \n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   timeout connect 2s\n\
         \x20   # Idle client connections stay open this long (keep-alive).\n\
         \x20   timeout client 60s\n\
         \x20   timeout server 60s\n\
         \n\
         frontend vip\n\
         {binds}\
         \x20   default_backend web\n\
         \n\
         backend web\n\
         \x20   balance roundrobin\n\
         {servers}"
    )
}

/// Name of the nftables table the bench adds (and deletes) in the lb.
pub const NFT_TABLE: &str = "xlb_bench";

/// nftables DNAT spreading new connections to `vip` over `backends` at
/// random (conntrack keeps each connection on its backend and reverses the
/// translation for replies, which the backends route through the lb).
pub fn nftables(vip: SocketAddrV4, backends: &[SocketAddrV4]) -> String {
    let map: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {} . {}", b.ip(), b.port()))
        .collect();
    format!(
        "# nftables DNAT load balancing for the xlb bench. Load in the lab's lb namespace:\n\
         #   nft -f nftables.nft   (remove with: nft delete table ip {NFT_TABLE})\n\
         table ip {NFT_TABLE} {{\n\
         \x20   chain prerouting {{\n\
         \x20       type nat hook prerouting priority dstnat; policy accept;\n\
         \x20       ip daddr {} tcp dport {} dnat ip addr . port to numgen random mod {} map {{ {} }}\n\
         \x20   }}\n\
         }}\n",
        vip.ip(),
        vip.port(),
        backends.len(),
        map.join(", ")
    )
}

/// xlb's configuration for the lab's VIP in `mode` (`nat`: with `snat`).
pub fn xlb(
    vip: SocketAddrV4,
    snat: std::net::Ipv4Addr,
    backends: &[SocketAddrV4],
    mode: &str,
) -> String {
    let mut text = format!(
        "# xlb for the xlb bench, attached to eth0 of the lab's lb namespace:\n\
         #   xlb run --iface eth0 --config <this file>\n\
         interfaces = [\"eth0\"]\n\
         \n\
         [[service]]\n\
         name = \"web\"\n\
         vip = \"{}\"\n\
         port = {}\n\
         mode = \"{mode}\"\n",
        vip.ip(),
        vip.port()
    );
    if mode == "nat" {
        text += &format!("snat = \"{snat}\"\n");
    }
    for b in backends {
        text += &format!("\n[[service.backend]]\naddress = \"{b}\"\n");
    }
    text
}

/// Flow-table entries of xlb in the SYN-flood scenario, as in issue 12's
/// lab.
pub const FLOOD_TABLE_SIZE: u32 = 16_384;

/// [`xlb`] with a flow table of [`FLOOD_TABLE_SIZE`] entries.
pub fn xlb_flood(
    vip: SocketAddrV4,
    snat: std::net::Ipv4Addr,
    backends: &[SocketAddrV4],
    mode: &str,
) -> String {
    xlb(vip, snat, backends, mode).replacen(
        "\n[[service]]",
        &format!("\n[flows]\ntable_size = {FLOOD_TABLE_SIZE}\n\n[[service]]"),
        1,
    )
}
