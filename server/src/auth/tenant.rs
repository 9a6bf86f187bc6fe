//! A tenant's boundary around its flows: paths on shared storage under `tenants/<name>/`
//! (walked from the root like every path, so no `..`, absolute path or symbolic link leaves
//! it), Postgres destinations in its own schema `tenant_<name>`, and only the source
//! connections its settings list. The `default` tenant (flows from before tenants, and the
//! operator's) keeps the root and any schema, except the tenants' own.

use crate::config::Tenant;
use crate::pipeline::StorageError;
use crate::pipeline::flow::{Destination, Flow, Source, Table};

use super::DEFAULT_TENANT;

/// Where the tenants' folders are on shared storage.
pub const TENANTS_DIR: &str = "tenants";
/// The start of every tenant's schema name.
const SCHEMA_PREFIX: &str = "tenant_";

/// The boundary of one tenant's runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub tenant: String,
}

/// A part of a flow its tenant may not have: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfBounds {
    pub field: &'static str,
    pub message: String,
}

impl Scope {
    pub fn new(tenant: &str) -> Scope {
        Scope {
            tenant: tenant.to_owned(),
        }
    }

    fn is_default(&self) -> bool {
        self.tenant == DEFAULT_TENANT
    }

    /// The path under shared storage's root of a path the tenant's flow names (relative to
    /// its folder): `tenants/<name>/<path>`; the default tenant's stays as it is but may not
    /// reach into `tenants/`.
    pub fn path(&self, path: &str) -> Result<String, StorageError> {
        crate::pipeline::storage::check_relative(path)?;
        if self.is_default() {
            let first = std::path::Path::new(path)
                .components()
                .find(|c| !matches!(c, std::path::Component::CurDir));
            if first.is_some_and(|c| c.as_os_str() == TENANTS_DIR) {
                return Err(StorageError::TenantsFolder {
                    path: path.to_owned(),
                });
            }
            return Ok(path.to_owned());
        }
        Ok(format!("{TENANTS_DIR}/{}/{path}", self.tenant))
    }

    /// The tenant's own schema (none for the default tenant).
    pub fn schema(&self) -> Option<String> {
        (!self.is_default()).then(|| format!("{SCHEMA_PREFIX}{}", self.tenant))
    }

    /// The table a tenant's destination writes: a table named without a schema (or in
    /// `public`) is in the tenant's schema; another schema is refused. The default tenant's
    /// tables are where they are, but never in a tenant's schema.
    fn table(&self, table: &Table) -> Result<Table, String> {
        match self.schema() {
            None if table.schema.starts_with(SCHEMA_PREFIX) => Err(format!(
                "schema `{}` is a tenant's: the default tenant's tables are elsewhere",
                table.schema
            )),
            None => Ok(table.clone()),
            Some(own) if table.schema == "public" || table.schema == own => Ok(Table {
                schema: own,
                name: table.name.clone(),
            }),
            Some(own) => Err(format!(
                "schema `{}` is not this tenant's: its tables are in `{own}` (name the table without a schema)",
                table.schema
            )),
        }
    }

    /// The flow as this tenant's run executes it (its table in its schema), or every part of
    /// it the tenant may not have. Paths are checked here and confined when opened
    /// (`path`).
    pub fn confine(
        &self,
        flow: &Flow,
        settings: Option<&Tenant>,
    ) -> Result<Flow, Vec<OutOfBounds>> {
        let mut out = Vec::new();
        let mut flow = flow.clone();
        let mut path = |field: &'static str, p: &str| {
            if let Err(e) = self.path(p) {
                out.push(OutOfBounds {
                    field,
                    message: e.to_string(),
                });
            }
        };
        match &flow.source {
            Source::Csv { path: p, .. } | Source::Jsonl { path: p } => path("source.path", p),
            Source::Postgres { .. } => {}
        }
        match &flow.destination {
            Destination::Csv { path: p, .. } | Destination::Jsonl { path: p } => {
                path("destination.path", p)
            }
            Destination::Postgres { .. } => {}
        }
        if let Source::Postgres { connection, .. } = &flow.source {
            let allowed = match settings {
                None => self.is_default(),
                Some(t) => t.sources.as_ref().is_none_or(|s| s.contains(connection)),
            };
            if !allowed {
                out.push(OutOfBounds {
                    field: "source.connection",
                    message: format!(
                        "tenant `{}` may not read through connection `{connection}` (tenants.{}.sources)",
                        self.tenant, self.tenant
                    ),
                });
            }
        }
        if let Destination::Postgres { table, .. } = &mut flow.destination {
            match self.table(table) {
                Ok(t) => *table = t,
                Err(message) => out.push(OutOfBounds {
                    field: "destination.table",
                    message,
                }),
            }
        }
        if out.is_empty() { Ok(flow) } else { Err(out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_path_is_under_its_folder_and_the_default_tenant_stays_out_of_tenants() {
        let acme = Scope::new("acme");
        assert_eq!(
            acme.path("in/a.csv").expect("allowed"),
            "tenants/acme/in/a.csv"
        );
        for bad in ["../x.csv", "/etc/passwd", "a/../../x", ""] {
            assert!(acme.path(bad).is_err(), "{bad}");
        }
        let default = Scope::new(DEFAULT_TENANT);
        assert_eq!(default.path("in/a.csv").expect("allowed"), "in/a.csv");
        for bad in ["tenants/acme/x.csv", "./tenants/x", "tenants"] {
            assert!(default.path(bad).is_err(), "{bad}");
        }
        assert!(default.path("tenantsx/a.csv").is_ok());
    }

    #[test]
    fn a_tenant_table_is_in_its_schema() {
        let t = |schema: &str| Table {
            schema: schema.into(),
            name: "orders".into(),
        };
        let acme = Scope::new("acme");
        assert_eq!(acme.table(&t("public")).expect("allowed"), t("tenant_acme"));
        assert_eq!(
            acme.table(&t("tenant_acme")).expect("allowed"),
            t("tenant_acme")
        );
        assert!(acme.table(&t("tenant_globex")).is_err());
        assert!(acme.table(&t("sales")).is_err());
        let default = Scope::new(DEFAULT_TENANT);
        assert_eq!(default.table(&t("sales")).expect("allowed"), t("sales"));
        assert!(default.table(&t("tenant_acme")).is_err());
    }
}
