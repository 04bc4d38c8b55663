//! The `ipam` section of host-local, read and validated with the reference's rules
//! (`backend/allocator/config.go`, `range.go`, `range_set.go` of containernetworking/plugins),
//! with errors that name the offending field.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use cni::teardown::Lenient;
use cni::version::Version;
use cni::{Error, Result, Route};
use ipnet::IpNet;
use serde::Deserialize;

/// Where leases live unless `ipam.dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// One range of a range set, with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The network; its address has no host bits.
    pub subnet: IpNet,
    /// First address handed out (inclusive); default: network + 1.
    pub range_start: IpAddr,
    /// Last address handed out (inclusive); default: broadcast - 1 (IPv4), last address (IPv6).
    pub range_end: IpAddr,
    /// Reported in the result and never handed out; default: network + 1.
    pub gateway: IpAddr,
}

/// A set of ranges of one family, from which one address is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
    /// Where the set came from, for messages: `ipam.ranges[1]`, `ipam` (the flat keys) or
    /// `runtimeConfig.ipRanges[0]`.
    pub origin: String,
}

/// A requested (static) address and the key it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub ip: IpAddr,
    pub source: String,
}

/// The validated configuration of one call.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    /// The network name: the lease store's directory under `data_dir`.
    pub name: String,
    pub cni_version: String,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    /// From `CNI_ARGS` `IP=`, then `args.cni.ips`, then `runtimeConfig.ips`.
    pub requested: Vec<Requested>,
    /// `ipam.store`: the etcd store; `None`: the on-disk store in `data_dir`.
    pub etcd: Option<crate::etcd::EtcdConfig>,
    /// `releaseOnReboot` (ours; default true): on the first call after a reboot, release the
    /// leases written in an earlier boot.
    pub release_on_reboot: bool,
}

#[derive(Debug, Default, Deserialize)]
struct RawRange {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(rename = "rangeStart", default)]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd", default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

/// The `ipam` section; the flat range keys are the reference's embedded `*Range`.
#[derive(Debug, Default, Deserialize)]
struct RawIpam {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(rename = "rangeStart", default)]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd", default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(rename = "dataDir", default)]
    data_dir: Option<String>,
    #[serde(rename = "resolvConf", default)]
    resolv_conf: Option<String>,
    #[serde(default)]
    ranges: Option<Vec<Vec<RawRange>>>,
    #[serde(default)]
    store: Option<serde_json::Value>,
    #[serde(rename = "releaseOnReboot", default)]
    release_on_reboot: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRuntime {
    #[serde(rename = "ipRanges", default)]
    ip_ranges: Option<Vec<Vec<RawRange>>>,
    #[serde(default)]
    ips: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawCniArgs {
    #[serde(default)]
    ips: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawArgs {
    #[serde(default)]
    cni: Option<RawCniArgs>,
}

#[derive(Debug, Default, Deserialize)]
struct RawNet {
    #[serde(default)]
    name: String,
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    ipam: Option<RawIpam>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Option<RawRuntime>,
    #[serde(default)]
    args: Option<RawArgs>,
}

fn invalid(msg: String) -> Error {
    Error::invalid_config(msg)
}

/// An address as a number, and back.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

/// A plain address (`10.1.0.5`, `fd00::5`); IPv4-mapped IPv6 becomes IPv4, as Go's `To4`.
fn parse_plain_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// An address with or without a prefix length (`10.1.0.5` or `10.1.0.5/24`), as the
/// reference's `ip.ParseIP` of requested addresses.
pub fn parse_requested_ip(s: &str) -> Option<IpAddr> {
    parse_plain_ip(s).or_else(|| s.trim().parse::<IpNet>().ok().map(|n| n.addr().to_canonical()))
}

impl Range {
    /// Whether `ip` lies in the subnet and between rangeStart and rangeEnd.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.subnet.addr().is_ipv4() || !self.subnet.contains(&ip) {
            return false;
        }
        let v = to_u128(ip);
        v >= to_u128(self.range_start) && v <= to_u128(self.range_end)
    }

    /// Whether the two ranges share an address (the reference's `Overlaps`).
    pub fn overlaps(&self, other: &Range) -> bool {
        if self.range_start.is_ipv4() != other.range_start.is_ipv4() {
            return false;
        }
        self.contains(other.range_start)
            || self.contains(other.range_end)
            || other.contains(self.range_start)
            || other.contains(self.range_end)
    }

    /// Addresses never handed out: the network address, the IPv4 broadcast and the gateway.
    pub fn is_reserved_address(&self, ip: IpAddr) -> bool {
        ip == self.gateway || ip == self.subnet.network() || (ip.is_ipv4() && ip == self.subnet.broadcast())
    }

    /// Number of addresses between rangeStart and rangeEnd (saturating at `u128::MAX`).
    pub fn size(&self) -> u128 {
        (to_u128(self.range_end) - to_u128(self.range_start)).saturating_add(1)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

impl RangeSet {
    /// The range holding `ip`, if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges[0].range_start.is_ipv4()
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.ranges.iter().any(|a| other.ranges.iter().any(|b| a.overlaps(b)))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Fills in the defaults of one range and checks it (`field` names it in messages, e.g.
/// `ipam.ranges[0][1]`).
fn canonicalize_range(raw: &RawRange, field: &str) -> Result<Range> {
    let s = raw.subnet.as_deref().unwrap_or("");
    if s.trim().is_empty() {
        return Err(invalid(format!("{field}.subnet is missing")));
    }
    let given: IpNet = s.trim().parse().map_err(|_| {
        invalid(format!(
            "{field}.subnet \"{}\" is not a valid CIDR (address/prefix length)",
            s.escape_debug()
        ))
    })?;
    let (ones, bits) = (given.prefix_len(), given.max_prefix_len());
    if ones > bits - 2 {
        return Err(invalid(format!("{field}.subnet {given} is too small to allocate from")));
    }
    let subnet = given.trunc();
    if given.addr() != subnet.addr() {
        return Err(invalid(format!(
            "{field}.subnet {given} has host bits set: for a prefix length of {ones} the network address is {}",
            subnet.addr()
        )));
    }
    let v4 = subnet.addr().is_ipv4();
    let net = to_u128(subnet.network());
    let last = to_u128(subnet.broadcast());
    let in_subnet = |ip: IpAddr| ip.is_ipv4() == v4 && subnet.contains(&ip);
    let parse = |key: &str, v: &Option<String>| -> Result<Option<IpAddr>> {
        match v.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(t) => parse_plain_ip(t)
                .map(Some)
                .ok_or_else(|| invalid(format!("{field}.{key} \"{}\" is not an IP address", t.escape_debug()))),
        }
    };

    let gateway = match parse("gateway", &raw.gateway)? {
        // Outside the subnet is allowed, as in the reference (on-link gateways); not another family.
        Some(g) if g.is_ipv4() != v4 => {
            return Err(invalid(format!(
                "{field}.gateway {g} is not of the family of subnet {subnet}"
            )))
        }
        Some(g) => g,
        None => from_u128(net + 1, v4),
    };
    let range_start = match parse("rangeStart", &raw.range_start)? {
        Some(ip) if !in_subnet(ip) => {
            return Err(invalid(format!("{field}.rangeStart {ip} is outside subnet {subnet}")))
        }
        Some(ip) => ip,
        None => from_u128(net + 1, v4),
    };
    let range_end = match parse("rangeEnd", &raw.range_end)? {
        Some(ip) if !in_subnet(ip) => return Err(invalid(format!("{field}.rangeEnd {ip} is outside subnet {subnet}"))),
        Some(ip) if to_u128(ip) < to_u128(range_start) => {
            return Err(invalid(format!(
                "{field}.rangeEnd {ip} is before rangeStart {range_start}"
            )))
        }
        Some(ip) => ip,
        None => from_u128(if v4 { last - 1 } else { last }, v4),
    };
    if to_u128(range_end) < to_u128(range_start) {
        return Err(invalid(format!(
            "{field}.rangeStart {range_start} is after the last address of subnet {subnet} ({range_end})"
        )));
    }
    Ok(Range {
        subnet,
        range_start,
        range_end,
        gateway,
    })
}

/// Checks one range set: not empty, one family, no overlap inside.
fn canonicalize_set(raw: &[RawRange], origin: String, flat: bool) -> Result<RangeSet> {
    if raw.is_empty() {
        return Err(invalid(format!("{origin} is an empty range set")));
    }
    let field = |j: usize| {
        if flat {
            origin.clone()
        } else {
            format!("{origin}[{j}]")
        }
    };
    let mut ranges: Vec<Range> = Vec::with_capacity(raw.len());
    for (j, r) in raw.iter().enumerate() {
        let r = canonicalize_range(r, &field(j))?;
        if let Some(first) = ranges.first() {
            if first.range_start.is_ipv4() != r.range_start.is_ipv4() {
                return Err(invalid(format!(
                    "{}.subnet {} mixes address families with {}.subnet {}: a range set holds one family",
                    field(j),
                    r.subnet,
                    field(0),
                    first.subnet
                )));
            }
        }
        ranges.push(r);
    }
    for i in 0..ranges.len() {
        for j in i + 1..ranges.len() {
            if ranges[i].overlaps(&ranges[j]) {
                return Err(invalid(format!(
                    "{} ({}) overlaps {} ({})",
                    field(i),
                    ranges[i],
                    field(j),
                    ranges[j]
                )));
            }
        }
    }
    Ok(RangeSet { ranges, origin })
}

/// `CNI_ARGS` as the reference's `types.LoadArgs` into `{IgnoreUnknown, IP}` reads it
/// ([`cni::env::load_args`]). `IP` may hold several addresses separated by commas (an
/// extension: the reference takes one).
fn parse_env_ips(args: &str) -> Result<Vec<Requested>> {
    let mut out = Vec::new();
    for (_, v) in cni::env::load_args(args, &["IP"])? {
        for s in v.split(',').filter(|s| !s.trim().is_empty()) {
            let ip = parse_requested_ip(s).ok_or_else(|| {
                Error::invalid_env(format!("CNI_ARGS: IP \"{}\" is not an IP address", s.escape_debug()))
            })?;
            out.push(Requested {
                ip,
                source: "CNI_ARGS IP".into(),
            });
        }
    }
    Ok(out)
}

fn parse_ip_list(list: &Option<Vec<String>>, field: &str) -> Result<Vec<Requested>> {
    let mut out = Vec::new();
    for (i, s) in list.iter().flatten().enumerate() {
        let ip = parse_requested_ip(s)
            .ok_or_else(|| invalid(format!("{field}[{i}] \"{}\" is not an IP address", s.escape_debug())))?;
        out.push(Requested {
            ip,
            source: format!("{field}[{i}]"),
        });
    }
    Ok(out)
}

/// The range sets, checked one by one: as the reference, runtime ranges first, then the flat
/// (old-style) range, then `ranges`. The index of a set in this list names its
/// last_reserved_ip file.
fn range_sets(
    runtime: Option<&[Vec<RawRange>]>,
    flat: &RawRange,
    ranges: Option<&[Vec<RawRange>]>,
) -> Result<Vec<RangeSet>> {
    let mut range_sets = Vec::new();
    for (i, set) in runtime.into_iter().flatten().enumerate() {
        range_sets.push(canonicalize_set(set, format!("runtimeConfig.ipRanges[{i}]"), false)?);
    }
    if flat.subnet.as_deref().is_some_and(|s| !s.is_empty()) {
        range_sets.push(canonicalize_set(std::slice::from_ref(flat), "ipam".into(), true)?);
    }
    for (i, set) in ranges.into_iter().flatten().enumerate() {
        range_sets.push(canonicalize_set(set, format!("ipam.ranges[{i}]"), false)?);
    }
    if range_sets.is_empty() {
        return Err(invalid(
            "no IP ranges specified: set ipam.ranges (or ipam.subnet)".into(),
        ));
    }
    Ok(range_sets)
}

/// The `ipam` section as DEL and GC read it ([`IpamConfig::load_for_teardown`]): every key
/// lenient.
#[derive(Debug, Default, Deserialize)]
struct TeardownIpam {
    #[serde(default)]
    subnet: Lenient<Option<String>>,
    #[serde(rename = "rangeStart", default)]
    range_start: Lenient<Option<String>>,
    #[serde(rename = "rangeEnd", default)]
    range_end: Lenient<Option<String>>,
    #[serde(default)]
    gateway: Lenient<Option<String>>,
    #[serde(default)]
    ranges: Lenient<Option<Vec<Vec<RawRange>>>>,
    #[serde(rename = "dataDir", default)]
    data_dir: Lenient<Option<String>>,
    #[serde(default)]
    store: Lenient<Option<serde_json::Value>>,
    #[serde(rename = "releaseOnReboot", default)]
    release_on_reboot: Lenient<Option<bool>>,
}

#[derive(Debug, Default, Deserialize)]
struct TeardownRuntime {
    #[serde(rename = "ipRanges", default)]
    ip_ranges: Lenient<Option<Vec<Vec<RawRange>>>>,
}

#[derive(Debug, Default, Deserialize)]
struct TeardownNet {
    #[serde(default)]
    name: Lenient<String>,
    #[serde(rename = "cniVersion", default)]
    cni_version: Lenient<String>,
    #[serde(default)]
    ipam: Lenient<Option<TeardownIpam>>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Lenient<Option<TeardownRuntime>>,
}

impl IpamConfig {
    /// Reads the config on stdin as DEL and GC need it: only the network name, the store
    /// (`ipam.dataDir`, or `ipam.store`), `releaseOnReboot` and the number of range sets.
    /// Any other key (`routes`, `resolvConf`, requested addresses, gateways, `CNI_ARGS`) is not
    /// read, and the range sets only leniently, so that a config that went bad since the ADD
    /// still releases its lease. `range_sets` holds the range sets when they all read and
    /// check, else nothing (DEL then makes two passes: new-format leases, then old-format
    /// ones). A `releaseOnReboot` that does not read counts as false: a teardown never releases
    /// others' leases on the strength of a value it cannot read. The name and the store must
    /// read: code 6 or 7 naming the key otherwise.
    pub fn load_for_teardown(stdin: &[u8]) -> Result<IpamConfig> {
        let n: TeardownNet = cni::types::decode(stdin)?;
        let name = n.name.required("name")?.unwrap_or_default();
        if name.is_empty() {
            return Err(invalid(
                "missing network name (key \"name\"): host-local keeps its leases in a directory named after it".into(),
            ));
        }
        cni::env::check_network_name(&name)?;
        let Some(ipam) = n.ipam.required("ipam")?.flatten() else {
            return Err(invalid("IPAM config missing 'ipam' key".into()));
        };
        let data_dir = match ipam.data_dir.required("ipam.dataDir")?.flatten().as_deref() {
            None | Some("") => PathBuf::from(DEFAULT_DATA_DIR),
            Some(d) => PathBuf::from(d),
        };
        let etcd = match ipam.store.required("ipam.store")?.flatten() {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => crate::etcd::EtcdConfig::from_json(&v)?,
        };
        let range_sets = (|| {
            let runtime = n.runtime_config.value().ok()?.flatten().unwrap_or_default();
            let flat = RawRange {
                subnet: ipam.subnet.value().ok()?.flatten(),
                range_start: ipam.range_start.value().ok()?.flatten(),
                range_end: ipam.range_end.value().ok()?.flatten(),
                gateway: ipam.gateway.value().ok()?.flatten(),
            };
            let ip_ranges = runtime.ip_ranges.value().ok()?.flatten();
            let ranges = ipam.ranges.value().ok()?.flatten();
            range_sets(ip_ranges.as_deref(), &flat, ranges.as_deref()).ok()
        })()
        .unwrap_or_default();
        let release_on_reboot = match ipam.release_on_reboot {
            Lenient::Absent => true,
            Lenient::Ok(v) => v.unwrap_or(true),
            Lenient::Bad(_) => false,
        };
        Ok(IpamConfig {
            name,
            cni_version: n.cni_version.ok().unwrap_or_default(),
            range_sets,
            routes: Vec::new(),
            data_dir,
            resolv_conf: None,
            requested: Vec::new(),
            etcd,
            release_on_reboot,
        })
    }

    /// Reads the config on stdin and `CNI_ARGS` as the reference's `LoadIPAMConfig`.
    pub fn load(stdin: &[u8], env_args: &str) -> Result<IpamConfig> {
        let n: RawNet = cni::types::decode(stdin)?;
        if n.name.is_empty() {
            return Err(invalid(
                "missing network name (key \"name\"): host-local keeps its leases in a directory named after it".into(),
            ));
        }
        cni::env::check_network_name(&n.name)?;
        let Some(ipam) = n.ipam else {
            return Err(invalid("IPAM config missing 'ipam' key".into()));
        };

        let mut requested = parse_env_ips(env_args)?;
        let cni_ips = n.args.as_ref().and_then(|a| a.cni.as_ref()).map(|c| &c.ips);
        if let Some(ips) = cni_ips {
            requested.extend(parse_ip_list(ips, "args.cni.ips")?);
        }
        let runtime = n.runtime_config.unwrap_or_default();
        requested.extend(parse_ip_list(&runtime.ips, "runtimeConfig.ips")?);

        let flat = RawRange {
            subnet: ipam.subnet,
            range_start: ipam.range_start,
            range_end: ipam.range_end,
            gateway: ipam.gateway,
        };
        let range_sets = range_sets(runtime.ip_ranges.as_deref(), &flat, ipam.ranges.as_deref())?;

        // CNI 0.2.0 and earlier results hold one address per family.
        let v4 = range_sets.iter().filter(|s| s.is_ipv4()).count();
        let v6 = range_sets.len() - v4;
        if v4 > 1 || v6 > 1 {
            let new_enough = Version::parse(&n.cni_version).is_some_and(|v| v.at_least("0.3.0"));
            if !new_enough {
                return Err(invalid(format!(
                    "CNI version \"{}\" does not support more than 1 address per family",
                    n.cni_version
                )));
            }
        }
        for i in 0..range_sets.len() {
            for j in i + 1..range_sets.len() {
                if range_sets[i].overlaps(&range_sets[j]) {
                    return Err(invalid(format!(
                        "range set {i} ({}: {}) overlaps with range set {j} ({}: {})",
                        range_sets[i].origin, range_sets[i], range_sets[j].origin, range_sets[j]
                    )));
                }
            }
        }

        let data_dir = match ipam.data_dir.as_deref() {
            None | Some("") => PathBuf::from(DEFAULT_DATA_DIR),
            Some(d) => PathBuf::from(d),
        };
        let etcd = match &ipam.store {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => crate::etcd::EtcdConfig::from_json(v)?,
        };
        Ok(IpamConfig {
            name: n.name,
            cni_version: n.cni_version,
            range_sets,
            routes: ipam.routes.unwrap_or_default(),
            data_dir,
            resolv_conf: ipam.resolv_conf.filter(|s| !s.is_empty()).map(PathBuf::from),
            requested,
            etcd,
            release_on_reboot: ipam.release_on_reboot.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(v: serde_json::Value) -> Result<IpamConfig> {
        IpamConfig::load(v.to_string().as_bytes(), "")
    }

    fn err(v: serde_json::Value) -> String {
        let e = load(v).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        e.to_string()
    }

    fn net(ipam: serde_json::Value) -> serde_json::Value {
        json!({"cniVersion": "1.0.0", "name": "n", "ipam": ipam})
    }

    #[test]
    fn defaults_v4_and_v6() {
        let c = load(net(
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}]]}),
        ))
        .unwrap();
        let r = &c.range_sets[0].ranges[0];
        assert_eq!(r.range_start.to_string(), "10.1.0.1");
        assert_eq!(r.range_end.to_string(), "10.1.0.254");
        assert_eq!(r.gateway.to_string(), "10.1.0.1");
        let r6 = &c.range_sets[1].ranges[0];
        assert_eq!(r6.range_start.to_string(), "fd00::1");
        assert_eq!(r6.range_end.to_string(), "fd00::ff");
        assert_eq!(c.range_sets[0].to_string(), "10.1.0.1-10.1.0.254");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn order_runtime_flat_ranges() {
        let v = json!({"cniVersion": "1.0.0", "name": "n",
            "runtimeConfig": {"ipRanges": [[{"subnet": "10.3.0.0/24"}]]},
            "ipam": {"subnet": "10.2.0.0/24", "ranges": [[{"subnet": "10.1.0.0/24"}]]}});
        let c = load(v).unwrap();
        let origins: Vec<_> = c.range_sets.iter().map(|s| s.origin.as_str()).collect();
        assert_eq!(origins, ["runtimeConfig.ipRanges[0]", "ipam", "ipam.ranges[0]"]);
    }

    #[test]
    fn messages_name_the_field() {
        let m = err(net(
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.1.0/24", "rangeStart": "10.2.0.5"}]]}),
        ));
        assert_eq!(m, "ipam.ranges[0][1].rangeStart 10.2.0.5 is outside subnet 10.1.1.0/24");
        let m = err(net(
            json!({"ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.1.5"}]]}),
        ));
        assert!(m.starts_with("ipam.ranges[0][0].rangeEnd 10.1.1.5 is outside"), "{m}");
        let m = err(net(
            json!({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.5"}]]}),
        ));
        assert!(m.contains("rangeEnd 10.1.0.5 is before rangeStart 10.1.0.9"), "{m}");
        let m = err(net(json!({"subnet": "10.1.0.5/24"})));
        assert!(m.starts_with("ipam.subnet 10.1.0.5/24 has host bits set"), "{m}");
        let m = err(net(json!({"subnet": "10.1.0.0/31"})));
        assert!(m.contains("too small"), "{m}");
        let m = err(net(json!({"ranges": [[{"subnet": "bogus"}]]})));
        assert!(m.starts_with("ipam.ranges[0][0].subnet \"bogus\""), "{m}");
        let m = err(net(
            json!({"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "fd00::1"}]]}),
        ));
        assert_eq!(
            m,
            "ipam.ranges[0][0].gateway fd00::1 is not of the family of subnet 10.1.0.0/24"
        );
        let m = err(net(
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}),
        ));
        assert!(m.contains("mixes address families"), "{m}");
        let m = err(net(
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]]}),
        ));
        assert!(
            m.contains("ipam.ranges[0][0] (10.1.0.1-10.1.0.254) overlaps ipam.ranges[0][1]"),
            "{m}"
        );
        let m = err(net(
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/16"}]]}),
        ));
        assert!(m.starts_with("range set 0 (ipam.ranges[0]"), "{m}");
        let m = err(net(json!({"ranges": [[]]})));
        assert_eq!(m, "ipam.ranges[0] is an empty range set");
        let m = err(net(json!({})));
        assert!(m.starts_with("no IP ranges specified"), "{m}");
        let m = err(json!({"cniVersion": "1.0.0", "ipam": {"subnet": "10.1.0.0/24"}}));
        assert!(m.contains("\"name\""), "{m}");
        let m = err(json!({"cniVersion": "1.0.0", "name": "n"}));
        assert!(m.contains("'ipam'"), "{m}");
        let m = err(
            json!({"cniVersion": "0.2.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/24"}]]}}),
        );
        assert!(m.contains("more than 1 address per family"), "{m}");
        let m = err(
            json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"subnet": "10.1.0.0/24"}, "args": {"cni": {"ips": ["nope"]}}}),
        );
        assert_eq!(m, "args.cni.ips[0] \"nope\" is not an IP address");
    }

    #[test]
    fn requested_ips_from_every_source() {
        let v = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"subnet": "10.1.0.0/24"},
            "args": {"cni": {"ips": ["10.1.0.7/24"]}}, "runtimeConfig": {"ips": ["10.1.0.8"]}});
        let c = IpamConfig::load(
            v.to_string().as_bytes(),
            "IgnoreUnknown=1;K8S_POD=x;IP=10.1.0.5,fd00::5",
        )
        .unwrap();
        let ips: Vec<String> = c.requested.iter().map(|r| r.ip.to_string()).collect();
        assert_eq!(ips, ["10.1.0.5", "fd00::5", "10.1.0.7", "10.1.0.8"]);
        let e = IpamConfig::load(v.to_string().as_bytes(), "K8S_POD=x").unwrap_err();
        assert_eq!(e.code(), 4, "{e}");
        let e = IpamConfig::load(v.to_string().as_bytes(), "IP=zz").unwrap_err();
        assert_eq!(e.code(), 4, "{e}");
    }

    #[test]
    fn keys_match_as_in_the_reference() {
        let v = json!({"CNIVersion": "1.0.0", "Name": "n",
            "IPAM": {"Subnet": "10.1.0.0/24", "rangestart": "10.1.0.9", "RANGEEND": "10.1.0.20", "Gateway": "10.1.0.254",
                     "Routes": [{"DST": "0.0.0.0/0", "GW": "10.1.0.254"}], "DataDir": "/tmp/x",
                     "Ranges": [[{"SUBNET": "fd00::/64"}]]},
            "RuntimeConfig": {"IPs": ["10.1.0.10"]}, "Args": {"CNI": {"Ips": ["fd00::7"]}}});
        let c = load(v).unwrap();
        let r = &c.range_sets[0].ranges[0];
        assert_eq!(r.to_string(), "10.1.0.9-10.1.0.20");
        assert_eq!(r.gateway.to_string(), "10.1.0.254");
        assert_eq!(c.range_sets[1].ranges[0].subnet.to_string(), "fd00::/64");
        assert_eq!(c.routes[0].gw.unwrap().to_string(), "10.1.0.254");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let ips: Vec<String> = c.requested.iter().map(|r| r.ip.to_string()).collect();
        assert_eq!(ips, ["fd00::7", "10.1.0.10"]);
        // A mis-cased key is checked as strictly as the exact one.
        let m = err(net(json!({"SUBNET": "10.1.0.5/24"})));
        assert!(m.starts_with("ipam.subnet 10.1.0.5/24 has host bits set"), "{m}");
        let e = load(net(json!({"Ranges": 5}))).unwrap_err();
        assert_eq!(e.code(), 6, "{e}");
        assert!(e.to_string().contains("ipam.ranges"), "{e}");
    }

    fn teardown(v: serde_json::Value) -> Result<IpamConfig> {
        IpamConfig::load_for_teardown(v.to_string().as_bytes())
    }

    #[test]
    fn teardown_reads_only_the_name_the_store_and_the_range_sets() {
        let good = json!({"subnet": "10.1.0.0/24", "dataDir": "/tmp/x"});
        let c = teardown(net(good.clone())).unwrap();
        assert_eq!((c.name.as_str(), c.data_dir.to_str()), ("n", Some("/tmp/x")));
        assert_eq!(c.range_sets.len(), 1);
        assert!(c.release_on_reboot && c.etcd.is_none());
        // Broken in what only ADD reads: still read, with the range sets.
        for broken in [
            json!({"routes": [{"gw": "10.1.0.1"}]}),
            json!({"routes": 5}),
            json!({"resolvConf": 7}),
            json!({"dns": "x"}),
        ] {
            let mut ipam = good.clone();
            set_keys(&mut ipam, broken.clone());
            let c = teardown(net(ipam)).unwrap_or_else(|e| panic!("{broken}: {e}"));
            assert_eq!(
                (c.range_sets.len(), c.data_dir.to_str()),
                (1, Some("/tmp/x")),
                "{broken}"
            );
        }
        let requests = json!({"cniVersion": "1.0.0", "name": "n", "ipam": good,
            "args": {"cni": {"ips": ["nope"]}}, "runtimeConfig": {"ips": [5]}});
        assert_eq!(teardown(requests).unwrap().range_sets.len(), 1);
        // Range sets that do not read or check: none (DEL makes two passes).
        for broken in [
            json!({"subnet": "10.1.0.5/24"}),
            json!({"subnet": 5}),
            json!({"rangeStart": "10.2.0.1"}),
            json!({"gateway": "fd00::1"}),
            json!({"ranges": 5}),
            json!({"ranges": [[{"subnet": "bogus"}]]}),
        ] {
            let mut ipam = good.clone();
            set_keys(&mut ipam, broken.clone());
            let c = teardown(net(ipam)).unwrap_or_else(|e| panic!("{broken}: {e}"));
            assert!(c.range_sets.is_empty(), "{broken}");
            assert_eq!(c.data_dir.to_str(), Some("/tmp/x"), "{broken}");
        }
        let c = teardown(json!({"cniVersion": "1.0.0", "name": "n", "ipam": good, "runtimeConfig": 5})).unwrap();
        assert!(c.range_sets.is_empty());
        // releaseOnReboot: a value that does not read releases nothing.
        let c = teardown(net(json!({"releaseOnReboot": "yes"}))).unwrap();
        assert!(!c.release_on_reboot);
        assert!(
            !teardown(net(json!({"releaseOnReboot": false})))
                .unwrap()
                .release_on_reboot
        );
        assert!(
            teardown(net(json!({"releaseOnReboot": null})))
                .unwrap()
                .release_on_reboot
        );
        assert_eq!(
            teardown(net(json!({}))).unwrap().data_dir,
            PathBuf::from(DEFAULT_DATA_DIR)
        );
    }

    #[test]
    fn teardown_needs_the_name_and_the_store() {
        let e = teardown(json!({"cniVersion": "1.0.0", "ipam": {}})).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        assert!(e.to_string().contains("\"name\""), "{e}");
        let e = teardown(json!({"cniVersion": "1.0.0", "name": "a/b", "ipam": {}})).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        let e = teardown(json!({"cniVersion": "1.0.0", "name": "n"})).unwrap_err();
        assert!(e.to_string().contains("'ipam'"), "{e}");
        let e = teardown(net(json!({"dataDir": 5}))).unwrap_err();
        assert_eq!(e.code(), 6, "{e}");
        assert!(e.to_string().contains("ipam.dataDir"), "{e}");
        let e = teardown(net(json!({"store": {"type": "zookeeper"}}))).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        assert!(e.to_string().contains("ipam.store"), "{e}");
        let e = teardown(json!({"cniVersion": "1.0.0", "name": "n", "ipam": 5})).unwrap_err();
        assert_eq!(e.code(), 6, "{e}");
    }

    /// Whatever ADD takes, a teardown takes and reads alike (the invariant of the fuzz target
    /// `config_host_local`, here on its seeds and on the conf-examples).
    #[test]
    fn teardown_agrees_with_load() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for dir in ["fuzz/seeds/config_host_local", "conf-examples"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
                let bytes = std::fs::read(e.path()).unwrap();
                // A conflist's plugins, each as the runtime passes it.
                match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(v) if v["plugins"].is_array() => {
                        for p in v["plugins"].as_array().unwrap() {
                            let mut p = p.clone();
                            p["name"] = v["name"].clone();
                            p["cniVersion"] = v["cniVersion"].clone();
                            inputs.push(p.to_string().into_bytes());
                        }
                    }
                    _ => inputs.push(bytes),
                }
            }
        }
        let mut loaded = 0;
        for bytes in &inputs {
            let Ok(c) = IpamConfig::load(bytes, "") else { continue };
            loaded += 1;
            let t = IpamConfig::load_for_teardown(bytes).unwrap();
            assert_eq!((&t.name, &t.data_dir, &t.etcd), (&c.name, &c.data_dir, &c.etcd));
            assert_eq!(t.range_sets, c.range_sets);
            assert_eq!(t.release_on_reboot, c.release_on_reboot);
        }
        assert!(loaded >= 5, "{loaded} of {} inputs loaded", inputs.len());
    }

    /// Merges object `extra` into object `base`, key by key (one level).
    fn set_keys(base: &mut serde_json::Value, extra: serde_json::Value) {
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
    }

    /// Every integer key of the `ipam` section (the route attributes): a number the attribute
    /// holds is taken exactly; any other is code 7 naming the key and the number as written,
    /// never wrapped. The timeout of the etcd store (seconds, a float) is refused out of its range.
    #[test]
    fn numbers_are_refused_never_wrapped() {
        let conf = |route: &str| {
            format!(
                r#"{{"cniVersion":"1.1.0","name":"n","ipam":{{"subnet":"10.1.0.0/24","routes":[{{"dst":"0.0.0.0/0",{route}}}]}}}}"#
            )
        };
        let out_of_range = [
            "4294968796",
            "99999999999",
            "4294967296",
            "-1",
            "-4294967297",
            "18446744073709551616",
            "99999999999999999999999",
        ];
        for (key, max) in [
            ("mtu", u32::MAX as u64),
            ("advmss", u32::MAX as u64),
            ("priority", u32::MAX as u64),
            ("table", u32::MAX as u64),
            ("scope", u8::MAX as u64),
        ] {
            let above = (max + 1).to_string();
            for lit in out_of_range.iter().copied().chain([above.as_str()]) {
                let c = conf(&format!(r#""{key}":{lit}"#));
                let e = IpamConfig::load(c.as_bytes(), "").unwrap_err();
                assert_eq!(e.code(), 7, "{c}: {e}");
                let m = e.to_string();
                assert!(m.contains(&format!("{lit} (key \"ipam.routes[0].{key}\")")), "{c}: {m}");
            }
            let c = conf(&format!(r#""{key}":{max}"#));
            let r = &IpamConfig::load(c.as_bytes(), "").unwrap().routes[0];
            let got = match key {
                "mtu" => r.mtu,
                "advmss" => r.advmss,
                "priority" => r.priority,
                "table" => r.table,
                _ => r.scope.map(u32::from),
            };
            assert_eq!(got.map(u64::from), Some(max), "{key}");
        }
        let e = IpamConfig::load(conf(r#""MTU":4294968796"#).as_bytes(), "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid mtu 4294968796 (key \"ipam.routes[0].mtu\"): must be an integer between 0 and 4294967295"
        );
        for t in ["4294968796", "99999999999", "0", "-1", "11"] {
            let c = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","ipam":{{"subnet":"10.1.0.0/24","store":{{"type":"etcd","endpoints":["127.0.0.1:2379"],"host":"h","timeout":{t}}}}}}}"#
            );
            let e = IpamConfig::load(c.as_bytes(), "").unwrap_err();
            assert_eq!(e.code(), 7, "{c}: {e}");
            assert!(e.to_string().contains(&format!("ipam.store.timeout {t} ")), "{e}");
        }
    }

    #[test]
    fn wrong_types_are_decode_errors() {
        let e = load(net(json!({"ranges": 5}))).unwrap_err();
        assert_eq!(e.code(), 6, "{e}");
    }
}
