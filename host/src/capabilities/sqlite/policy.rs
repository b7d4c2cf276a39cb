//! What a guest's SQL may do. The authorizer allows only what is listed
//! here: SQL functions and virtual table modules by name, PRAGMAs from a
//! read-only list; it denies ATTACH, transaction control and temporary
//! objects. SQLite's own per-connection limits bound what one statement can
//! make SQLite allocate or compute, and the few built-in functions whose
//! cost grows with the product of their inputs' sizes are wrapped so that
//! one call cannot run for long (see [`bounded`]).

use rusqlite::config::DbConfig;
use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::AuthAction;
use rusqlite::limits::Limit;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};

use super::pool::DbLimits;

/// SQL functions a guest may call. Anything else (`load_extension`,
/// `fts3_tokenizer` and `fts5`, which pass host pointers, the r-tree and
/// compile-option introspection functions, `sqlite_log`, ...) is denied.
/// Math functions are listed for builds that have them.
const FUNCTIONS: &[&str] = &[
    // Scalar.
    "abs",
    "changes",
    "char",
    "coalesce",
    "concat",
    "concat_ws",
    "format",
    "glob",
    "hex",
    "if",
    "ifnull",
    "iif",
    "instr",
    "last_insert_rowid",
    "length",
    "like",
    "likelihood",
    "likely",
    "lower",
    "ltrim",
    "max",
    "min",
    "nullif",
    "octet_length",
    "printf",
    "quote",
    "random",
    "randomblob",
    "replace",
    "round",
    "rtrim",
    "sign",
    "soundex",
    "sqlite_version",
    "substr",
    "substring",
    "total_changes",
    "trim",
    "typeof",
    "unhex",
    "unicode",
    "unistr",
    "unistr_quote",
    "unlikely",
    "upper",
    "zeroblob",
    // Aggregate and window.
    "avg",
    "count",
    "group_concat",
    "string_agg",
    "sum",
    "total",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // Date and time.
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
    "current_date",
    "current_time",
    "current_timestamp",
    // JSON.
    "json",
    "jsonb",
    "json_array",
    "jsonb_array",
    "json_array_insert",
    "jsonb_array_insert",
    "json_array_length",
    "json_error_position",
    "json_extract",
    "jsonb_extract",
    "->",
    "->>",
    "json_insert",
    "jsonb_insert",
    "json_object",
    "jsonb_object",
    "json_patch",
    "jsonb_patch",
    "json_pretty",
    "json_quote",
    "json_remove",
    "jsonb_remove",
    "json_replace",
    "jsonb_replace",
    "json_set",
    "jsonb_set",
    "json_type",
    "json_valid",
    "json_group_array",
    "jsonb_group_array",
    "json_group_object",
    "jsonb_group_object",
    // Math.
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "ceil",
    "ceiling",
    "cos",
    "cosh",
    "degrees",
    "exp",
    "floor",
    "ln",
    "log",
    "log10",
    "log2",
    "mod",
    "pi",
    "pow",
    "power",
    "radians",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
    // Full-text search on fts3/4/5 tables.
    "match",
    "snippet",
    "offsets",
    "matchinfo",
    "optimize",
    "highlight",
    "bm25",
    // Internal to ALTER TABLE: SQLite calls them itself, and a guest cannot
    // name them ("no such function").
    "sqlite_rename_column",
    "sqlite_rename_table",
    "sqlite_rename_test",
    "sqlite_drop_column",
    "sqlite_rename_quotefix",
];

/// Virtual table modules a guest may create. fts3/fts4 can only use the
/// built-in tokenizers, since `fts3_tokenizer` is denied.
const VIRTUAL_TABLE_MODULES: &[&str] = &["fts3", "fts4", "fts5", "rtree"];

/// Eponymous virtual tables a guest may not read: `dbstat` exposes the
/// file's page layout, and nothing needs it.
const HIDDEN_TABLES: &[&str] = &["dbstat", "sqlite_dbpage"];

/// PRAGMAs a guest may read; anything else, and any write but
/// `user_version`, is denied because it could escape or corrupt the file.
const READABLE_PRAGMAS: &[&str] = &[
    "user_version",
    "application_id",
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "page_count",
    "page_size",
    "freelist_count",
    "max_page_count",
    "data_version",
    "schema_version",
    "foreign_keys",
    "journal_mode",
    "collation_list",
    "function_list",
    "pragma_list",
];

/// PRAGMAs in the readable list whose argument changes a setting rather than
/// naming a table or index to look at.
const SETTINGS: &[&str] = &[
    "user_version",
    "application_id",
    "page_size",
    "max_page_count",
    "foreign_keys",
    "journal_mode",
];

/// Tables the host keeps in a component's database (its event outbox, the
/// deliveries it has processed): a guest may not touch them.
pub const HOST_TABLE_PREFIX: &str = "_corral_";

/// The table an action touches, for those that name one.
fn table_of<'a>(action: &AuthAction<'a>) -> Option<&'a str> {
    match *action {
        AuthAction::Read { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::CreateTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. }
        | AuthAction::CreateVtable { table_name, .. }
        | AuthAction::DropVtable { table_name, .. }
        | AuthAction::Reindex { index_name: table_name }
        | AuthAction::Analyze { table_name }
        | AuthAction::CreateView { view_name: table_name }
        | AuthAction::DropView { view_name: table_name } => Some(table_name),
        _ => None,
    }
}

/// Whether a guest statement may do `action`; `Err` says why not.
pub fn authorize(action: &AuthAction<'_>) -> Result<(), String> {
    if let Some(table) = table_of(action)
        && table.len() >= HOST_TABLE_PREFIX.len()
        && table[..HOST_TABLE_PREFIX.len()].eq_ignore_ascii_case(HOST_TABLE_PREFIX)
    {
        return Err(format!("{table} belongs to the host"));
    }
    match action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Err("ATTACH and DETACH are not allowed".into()),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Err("use the sqlite interface's begin, commit and rollback for transactions".into())
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let readable = READABLE_PRAGMAS.contains(&name.as_str());
            let allowed = match pragma_value {
                None => readable,
                Some(_) => readable && !SETTINGS.contains(&name.as_str()) || name == "user_version",
            };
            allowed
                .then_some(())
                .ok_or_else(|| format!("PRAGMA {pragma_name} is not allowed"))
        }
        AuthAction::Function { function_name } => {
            let name = function_name.to_ascii_lowercase();
            FUNCTIONS
                .contains(&name.as_str())
                .then_some(())
                .ok_or_else(|| format!("the SQL function {function_name} is not allowed"))
        }
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => {
            Err("temporary objects are not allowed: they would outlive the request on a pooled connection".into())
        }
        AuthAction::CreateVtable { module_name, .. }
            if !VIRTUAL_TABLE_MODULES.contains(&module_name.to_ascii_lowercase().as_str()) =>
        {
            Err(format!("virtual table module {module_name} is not allowed"))
        }
        AuthAction::Read { table_name, .. } if HIDDEN_TABLES.contains(&table_name.to_ascii_lowercase().as_str()) => {
            Err(format!("reading {table_name} is not allowed"))
        }
        AuthAction::Unknown { code, .. } => Err(format!("SQLite action {code} is not allowed")),
        _ => Ok(()),
    }
}

/// SQL text of one statement is at most this long.
const MAX_SQL_BYTES: i32 = 1 << 20;

/// Sets SQLite's defensive options and per-connection limits. `limits` size
/// the largest value; the rest are fixed well above what a service needs
/// and well below SQLite's defaults.
pub fn harden(conn: &rusqlite::Connection, limits: &DbLimits) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, false)?;
    let value_bytes = i32::try_from(limits.max_value_bytes).unwrap_or(i32::MAX);
    for (limit, value) in [
        // No attached databases at all: this also stops `VACUUM INTO 'file'`.
        (Limit::SQLITE_LIMIT_ATTACHED, 0),
        (Limit::SQLITE_LIMIT_LENGTH, value_bytes),
        (
            Limit::SQLITE_LIMIT_SQL_LENGTH,
            MAX_SQL_BYTES.min(value_bytes.max(64 << 10)),
        ),
        (Limit::SQLITE_LIMIT_COLUMN, 500),
        (Limit::SQLITE_LIMIT_EXPR_DEPTH, 200),
        (Limit::SQLITE_LIMIT_COMPOUND_SELECT, 100),
        (Limit::SQLITE_LIMIT_VDBE_OP, 100_000),
        (Limit::SQLITE_LIMIT_FUNCTION_ARG, 64),
        (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000),
        (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 10_000),
        (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 10),
        (Limit::SQLITE_LIMIT_WORKER_THREADS, 0),
    ] {
        conn.set_limit(limit, value)?;
    }
    bounded::install(conn, value_bytes)
}

/// Built-in functions whose running time grows with the product of their
/// inputs' lengths: `instr`, `replace` and the two-argument trims compare
/// every position of one input against the other, and `json_patch` every
/// key of one object against the other's. SQLite checks for interrupts
/// only between steps of a statement, so one such call on large inputs
/// could run for seconds. Each is replaced by a wrapper that refuses a call
/// whose inputs are too large together and runs SQLite's own function on a
/// private in-memory connection otherwise, so results stay exactly
/// SQLite's.
pub mod bounded {
    use std::cell::RefCell;

    use super::*;

    /// The largest product of input lengths a call may take, in bytes².
    /// `instr` and `replace` compare bytes with `memcmp`, a few picoseconds
    /// each; a `json_patch` pair costs a string comparison per key pair.
    const BYTE_BUDGET: u64 = 1 << 34;
    const JSON_BUDGET: u64 = 1 << 28;

    /// (name, number of arguments, budget).
    const WRAPPED: &[(&str, i32, u64)] = &[
        ("instr", 2, BYTE_BUDGET),
        ("replace", 3, BYTE_BUDGET),
        ("trim", 2, BYTE_BUDGET),
        ("ltrim", 2, BYTE_BUDGET),
        ("rtrim", 2, BYTE_BUDGET),
        ("json_patch", 2, JSON_BUDGET),
        ("jsonb_patch", 2, JSON_BUDGET),
    ];

    thread_local! {
        /// SQLite's own functions, unwrapped, for this thread.
        static BUILTINS: RefCell<Option<rusqlite::Connection>> = const { RefCell::new(None) };
    }

    pub(super) fn install(conn: &rusqlite::Connection, max_value_bytes: i32) -> rusqlite::Result<()> {
        let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_INNOCUOUS;
        for &(name, args, budget) in WRAPPED {
            let sql = format!(
                "SELECT {name}({})",
                (1..=args).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
            );
            conn.create_scalar_function(name, args, flags, move |ctx| {
                let len = |i: usize| match ctx.get_raw(i) {
                    ValueRef::Text(b) | ValueRef::Blob(b) => b.len() as u64,
                    _ => 32,
                };
                let cost = len(0).saturating_mul(len(1));
                if cost > budget {
                    return Err(too_big());
                }
                let params: Vec<ValueRef<'_>> = (0..ctx.len()).map(|i| ctx.get_raw(i)).collect();
                builtin(&sql, &params, max_value_bytes).map_err(|e| match e.sqlite_error_code() {
                    Some(rusqlite::ErrorCode::TooBig) => too_big(),
                    _ => e,
                })
            })?;
        }
        Ok(())
    }

    /// SQLITE_TOOBIG without a message of our own, which SQLite would
    /// report as a generic error: the guest sees `limit-exceeded`.
    fn too_big() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_TOOBIG), None)
    }

    /// Runs `sql` on this thread's plain connection.
    fn builtin(sql: &str, params: &[ValueRef<'_>], max_value_bytes: i32) -> rusqlite::Result<Value> {
        BUILTINS.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                let conn = rusqlite::Connection::open_in_memory()?;
                conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, i32::MAX)?;
                *cell = Some(conn);
            }
            let conn = cell.as_ref().expect("opened above");
            conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, max_value_bytes)?;
            let mut statement = conn.prepare_cached(sql)?;
            let params = params.iter().map(|v| ToSqlOutput::Borrowed(*v));
            statement.query_row(rusqlite::params_from_iter(params), |row| row.get::<_, Value>(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str) -> AuthAction<'_> {
        AuthAction::Function { function_name: name }
    }

    #[test]
    fn functions_are_allowed_by_name_only() {
        for name in [
            "upper",
            "json_extract",
            "->>",
            "strftime",
            "count",
            "row_number",
            "bm25",
            "COALESCE",
        ] {
            assert!(authorize(&function(name)).is_ok(), "{name}");
        }
        for name in [
            "load_extension",
            "fts3_tokenizer",
            "fts5",
            "fts5_source_id",
            "rtreenode",
            "sqlite_compileoption_get",
            "sqlite_log",
            "readfile",
            "writefile",
            "edit",
        ] {
            assert!(authorize(&function(name)).is_err(), "{name}");
        }
    }
}
