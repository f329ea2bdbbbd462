//! A load balancer's pinned maps, checked before a daemon reuses them.
//!
//! Maps outlive the daemon (pinned under `<bpffs>/<id>/`) so that flows outlive it too. A
//! daemon that finds them (after a crash, a restart, or taking over from a running daemon for
//! an upgrade) reuses them only if they are exactly what this build's schema table says
//! (`lb_common::schema::MAPS`, from which the daemon creates them): map type, key and value
//! sizes, flags and, where the configuration does not size them, capacity, as the kernel
//! reports them, and the schema version and layout fingerprint that the creating daemon wrote
//! into the pinned `SCHEMA` map. A mismatch is refused before anything is loaded, naming the
//! map and the difference; the running data path is left as it is. Maps sized from the
//! members and pools may be of any size (a reload that needs more grows them).

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData, MapError, MapInfo};
use lb_common::schema::{self, SchemaEntry, SCHEMA_ENTRIES};

/// The name of the map that records the others' schema.
pub const SCHEMA_MAP: &str = "SCHEMA";

/// A map as this build makes it, or as the kernel reports a pinned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDesc {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapDesc {
    /// Whether the configuration sizes it (a pinned one of another size is reused, and grown
    /// when too small).
    pub fn resizable(&self) -> bool {
        schema::find(&self.name)
            .is_some_and(|m| matches!(m.entries, schema::Entries::Members | schema::Entries::Pools))
    }
}

/// Why pinned maps cannot be reused.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pinned map {path}: {field} is {pinned}, this lb needs {wanted}{hint}")]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        pinned: String,
        wanted: String,
        hint: Hint,
    },
    #[error(
        "pinned maps under {dir} carry no {SCHEMA_MAP} map: they were made by an lb that \
         predates schema checks, so their layout cannot be trusted; stop that lb with SIGTERM \
         (it removes them, and drops every flow) and start this one"
    )]
    NoSchema { dir: PathBuf },
    #[error("cannot read pinned map {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

/// What an operator can do about a mismatch, appended to its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    None,
    /// CONNTRACK's capacity follows `daemon.conntrack_flows`.
    ConntrackFlows {
        pinned_flows: u32,
    },
    /// A different build of lb laid the map out differently.
    Layout,
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hint::None => Ok(()),
            Hint::ConntrackFlows { pinned_flows } => write!(
                f,
                " (conntrack_flows): a pinned table cannot be resized under live flows; \
                 keep conntrack_flows = {pinned_flows} for this takeover, or stop lb with \
                 SIGTERM (it tears down and drops every flow) and start it with the new value"
            ),
            Hint::Layout => write!(
                f,
                " (the lb that made it lays it out differently): this binary cannot take these \
                 flows over; keep running the one that made them, or stop it with SIGTERM \
                 (drops every flow) and start this one"
            ),
        }
    }
}

type Result<T, E = PinError> = std::result::Result<T, E>;

/// The maps a load balancer sized by `sizing` has, as this build makes them.
pub fn declared(sizing: &super::Sizing) -> Vec<MapDesc> {
    let mut out: Vec<MapDesc> = schema::MAPS
        .iter()
        .filter(|m| sizing.has(m.has))
        .map(|m| MapDesc {
            name: m.name.into(),
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: sizing.entries(m),
            flags: m.flags,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The schema entry this build writes for `map`.
fn entry_for(map: &MapDesc) -> Option<SchemaEntry> {
    schema::find(&map.name).map(|s| s.entry(map.key_size, map.value_size))
}

/// Compares one pinned map with its declaration and its recorded schema with this build's.
pub fn compare(
    path: &Path,
    declared: &MapDesc,
    pinned: &MapDesc,
    recorded: Option<&SchemaEntry>,
) -> Result<()> {
    let mismatch = |field, pinned: String, wanted: String, hint| PinError::Mismatch {
        path: path.into(),
        field,
        pinned,
        wanted,
        hint,
    };
    if let Some(want) = entry_for(declared) {
        let Some(got) = recorded else {
            return Err(mismatch(
                "schema",
                "not recorded".into(),
                format!("version {}", want.version),
                Hint::Layout,
            ));
        };
        if got.version != want.version {
            return Err(mismatch(
                "schema version",
                got.version.to_string(),
                want.version.to_string(),
                Hint::Layout,
            ));
        }
        if got.layout != want.layout {
            return Err(mismatch(
                "layout",
                format!("{:#010x}", got.layout),
                format!("{:#010x} at the same version", want.layout),
                Hint::Layout,
            ));
        }
    }
    let max_entries = if declared.resizable() {
        pinned.max_entries
    } else {
        declared.max_entries
    };
    let fields: [(&'static str, u32, u32); 5] = [
        ("map type", pinned.map_type, declared.map_type),
        ("key size", pinned.key_size, declared.key_size),
        ("value size", pinned.value_size, declared.value_size),
        ("max_entries", pinned.max_entries, max_entries),
        ("flags", pinned.flags, declared.flags),
    ];
    for (field, got, want) in fields {
        if got != want {
            let hint = match (declared.name.as_str(), field) {
                ("CONNTRACK" | "CONNTRACK6", "max_entries") => Hint::ConntrackFlows {
                    pinned_flows: got / 2,
                },
                _ => Hint::Layout,
            };
            return Err(mismatch(field, got.to_string(), want.to_string(), hint));
        }
    }
    Ok(())
}

fn describe(path: &Path, name: &str) -> Result<MapDesc> {
    let read = |source| PinError::Read {
        path: path.into(),
        source,
    };
    let info = MapInfo::from_pin(path).map_err(read)?;
    Ok(MapDesc {
        name: name.into(),
        map_type: info.map_type().map_err(read)? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// What a pin directory holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No pinned map: everything will be created.
    Nothing,
    /// Every pinned map matches; `missing` ones (new in this build) will be created empty.
    Reusable { missing: Vec<String> },
}

/// Checks the maps pinned in `dir` against `declared` without changing anything.
pub fn check(dir: &Path, declared: &[MapDesc]) -> Result<Found> {
    let present: Vec<&MapDesc> = declared
        .iter()
        .filter(|m| m.name != SCHEMA_MAP && dir.join(&m.name).exists())
        .collect();
    if present.is_empty() {
        return Ok(Found::Nothing);
    }
    let schema_path = dir.join(SCHEMA_MAP);
    if !schema_path.exists() {
        return Err(PinError::NoSchema { dir: dir.into() });
    }
    let recorded = read_schema(&schema_path)?;
    for m in &present {
        let path = dir.join(&m.name);
        let pinned = describe(&path, &m.name)?;
        compare(&path, m, &pinned, recorded.get(&m.name))?;
    }
    let missing = declared
        .iter()
        .filter(|m| m.name != SCHEMA_MAP && !dir.join(&m.name).exists())
        .map(|m| m.name.clone())
        .collect();
    Ok(Found::Reusable { missing })
}

fn read_schema(path: &Path) -> Result<HashMap<String, SchemaEntry>> {
    let read = |source| PinError::Read {
        path: path.into(),
        source,
    };
    let data = MapData::from_pin(path).map_err(read)?;
    let map: Array<MapData, SchemaEntry> =
        Array::try_from(aya::maps::Map::Array(data)).map_err(read)?;
    let mut out = HashMap::new();
    for e in map.iter().filter_map(|r| r.ok()) {
        if e.name[0] != 0 {
            out.insert(e.name().to_string(), e);
        }
    }
    Ok(out)
}

/// Creates and pins `dir/SCHEMA`, recording every declared map, before the loader creates the
/// others: a crash in between leaves maps that are recorded, never maps that are not. If it
/// exists already (maps reused), entries for maps this build adds are recorded.
pub fn record(dir: &Path, declared: &[MapDesc]) -> Result<()> {
    let path = dir.join(SCHEMA_MAP);
    let create = |source| PinError::Create {
        path: path.clone(),
        source,
    };
    let mut map: Array<MapData, SchemaEntry> = if path.exists() {
        let data = MapData::from_pin(&path).map_err(create)?;
        Array::try_from(aya::maps::Map::Array(data)).map_err(create)?
    } else {
        let map = Array::<MapData, SchemaEntry>::create(SCHEMA_ENTRIES, 0).map_err(create)?;
        map.pin(&path)
            .map_err(|error| create(MapError::PinError { name: None, error }))?;
        let data = MapData::from_pin(&path).map_err(create)?;
        Array::try_from(aya::maps::Map::Array(data)).map_err(create)?
    };
    let mut entries: Vec<SchemaEntry> = map.iter().filter_map(|r| r.ok()).collect();
    for m in declared.iter().filter(|m| m.name != SCHEMA_MAP) {
        let Some(e) = entry_for(m) else { continue };
        if entries.iter().any(|x| x.name() == m.name) {
            continue;
        }
        let Some(slot) = entries.iter().position(|x| x.name[0] == 0) else {
            break;
        };
        map.set(slot as u32, e, 0).map_err(create)?;
        entries[slot] = e;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conntrack(max_entries: u32) -> MapDesc {
        MapDesc {
            name: "CONNTRACK".into(),
            map_type: 1,
            key_size: 16,
            value_size: 72,
            max_entries,
            flags: 1,
        }
    }

    fn recorded() -> SchemaEntry {
        schema::find("CONNTRACK").unwrap().entry(16, 72)
    }

    /// Every outer map of the object has a schema entry read by the data path, and every
    /// such entry an outer map.
    #[test]
    fn the_object_and_the_schema_name_the_same_maps() {
        let obj = aya_obj::Object::parse(crate::dataplane::BPF_OBJECT).unwrap();
        let mut names: Vec<&str> = obj
            .maps
            .keys()
            .filter_map(|n| n.strip_prefix("OF_"))
            .collect();
        let mut schema: Vec<&str> = schema::MAPS
            .iter()
            .filter(|m| m.data_path)
            .map(|m| m.name)
            .collect();
        names.sort();
        schema.sort();
        assert_eq!(names, schema);
    }

    #[test]
    fn identical_maps_are_reused() {
        let p = Path::new("/sys/fs/bpf/lb/x/CONNTRACK");
        assert!(compare(p, &conntrack(8), &conntrack(8), Some(&recorded())).is_ok());
    }

    #[test]
    fn conntrack_capacity_names_the_setting_and_what_to_do() {
        let p = Path::new("/sys/fs/bpf/lb/x/CONNTRACK");
        let e = compare(p, &conntrack(16384), &conntrack(8192), Some(&recorded())).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("pinned map /sys/fs/bpf/lb/x/CONNTRACK: max_entries is 8192, this lb needs 16384 (conntrack_flows)"), "{msg}");
        assert!(msg.contains("keep conntrack_flows = 4096"), "{msg}");
    }

    #[test]
    fn every_difference_is_named() {
        let p = Path::new("/p/CONNTRACK");
        let want = conntrack(8);
        type Change = fn(&mut MapDesc);
        let cases: [(&str, Change); 4] = [
            ("map type", |m| m.map_type = 9),
            ("key size", |m| m.key_size = 20),
            ("value size", |m| m.value_size = 80),
            ("flags", |m| m.flags = 0),
        ];
        for (field, change) in cases {
            let mut got = want.clone();
            change(&mut got);
            let e = compare(p, &want, &got, Some(&recorded())).unwrap_err();
            assert!(
                matches!(&e, PinError::Mismatch { field: f, .. } if *f == field),
                "{e}"
            );
        }
    }

    #[test]
    fn schema_version_and_layout_are_checked() {
        let p = Path::new("/p/CONNTRACK");
        let mut old = recorded();
        old.version = 0;
        let e = compare(p, &conntrack(8), &conntrack(8), Some(&old)).unwrap_err();
        let needs = lb_common::schema::find("CONNTRACK").unwrap().version;
        assert_eq!(
            e.to_string().split(" (").next().unwrap(),
            format!("pinned map /p/CONNTRACK: schema version is 0, this lb needs {needs}")
        );
        let mut moved = recorded();
        moved.layout ^= 1;
        let e = compare(p, &conntrack(8), &conntrack(8), Some(&moved)).unwrap_err();
        assert!(e.to_string().contains(": layout is 0x"), "{e}");
        let e = compare(p, &conntrack(8), &conntrack(8), None).unwrap_err();
        assert!(e.to_string().contains("schema is not recorded"), "{e}");
    }
}
