//! Migrations: SQL files applied once per namespace, in version order, tracked with a checksum
//! in the namespace's `_agora_migrations` table.

use crate::{Dialect, SqlError};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One migration: a version (applied in ascending order) and its SQL, which may hold several
/// statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Orders migrations and identifies an applied one, e.g. `0001_init`.
    pub version: String,
    /// The statements to run, in one transaction.
    pub sql: String,
}

impl Migration {
    /// A migration from its parts.
    pub fn new(version: impl Into<String>, sql: impl Into<String>) -> Migration {
        Migration {
            version: version.into(),
            sql: sql.into(),
        }
    }

    /// The migrations in `dir` for `dialect`: every `NAME.sql`, sorted by name, where a
    /// `NAME.postgres.sql` or `NAME.sqlite.sql` replaces `NAME.sql` for that dialect (and is
    /// ignored for the other). The version is `NAME`. An unreadable folder or file is an
    /// error naming its path.
    pub fn load_dir(dir: &Path, dialect: Dialect) -> Result<Vec<Migration>, SqlError> {
        let unreadable = |path: &Path, err: std::io::Error| {
            SqlError::Config(format!(
                "cannot read migrations from {}: {err}",
                path.display()
            ))
        };
        // NAME -> (generic file, file for this dialect)
        let mut found: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|err| unreadable(dir, err))? {
            let entry = entry.map_err(|err| unreadable(dir, err))?;
            let path = entry.path();
            let Some(file_name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            let Some(stem) = file_name.strip_suffix(".sql") else {
                continue;
            };
            if stem.is_empty() || !path.is_file() {
                continue;
            }
            let (name, specific) = match stem.rsplit_once('.') {
                Some((name, suffix)) if suffix == dialect.as_str() => (name, true),
                Some((_, "postgres" | "sqlite")) => continue,
                _ => (stem, false),
            };
            let sql = std::fs::read_to_string(&path).map_err(|err| unreadable(&path, err))?;
            let slot = found.entry(name.to_owned()).or_default();
            if specific {
                slot.1 = Some(sql);
            } else {
                slot.0 = Some(sql);
            }
        }
        Ok(found
            .into_iter()
            .filter_map(|(version, (generic, specific))| {
                specific.or(generic).map(|sql| Migration { version, sql })
            })
            .collect())
    }

    /// The hex SHA-256 of the SQL, recorded when the migration is applied.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// The migrations still to apply, in version order, after checking that every applied one
/// (version -> checksum) is unchanged.
pub(crate) fn pending<'m>(
    migrations: &'m [Migration],
    applied: &HashMap<String, String>,
) -> Result<Vec<&'m Migration>, SqlError> {
    let mut sorted: Vec<&Migration> = migrations.iter().collect();
    sorted.sort_by(|a, b| a.version.cmp(&b.version));
    for pair in sorted.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(SqlError::Config(format!(
                "migration version {} is given twice",
                pair[0].version
            )));
        }
    }
    let mut todo = Vec::new();
    for migration in sorted {
        if migration.version.is_empty() {
            return Err(SqlError::Config("a migration has an empty version".into()));
        }
        match applied.get(&migration.version) {
            Some(checksum) if *checksum == migration.checksum() => {}
            Some(checksum) => {
                return Err(SqlError::Migration {
                    version: migration.version.clone(),
                    message: format!(
                        "was changed after it was applied (checksum {} applied, {} now); \
                         add a new migration instead of editing an applied one",
                        short(checksum),
                        short(&migration.checksum())
                    ),
                });
            }
            None => todo.push(migration),
        }
    }
    Ok(todo)
}

fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}

/// The error of a migration that failed to apply.
pub(crate) fn failed(version: &str, err: sqlx::Error) -> SqlError {
    SqlError::Migration {
        version: version.to_owned(),
        message: format!(
            "failed, nothing of it was applied: {}",
            SqlError::from(err).detail()
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn versions(migrations: &[Migration]) -> Vec<(&str, &str)> {
        migrations
            .iter()
            .map(|m| (m.version.as_str(), m.sql.as_str()))
            .collect()
    }

    #[test]
    fn load_dir_picks_the_file_of_the_dialect() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("0002_items.sql", "generic items");
        write("0002_items.postgres.sql", "pg items");
        write("0001_init.sql", "generic init");
        write("0003_only_sqlite.sqlite.sql", "sqlite only");
        write("0004_trigger.sqlite.sql", "sqlite trigger");
        write("0004_trigger.sql", "generic trigger");
        write("README.md", "not a migration");
        std::fs::create_dir(dir.path().join("0005_dir.sql")).unwrap();

        let pg = Migration::load_dir(dir.path(), Dialect::Postgres).unwrap();
        assert_eq!(
            versions(&pg),
            [
                ("0001_init", "generic init"),
                ("0002_items", "pg items"),
                ("0004_trigger", "generic trigger"),
            ]
        );
        let sqlite = Migration::load_dir(dir.path(), Dialect::Sqlite).unwrap();
        assert_eq!(
            versions(&sqlite),
            [
                ("0001_init", "generic init"),
                ("0002_items", "generic items"),
                ("0003_only_sqlite", "sqlite only"),
                ("0004_trigger", "sqlite trigger"),
            ]
        );
    }

    #[test]
    fn load_dir_names_a_missing_folder() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = Migration::load_dir(&missing, Dialect::Sqlite).unwrap_err();
        assert!(
            matches!(&err, SqlError::Config(m) if m.contains("nope")),
            "{err}"
        );
    }

    #[test]
    fn pending_checks_checksums_and_orders() {
        let migrations = [Migration::new("2", "b"), Migration::new("1", "a")];
        let mut applied = HashMap::new();
        let todo = pending(&migrations, &applied).unwrap();
        assert_eq!(todo[0].version, "1");
        assert_eq!(todo[1].version, "2");

        applied.insert("1".to_owned(), Migration::new("1", "a").checksum());
        let todo = pending(&migrations, &applied).unwrap();
        assert_eq!(todo.len(), 1);

        applied.insert("2".to_owned(), Migration::new("2", "changed").checksum());
        let err = pending(&migrations, &applied).unwrap_err();
        assert!(matches!(&err, SqlError::Migration { version, .. } if version == "2"));

        let twice = [Migration::new("1", "a"), Migration::new("1", "b")];
        assert!(matches!(
            pending(&twice, &HashMap::new()),
            Err(SqlError::Config(_))
        ));
    }
}
