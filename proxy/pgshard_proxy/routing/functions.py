"""Which function calls a query may make and still run on a follower.

Used by :mod:`.classify` when it walks a parsed query. A follower is a hot
standby: it cannot write, assign transaction ids, advance sequences or take
locks that matter to other sessions. A call to a function not known to be
read-only therefore sends the statement to the primary.

Two lists, because sqlglot already recognises many portable built-ins as
typed expressions (``lower(x)`` → ``exp.Lower``; ``now()`` →
``exp.CurrentTimestamp``); every such function is side-effect free in
PostgreSQL, except the names in :data:`NOT_READ_ONLY_KNOWN`. Calls sqlglot
does not know (``exp.Anonymous``: user functions, ``nextval``,
``pg_advisory_lock``, …) are read-only only if listed in
:data:`READ_ONLY_POSTGRES`. Schema-qualified calls (``s.lower(x)``) are never
trusted: the schema may hold a user function of the same name.
"""

from __future__ import annotations

NOT_READ_ONLY_KNOWN: frozenset[str] = frozenset(
    {"next_value_for", "seq1", "seq2", "seq4", "seq8", "current_transaction"}
)
"""sqlglot-known function names (``sql_names()``, lower case) we never send to a follower."""

READ_ONLY_POSTGRES: frozenset[str] = frozenset(
    {
        # strings
        "ascii", "btrim", "chr", "concat", "concat_ws", "format", "initcap", "left",
        "lpad", "ltrim", "md5", "octet_length", "overlay", "position", "quote_ident",
        "quote_literal", "quote_nullable", "regexp_count", "regexp_instr", "regexp_like",
        "regexp_match", "regexp_matches", "regexp_replace", "regexp_split_to_array",
        "regexp_split_to_table", "regexp_substr", "repeat", "replace", "reverse", "right",
        "rpad", "rtrim", "split_part", "starts_with", "strpos", "to_ascii", "to_hex",
        "translate", "encode", "decode", "convert_from", "convert_to", "sha224", "sha256",
        "sha384", "sha512", "string_to_array", "string_to_table", "unistr",
        # numbers
        "cbrt", "ceil", "ceiling", "degrees", "div", "exp", "factorial", "floor", "gcd",
        "lcm", "ln", "log", "log10", "mod", "pi", "power", "radians", "scale", "sign",
        "sqrt", "trim_scale", "trunc", "width_bucket", "random", "random_normal",
        # dates and times (volatile ones read, they do not write)
        "age", "clock_timestamp", "date_bin", "date_part", "isfinite", "justify_days",
        "justify_hours", "justify_interval", "make_date", "make_interval", "make_time",
        "make_timestamp", "make_timestamptz", "statement_timestamp", "timeofday",
        "to_char", "to_date", "to_number", "to_timestamp", "transaction_timestamp",
        # json
        "json_agg", "json_array_elements", "json_array_elements_text", "json_array_length",
        "json_build_array", "json_build_object", "json_each", "json_each_text",
        "json_extract_path", "json_extract_path_text", "json_object", "json_object_agg",
        "json_object_keys", "json_populate_record", "json_strip_nulls", "json_typeof",
        "jsonb_agg", "jsonb_array_elements", "jsonb_array_elements_text",
        "jsonb_array_length", "jsonb_build_array", "jsonb_build_object", "jsonb_each",
        "jsonb_each_text", "jsonb_extract_path", "jsonb_extract_path_text", "jsonb_insert",
        "jsonb_object", "jsonb_object_agg", "jsonb_object_keys", "jsonb_path_exists",
        "jsonb_path_match", "jsonb_path_query", "jsonb_path_query_array",
        "jsonb_path_query_first", "jsonb_populate_record", "jsonb_pretty", "jsonb_set",
        "jsonb_strip_nulls", "jsonb_typeof", "row_to_json", "to_json", "to_jsonb",
        # arrays, sets, aggregates and windows sqlglot leaves anonymous
        "array_append", "array_cat", "array_dims", "array_fill", "array_length",
        "array_lower", "array_ndims", "array_position", "array_positions", "array_prepend",
        "array_remove", "array_replace", "array_to_string", "array_upper", "cardinality",
        "generate_series", "generate_subscripts", "unnest", "bit_and", "bit_or",
        "bool_and", "bool_or", "every", "mode", "percentile_cont", "percentile_disc",
        "string_agg", "xmlagg", "cume_dist", "dense_rank", "first_value", "lag",
        "last_value", "lead", "nth_value", "ntile", "percent_rank", "rank", "row_number",
        # system information (reads only)
        "current_setting", "current_schemas", "format_type", "has_table_privilege",
        "has_schema_privilege", "has_database_privilege", "has_column_privilege",
        "has_function_privilege", "pg_backend_pid", "pg_column_size", "pg_database_size",
        "pg_get_constraintdef", "pg_get_expr", "pg_get_functiondef", "pg_get_indexdef",
        "pg_get_viewdef", "pg_has_role", "pg_indexes_size", "pg_is_in_recovery",
        "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp",
        "pg_postmaster_start_time", "pg_relation_size", "pg_size_bytes", "pg_size_pretty",
        "pg_sleep", "pg_table_is_visible", "pg_table_size", "pg_total_relation_size",
        "pg_typeof", "obj_description", "col_description", "to_regclass", "to_regtype",
        "inet_client_addr", "inet_client_port", "inet_server_addr", "inet_server_port",
        "gen_random_uuid", "uuid_generate_v4", "num_nulls", "num_nonnulls",
    }
)  # fmt: skip
"""PostgreSQL functions sqlglot leaves anonymous that only read (lower case)."""

PINNING: frozenset[str] = frozenset(
    {
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "set_config",
        "dblink_connect",
        "lo_open",
    }
)
"""Calls that leave state in the backend session: the session is pinned to the primary."""

RELEASE_ALL: str = "pg_advisory_unlock_all"
"""Harmless on any backend: a statement that only calls it is replayed like ``RESET ALL``
(asyncpg sends it when a pooled connection is released)."""

SERVER_LOCAL: frozenset[str] = frozenset(
    {
        # functions
        "pg_is_in_recovery", "pg_backend_pid", "inet_server_addr", "inet_server_port",
        "txid_current_if_assigned", "pg_current_xact_id_if_assigned", "pg_stat_get_activity",
        "pg_postmaster_start_time", "pg_conf_load_time", "pg_my_temp_schema",
        "pg_blocking_pids", "pg_safe_snapshot_blocking_pids",
        # views
        "pg_stat_activity", "pg_locks", "pg_stat_ssl", "pg_stat_gssapi", "pg_cursors",
        "pg_prepared_statements", "pg_backend_memory_contexts", "pg_stat_xact_user_tables",
        "pg_stat_xact_all_tables", "pg_stat_xact_user_functions",
    }
)  # fmt: skip
"""Functions and views (lower case) that answer about the server they run on or the
session's own backend there. A session reads them on the server that holds its writes
(the primary), as if it were connected to it (``session`` consistency; ``eventual``
sessions may ask a follower)."""

SERVER_LOCAL_SETTINGS: frozenset[str] = frozenset({"transaction_read_only", "in_hot_standby"})
"""Settings (``SHOW x``, ``current_setting('x')``) a follower answers differently from the
primary although the session did not change them: drivers and pools ask them to find a
writable server (pgjdbc's ``targetServerType=primary``)."""
