//! `switchyard cohort`: which users a change of the percentage moves, as SQL
//! (`cohort sql`) and as rows of each mapped table in a project's database
//! (`cohort count`). The band and its predicate are [`crate::routing::band`]'s.

use serde_json::json;

use crate::backend::BackendId;
use crate::config::Config;
use crate::config::secret::Secret;
use crate::routing::band::{Band, identifier};

/// `cohort sql`: the predicate, or with `json` the band and the predicate.
pub fn sql(band: Option<Band>, column: &str, seed: &[u8], json: bool) -> String {
    let predicate = band.as_ref().map_or_else(|| "false".to_string(), |b| b.predicate(column, seed));
    if !json {
        return predicate;
    }
    json!({
        "band": band.map(|b| json!({ "low": b.low, "high": b.high, "from": b.from, "to": b.to })),
        "column": column,
        "seeded": !seed.is_empty(),
        "predicate": predicate,
    })
    .to_string()
}

/// One table of a project's database that a step may move rows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The v1 `public` name, as the schema map keys it.
    pub name: String,
    /// Where `side` keeps it: (schema, table).
    pub schema: String,
    pub table: String,
}

/// The mapped tables as `side` names them: v1 keeps every one in `public`, v2 where
/// the schema map says.
pub fn tables(config: &Config, side: BackendId) -> Vec<Table> {
    config
        .translation
        .schema
        .tables()
        .into_iter()
        .map(|(name, target)| match side {
            BackendId::V1 => Table { name: name.into(), schema: "public".into(), table: name.into() },
            BackendId::V2 => Table { name: name.into(), schema: target.schema.clone(), table: target.name.clone() },
        })
        .collect()
}

/// `cohort count`: for each mapped table on `side` (reached at `url`), how many rows
/// the band moves, or why none are counted (no such table, no user column).
pub async fn count(
    config: &Config,
    url: &Secret,
    side: BackendId,
    band: Band,
    column: &str,
) -> Result<Vec<(Table, Result<i64, String>)>, String> {
    let client = crate::pg::connect(url, "switchyard cohort", &config.upstream.extra_roots).await?;
    let has_column = "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
                      WHERE table_schema = $1 AND table_name = $2 AND column_name = $3)";
    let mut out = Vec::new();
    for t in tables(config, side) {
        let found = client
            .query_one(has_column, &[&t.schema, &t.table, &column])
            .await
            .map_err(|e| crate::pg::reason(&e))?
            .get::<_, bool>(0);
        let counted = if found {
            let q = format!(
                "SELECT count(*) FROM {}.{} WHERE {}",
                identifier(&t.schema),
                identifier(&t.table),
                band.predicate(column, &config.rollout.hash_seed)
            );
            client.query_one(&q, &[]).await.map(|r| r.get::<_, i64>(0)).map_err(|e| crate::pg::reason(&e))
        } else {
            Err(format!("no {column} column (or no such table): not moved with its users"))
        };
        out.push((t, counted));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_prints_the_predicate_or_the_band_as_json() {
        let band = Band::between(10, 25);
        assert!(sql(band.clone(), "user_id", b"", false).ends_with("BETWEEN 10 AND 24"));
        let v: serde_json::Value = serde_json::from_str(&sql(band, "owner", b"", true)).unwrap();
        assert_eq!(v["band"]["low"], 10);
        assert_eq!(v["band"]["to"], "v2");
        assert!(v["predicate"].as_str().unwrap().contains("\"owner\""));
        assert_eq!(sql(None, "user_id", b"", false), "false", "a step that moves nobody selects nothing");
    }
}
