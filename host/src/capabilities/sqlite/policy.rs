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
/// compile-option introspection functions, `sqlite_log`, full-text search's
/// functions, `json_pretty`, whose output grows with depth times indent
/// before any limit is checked, ...) is denied. Math functions are listed
/// for builds that have them.
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
    // Internal to ALTER TABLE: SQLite calls them itself, and a guest cannot
    // name them ("no such function").
    "sqlite_rename_column",
    "sqlite_rename_table",
    "sqlite_rename_test",
    "sqlite_drop_column",
    "sqlite_rename_quotefix",
];

/// Virtual table modules a guest may create. Full-text search (fts3, fts4,
/// fts5) is not among them: a `MATCH`, and its ranking and snippet
/// functions, run inside one step of SQLite's virtual machine, which no
/// deadline stops (5,000 OR'd terms took 4.4 s, `bm25` over 500 took 175 s).
const VIRTUAL_TABLE_MODULES: &[&str] = &["rtree"];

/// The full-text search tables a database already has (made before
/// full-text search was refused), which a guest may only drop. Run before
/// the wrappers of [`bounded`] are installed, so SQLite's own `LIKE` picks
/// the virtual tables (a prefix, cheap whatever the schema), and Rust the
/// full-text ones among them.
pub fn full_text_tables(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement =
        conn.prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND sql LIKE 'create virtual table%'")?;
    let tables = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
    let mut full_text = Vec::new();
    for table in tables {
        let (name, sql) = table?;
        let sql = sql.to_ascii_lowercase();
        let module = sql.split("using").nth(1).unwrap_or_default().trim_start();
        if ["fts3", "fts4", "fts5"].iter().any(|m| module.starts_with(m)) {
            full_text.push(name);
        }
    }
    Ok(full_text)
}

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

/// Whether a guest may call the SQL function `name`.
pub fn allows_function(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name != "match" && FUNCTIONS.contains(&name.as_str())
}

/// Whether a guest statement may do `action`; `Err` says why not.
/// `full_text` names the full-text tables the database has.
pub fn authorize(action: &AuthAction<'_>, full_text: &[String]) -> Result<(), String> {
    if let Some(table) = table_of(action)
        && table.len() >= HOST_TABLE_PREFIX.len()
        && table[..HOST_TABLE_PREFIX.len()].eq_ignore_ascii_case(HOST_TABLE_PREFIX)
    {
        return Err(format!("{table} belongs to the host"));
    }
    if let Some(table) = table_of(action)
        && full_text.iter().any(|t| t.eq_ignore_ascii_case(table))
        // Dropping one deletes its rows first, each in a step of its own.
        && !matches!(
            action,
            AuthAction::DropTable { .. } | AuthAction::DropVtable { .. } | AuthAction::Delete { .. }
        )
    {
        return Err(format!(
            "{table} is a full-text search table: full-text search is not allowed (a query could run past any \
             deadline); it may only be dropped"
        ));
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
        AuthAction::Function { function_name } if function_name.eq_ignore_ascii_case("match") => {
            Err("MATCH is full-text search, which is not allowed (a query could run past any deadline)".into())
        }
        AuthAction::Function { function_name } => allows_function(function_name)
            .then_some(())
            .ok_or_else(|| format!("the SQL function {function_name} is not allowed")),
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
    set_limits(conn, value_bytes)?;
    bounded::install(conn, value_bytes)
}

/// SQLite's own limits, for values of at most `value_bytes`.
fn set_limits(conn: &rusqlite::Connection, value_bytes: i32) -> rusqlite::Result<()> {
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
    Ok(())
}

/// Built-in functions whose running time grows with the product of their
/// inputs' sizes, within one call: SQLite checks for interrupts only
/// between steps of a statement, so one such call on large inputs could run
/// for seconds or minutes whatever the statement's deadline. Each is
/// replaced by a wrapper that refuses a call whose inputs are too large
/// together (`limit-exceeded`) and runs SQLite's own function on a private
/// in-memory connection otherwise, under the same limits, so results stay
/// exactly SQLite's, JSON subtypes included (a JSON argument is passed on as
/// JSON, and a JSON result comes back as JSON). SECURITY.md lists the cost
/// of every allowed function.
pub mod bounded {
    use std::cell::{Cell, RefCell};

    use rusqlite::functions::SubType;

    use super::*;

    /// How a wrapped function's cost grows with its arguments' sizes.
    #[derive(Clone, Copy)]
    enum Cost {
        /// The first argument's size times the second's: a search of one in
        /// the other, or a scan of one per character of the other.
        Product,
        /// (first + second) × second: a merge that scans the first object
        /// for every key of the second, which also grows the first.
        Merge,
        /// Each path after the first × all the arguments: each path is a
        /// walk (and an edit) of the document; `per_path` arguments follow
        /// the document for each. One path is linear.
        Paths { per_path: usize },
    }

    /// (name, number of arguments or -1 for any, cost, budget, whether it
    /// takes and makes JSON). Budgets keep one call near 50 ms on a 2020s
    /// server core: `instr` and `replace` compare with `memcmp` (~40 GB/s),
    /// LIKE and GLOB take ~2.5 ns a step, `unhex` ~1.5 ns and the trims ~4 ns
    /// per character pair, `json_patch` ~7 ns per key pair (a key is 5 bytes
    /// at least), and an edit of a JSON document may rewrite every level's
    /// header (~17 ns per byte and path when crafted for it).
    const WRAPPED: &[(&str, i32, Cost, u64, bool)] = &[
        ("instr", 2, Cost::Product, 1 << 31, false),
        ("replace", 3, Cost::Product, 1 << 31, false),
        ("trim", 2, Cost::Product, 1 << 23, false),
        ("ltrim", 2, Cost::Product, 1 << 23, false),
        ("rtrim", 2, Cost::Product, 1 << 23, false),
        ("unhex", 2, Cost::Product, 1 << 24, false),
        // `x LIKE p` is like(p, x); with ESCAPE, like(p, x, e).
        ("like", 2, Cost::Product, 1 << 24, false),
        ("like", 3, Cost::Product, 1 << 24, false),
        ("glob", 2, Cost::Product, 1 << 24, false),
        ("json_patch", 2, Cost::Merge, 1 << 27, true),
        ("jsonb_patch", 2, Cost::Merge, 1 << 27, true),
        ("json_set", -1, Cost::Paths { per_path: 2 }, 1 << 22, true),
        ("jsonb_set", -1, Cost::Paths { per_path: 2 }, 1 << 22, true),
        ("json_insert", -1, Cost::Paths { per_path: 2 }, 1 << 22, true),
        ("jsonb_insert", -1, Cost::Paths { per_path: 2 }, 1 << 22, true),
        ("json_replace", -1, Cost::Paths { per_path: 2 }, 1 << 22, true),
        ("jsonb_replace", -1, Cost::Paths { per_path: 2 }, 1 << 22, true),
        ("json_array_insert", -1, Cost::Paths { per_path: 2 }, 1 << 22, true),
        ("jsonb_array_insert", -1, Cost::Paths { per_path: 2 }, 1 << 22, true),
        ("json_remove", -1, Cost::Paths { per_path: 1 }, 1 << 22, true),
        ("jsonb_remove", -1, Cost::Paths { per_path: 1 }, 1 << 22, true),
        ("json_extract", -1, Cost::Paths { per_path: 1 }, 1 << 24, true),
        ("jsonb_extract", -1, Cost::Paths { per_path: 1 }, 1 << 24, true),
    ];

    /// The subtype SQLite gives JSON text ('J').
    const JSON_SUBTYPE: u32 = 74;
    /// The function that reports the subtype of the built-in's result.
    const SUBTYPE_OF: &str = "corral_subtype_of";

    thread_local! {
        /// SQLite's own functions, unwrapped, for this thread.
        static BUILTINS: RefCell<Option<rusqlite::Connection>> = const { RefCell::new(None) };
        /// The subtype of the last built-in result, as `SUBTYPE_OF` saw it.
        static RESULT_SUBTYPE: Cell<u32> = const { Cell::new(0) };
    }

    /// What a call with `sizes` (each argument's length in bytes) costs.
    fn cost(kind: Cost, sizes: &[u64]) -> u64 {
        let size = |i: usize| sizes.get(i).copied().unwrap_or(0);
        match kind {
            Cost::Product => size(0).saturating_mul(size(1)),
            Cost::Merge => size(0).saturating_add(size(1)).saturating_mul(size(1)),
            Cost::Paths { per_path } => {
                let paths = sizes.len().saturating_sub(1).div_ceil(per_path) as u64;
                let all = sizes.iter().fold(0u64, |sum, s| sum.saturating_add(*s));
                paths.saturating_sub(1).saturating_mul(all)
            }
        }
    }

    pub(super) fn install(conn: &rusqlite::Connection, max_value_bytes: i32) -> rusqlite::Result<()> {
        let plain = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_INNOCUOUS;
        for &(name, args, kind, budget, json) in WRAPPED {
            let flags = match json {
                true => plain | FunctionFlags::SQLITE_SUBTYPE | FunctionFlags::SQLITE_RESULT_SUBTYPE,
                false => plain,
            };
            conn.create_scalar_function(name, args, flags, move |ctx| {
                let sizes: Vec<u64> = (0..ctx.len())
                    .map(|i| match ctx.get_raw(i) {
                        ValueRef::Text(b) | ValueRef::Blob(b) => b.len() as u64,
                        _ => 32,
                    })
                    .collect();
                if cost(kind, &sizes) > budget {
                    return Err(too_big());
                }
                let params: Vec<(ValueRef<'_>, bool)> = (0..ctx.len())
                    .map(|i| (ctx.get_raw(i), json && ctx.get_subtype(i) == JSON_SUBTYPE))
                    .collect();
                builtin(name, &params, max_value_bytes).map_err(|e| match e.sqlite_error_code() {
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

    /// Runs SQLite's own `name` on `params` (each with whether it is JSON),
    /// on this thread's plain connection; its result, and its subtype.
    fn builtin(
        name: &str,
        params: &[(ValueRef<'_>, bool)],
        max_value_bytes: i32,
    ) -> rusqlite::Result<(Value, SubType)> {
        BUILTINS.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(builtins()?);
            }
            let conn = cell.as_ref().expect("opened above");
            conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, max_value_bytes)?;
            let args: Vec<String> = params
                .iter()
                .enumerate()
                .map(|(i, (_, json))| match json {
                    true => format!("json(?{})", i + 1),
                    false => format!("?{}", i + 1),
                })
                .collect();
            let sql = format!("SELECT {SUBTYPE_OF}({name}({}))", args.join(", "));
            let mut statement = conn.prepare_cached(&sql)?;
            let values = params.iter().map(|(v, _)| ToSqlOutput::Borrowed(*v));
            RESULT_SUBTYPE.set(0);
            let value = statement.query_row(rusqlite::params_from_iter(values), |row| row.get::<_, Value>(0))?;
            let subtype = RESULT_SUBTYPE.get();
            Ok((value, (subtype != 0).then_some(subtype)))
        })
    }

    /// The plain connection built-ins run on: the guests' limits, and a
    /// function that notes the subtype of what it is given.
    fn builtins() -> rusqlite::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open_in_memory()?;
        set_limits(&conn, i32::MAX)?;
        conn.create_scalar_function(
            SUBTYPE_OF,
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_SUBTYPE,
            |ctx| {
                RESULT_SUBTYPE.set(ctx.get_subtype(0));
                ctx.get::<Value>(0)
            },
        )?;
        Ok(conn)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn costs_grow_as_the_functions_do() {
            assert_eq!(cost(Cost::Product, &[1000, 1000]), 1_000_000);
            assert_eq!(cost(Cost::Merge, &[1000, 10]), 10_100);
            // json_set(doc, path, value, path, value): two paths, the
            // second over every argument (values are copied in too).
            assert_eq!(cost(Cost::Paths { per_path: 2 }, &[1000, 4, 1, 4, 1]), 1010);
            assert_eq!(cost(Cost::Paths { per_path: 2 }, &[1000, 4]), 0, "one path is linear");
            assert_eq!(cost(Cost::Paths { per_path: 1 }, &[1000, 4, 4, 4]), 2 * 1012);
            assert_eq!(cost(Cost::Paths { per_path: 1 }, &[1000]), 0);
            assert_eq!(cost(Cost::Product, &[u64::MAX, 2]), u64::MAX);
        }
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
            "COALESCE",
        ] {
            assert!(authorize(&function(name), &[]).is_ok(), "{name}");
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
            "bm25",
            "snippet",
            "highlight",
            "matchinfo",
            "json_pretty",
        ] {
            assert!(authorize(&function(name), &[]).is_err(), "{name}");
        }
    }
}
