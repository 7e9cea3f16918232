//! The schema map: where v2 keeps each v1 `public` table and RPC function
//! (`schema` or `schema.new_name`), and the pure rewrites it implies for PostgREST
//! paths and `select=` embeds.

pub use crate::config::schema_map::{SchemaMap, Target, identifier};

/// A PostgREST request path, by what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestPath<'a> {
    /// `/rest/v1/<table>`.
    Table(&'a str),
    /// `/rest/v1/rpc/<fn>`.
    Rpc(&'a str),
}

impl<'a> RestPath<'a> {
    /// Parses `/rest/v1/<table>` or `/rest/v1/rpc/<fn>`.
    pub fn parse(path: &'a str) -> Option<RestPath<'a>> {
        let rest = path.strip_prefix("/rest/v1/")?;
        match rest.strip_prefix("rpc/") {
            Some(f) if identifier(f) => Some(RestPath::Rpc(f)),
            Some(_) => None,
            None if identifier(rest) => Some(RestPath::Table(rest)),
            None => None,
        }
    }
}

/// An embed v2 cannot resolve: the two tables live in different schemas there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossSchemaEmbed {
    /// The table the embed hangs from (v1 name) and its v2 schema.
    pub parent: (String, String),
    /// The embedded table (v1 name) and its v2 schema.
    pub child: (String, String),
}

/// One `select=` item that embeds a resource: `[alias:]name[!hint](...)` or `...name(...)`.
struct Embed {
    /// Byte range of the name within the select string.
    name: std::ops::Range<usize>,
    /// Its alias (`alias:name(...)`), which filters on it name instead of the table.
    alias: Option<std::ops::Range<usize>>,
    /// Byte range of the parenthesised body (without the parentheses).
    body: std::ops::Range<usize>,
}

/// Top-level embeds of a select list (whose text is `s[range]`).
fn embeds(s: &str, range: std::ops::Range<usize>) -> Vec<Embed> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut item_start = range.start;
    let mut i = range.start;
    while i < range.end {
        match bytes[i] {
            b'(' => {
                // Find the matching parenthesis.
                let mut depth = 1;
                let mut j = i + 1;
                while j < range.end && depth > 0 {
                    match bytes[j] {
                        b'(' => depth += 1,
                        b')' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                let head = &s[item_start..i];
                let colon = head.rfind(':');
                let head_start = item_start + colon.map_or(0, |p| p + 1);
                let alias = colon.map(|c| {
                    let a = &s[item_start..item_start + c];
                    let trimmed = a.trim_start();
                    item_start + c - trimmed.len()..item_start + c
                });
                let head = &s[head_start..i];
                let lead = head.len() - head.trim_start_matches('.').len();
                let name_end = head_start + head.find('!').unwrap_or(head.len());
                let body = i + 1..j.saturating_sub(1).max(i + 1);
                out.push(Embed { name: head_start + lead..name_end, alias, body });
                i = j;
                continue;
            }
            b',' => item_start = i + 1,
            _ => {}
        }
        i += 1;
    }
    out
}

/// A `select=` with its embedded tables renamed for v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The select to send.
    pub select: String,
    /// Embed paths as filters and modifiers name them (`orders.items`), before and
    /// after: an embed without an alias is named by its table, renamed with it.
    pub paths: Vec<(String, String)>,
}

impl Rewrite {
    /// A query key (`orders.status`, `orders.order`, `a.b.limit`) renamed like the
    /// embed it belongs to, if it belongs to a renamed one.
    pub fn key(&self, key: &str) -> Option<String> {
        self.paths
            .iter()
            .filter(|(old, _)| {
                key.len() > old.len() && key.starts_with(old.as_str()) && key.as_bytes()[old.len()] == b'.'
            })
            .max_by_key(|(old, _)| old.len())
            .map(|(old, new)| format!("{new}{}", &key[old.len()..]))
    }
}

/// Checks every embed of `select` (decoded) under `root` (a v1 table name) and renames
/// embedded tables that v2 renamed. Returns the select to send (`None`: unchanged).
pub fn rewrite_select(map: &SchemaMap, root: &str, select: &str) -> Result<Option<Rewrite>, CrossSchemaEmbed> {
    let mut renames: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let mut paths = Vec::new();
    // (parent table, its select's range, its path before and after renaming)
    let mut stack = vec![(root.to_string(), 0..select.len(), String::new(), String::new())];
    while let Some((parent, range, old_path, new_path)) = stack.pop() {
        let parent_schema = map.schema_of(&parent);
        for e in embeds(select, range) {
            let name = &select[e.name.clone()];
            if name.is_empty() {
                continue;
            }
            let child_schema = map.schema_of(name);
            if child_schema != parent_schema {
                return Err(CrossSchemaEmbed {
                    parent: (parent.clone(), parent_schema),
                    child: (name.to_string(), child_schema),
                });
            }
            let renamed = map.table(name).map(|t| t.name).filter(|n| n != name);
            let (old_seg, new_seg) = match (&e.alias, &renamed) {
                (Some(a), _) => (&select[a.clone()], &select[a.clone()]),
                (None, Some(new)) => (name, new.as_str()),
                (None, None) => (name, name),
            };
            let join = |path: &str, seg: &str| if path.is_empty() { seg.to_string() } else { format!("{path}.{seg}") };
            let (old, new) = (join(&old_path, old_seg), join(&new_path, new_seg));
            if old != new {
                paths.push((old.clone(), new.clone()));
            }
            if let Some(new) = renamed {
                renames.push((e.name.clone(), new));
            }
            stack.push((name.to_string(), e.body, old, new));
        }
    }
    if renames.is_empty() {
        return Ok(None);
    }
    renames.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = select.to_string();
    for (range, name) in renames {
        out.replace_range(range, &name);
    }
    Ok(Some(Rewrite { select: out, paths }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn map() -> SchemaMap {
        let tables: BTreeMap<String, String> = [
            ("profiles", "shared_services"),
            ("settings", "shared_services"),
            ("orders", "marketplace"),
            ("order_items", "marketplace"),
            ("vendor_organizations", "vendors.organizations"),
            ("vendor_api_keys_v2", "vendors.api_keys"),
            ("smart_recall_*", "intelligence"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let rpc = [("search_memories".to_string(), "security_service".to_string())].into_iter().collect();
        SchemaMap::from_entries(&tables, &rpc).unwrap()
    }

    #[test]
    fn lookups() {
        let m = map();
        assert_eq!(m.table("vendor_api_keys_v2"), Some(Target { schema: "vendors".into(), name: "api_keys".into() }));
        assert_eq!(m.table("smart_recall_notes").unwrap().schema, "intelligence");
        assert_eq!(m.table("unknown"), None);
        assert_eq!(m.rpc("search_memories").unwrap().schema, "security_service");
        assert_eq!(RestPath::parse("/rest/v1/orders"), Some(RestPath::Table("orders")));
        assert_eq!(RestPath::parse("/rest/v1/rpc/search_memories"), Some(RestPath::Rpc("search_memories")));
        assert_eq!(RestPath::parse("/rest/v1/"), None);
        assert_eq!(RestPath::parse("/rest/v1/a/b"), None);
    }

    #[test]
    fn bad_entries_are_named() {
        let t = |k: &str, v: &str| [(k.to_string(), v.to_string())].into_iter().collect::<BTreeMap<_, _>>();
        let none = BTreeMap::new();
        assert!(SchemaMap::from_entries(&t("a", "x.y.z"), &none).unwrap_err().starts_with("tables.a"));
        assert!(SchemaMap::from_entries(&t("a", ""), &none).unwrap_err().starts_with("tables.a"));
        assert!(SchemaMap::from_entries(&t("p_*", "s.n"), &none).unwrap_err().starts_with("tables.p_*"));
        assert!(SchemaMap::from_entries(&none, &t("f", "s p")).unwrap_err().starts_with("rpc.f"));
    }

    #[test]
    fn embeds_in_one_schema_pass_and_renames_apply() {
        let m = map();
        assert_eq!(rewrite_select(&m, "orders", "*,order_items(*)"), Ok(None));
        assert_eq!(rewrite_select(&m, "orders", "id,items:order_items!inner(id,qty)"), Ok(None));
        let r = rewrite_select(&m, "vendor_organizations", "id,keys:vendor_api_keys_v2(id),vendor_api_keys_v2!fk(*)");
        assert_eq!(r.unwrap().unwrap().select, "id,keys:api_keys(id),api_keys!fk(*)");
        assert_eq!(rewrite_select(&m, "profiles", "id,name"), Ok(None));
        assert_eq!(rewrite_select(&m, "profiles", "...settings(theme)"), Ok(None));
    }

    #[test]
    fn cross_schema_embeds_are_found_at_any_depth() {
        let m = map();
        let e = rewrite_select(&m, "profiles", "*,orders(*)").unwrap_err();
        assert_eq!(e.parent, ("profiles".to_string(), "shared_services".to_string()));
        assert_eq!(e.child, ("orders".to_string(), "marketplace".to_string()));
        let deep = rewrite_select(&m, "orders", "id,order_items(id,owner:profiles(name))").unwrap_err();
        assert_eq!(deep.parent.0, "order_items");
        assert_eq!(deep.child.0, "profiles");
        // An unmapped table stays in public on v2.
        assert_eq!(rewrite_select(&m, "orders", "*,unmapped(*)").unwrap_err().child.1, "public");
    }

    #[test]
    fn filters_on_embeds_follow_their_renames() {
        let m = map();
        let r = rewrite_select(
            &m,
            "vendor_organizations",
            "id,vendor_api_keys_v2(id,vendor_organizations(id)),k:vendor_api_keys_v2(id)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.key("vendor_api_keys_v2.status"), Some("api_keys.status".into()));
        assert_eq!(r.key("vendor_api_keys_v2.order"), Some("api_keys.order".into()));
        assert_eq!(r.key("vendor_api_keys_v2.vendor_organizations.limit"), Some("api_keys.organizations.limit".into()));
        assert_eq!(r.key("k.status"), None, "an alias is the filter's name, unchanged");
        assert_eq!(r.key("vendor_api_keys_v2"), None, "a column, not an embed's filter");
        assert_eq!(r.key("vendor_api_keys_v2x.a"), None);
        assert_eq!(r.key("id"), None);
    }
}
