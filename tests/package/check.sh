#!/usr/bin/env bash
# The Debian package (make package), checked as a user would meet it:
#  1. its name, fields and file list: the library in PostgreSQL 15's pkglibdir,
#     the control file and every versioned SQL script in its extension dir
#     (this version's install script, every sql/pg_apikeys--*.sql), nothing
#     else but the docs;
#  2. `dpkg -i` installs it (over the files make install put there: the same
#     paths), `dpkg -L` lists them, and the installed files are the package's;
#  3. in the local PostgreSQL 15 cluster: CREATE EXTENSION from the installed
#     files, a key minted and verified; CREATE EXTENSION VERSION '0.1.0' and
#     ALTER EXTENSION UPDATE to this version;
#  4. `dpkg -r` removes it again (and make install puts the build back).
# Ends with "N passed, N failed". Needs root or sudo (dpkg).
set -uo pipefail
PG_MAJOR=15
. "$(dirname "$0")/../../scripts/env.sh"
cd "$ROOT"
unset PGPORT; PGPORT=28815
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

pass=0; fail=0
check() {   # check "what" command...
    local what="$1"; shift
    if "$@" > target/package/check-last.log 2>&1; then
        pass=$((pass + 1)); echo "ok    $what"
    else
        fail=$((fail + 1)); echo "FAIL  $what"; sed 's/^/      /' target/package/check-last.log | tail -20
    fi
}
finish() { echo "$pass passed, $fail failed"; [ "$fail" = 0 ]; exit $?; }

mkdir -p target/package
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
name="postgresql-15-pg-apikeys"
deb="target/package/${name}_${version}_$(dpkg --print-architecture).deb"
if ! scripts/package.sh; then
    fail=$((fail + 1)); echo "FAIL  make package"; finish
fi
pass=$((pass + 1)); echo "ok    make package builds $deb"

pkglibdir="$("$PG_CONFIG" --pkglibdir)"
extdir="$("$PG_CONFIG" --sharedir)/extension"

# -- 1. what the package holds ---------------------------------------------------
fields() {
    [ "$(dpkg-deb -f "$deb" Package)" = "$name" ] &&
    [ "$(dpkg-deb -f "$deb" Version)" = "$version" ] &&
    dpkg-deb -f "$deb" Depends | grep -q "postgresql-15"
}
check "package name, version and Depends: postgresql-15" fields

files_expected() {
    {
        echo "./usr/lib/postgresql/15/lib/pg_apikeys.so"
        echo "./usr/share/postgresql/15/extension/pg_apikeys.control"
        echo "./usr/share/postgresql/15/extension/pg_apikeys--$version.sql"
        for f in sql/pg_apikeys--*.sql; do echo "./usr/share/postgresql/15/extension/$(basename "$f")"; done
        echo "./usr/share/doc/$name/copyright"
        echo "./usr/share/doc/$name/changelog.gz"
    } | sort -u
}
files_listed() { dpkg-deb -c "$deb" | awk '$1 !~ /^d/ {print $6}' | sort -u; }
file_list() { diff <(files_expected) <(files_listed); }
check "file list: library, control file, every versioned SQL script, docs; nothing else" file_list

paths_match_pg_config() {
    [ "$pkglibdir" = /usr/lib/postgresql/15/lib ] && [ "$extdir" = /usr/share/postgresql/15/extension ]
}
check "package paths are PostgreSQL 15's pkglibdir and extension dir" paths_match_pg_config

control_version() { dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/postgresql/15/extension/pg_apikeys.control | grep -qx "default_version = '$version'"; }
check "control file's default_version is $version" control_version

released_scripts_verbatim() {
    local f
    for f in sql/pg_apikeys--*.sql; do
        dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/share/postgresql/15/extension/$(basename "$f")" | cmp -s - "$f" || { echo "$f differs"; return 1; }
    done
}
check "released install and upgrade scripts are packaged byte for byte" released_scripts_verbatim

# -- 2. dpkg -i ------------------------------------------------------------------
check "dpkg -i installs it" $SUDO dpkg -i "$deb"
listed() { dpkg -L "$name" | grep -qx "$pkglibdir/pg_apikeys.so" && dpkg -L "$name" | grep -qx "$extdir/pg_apikeys--0.1.0.sql"; }
check "dpkg -L lists the library and the 0.1.0 script" listed
same_library() { dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/lib/postgresql/15/lib/pg_apikeys.so | cmp -s - "$pkglibdir/pg_apikeys.so"; }
check "the installed library is the package's" same_library

# -- 3. use it ---------------------------------------------------------------------
scripts/cluster.sh restart >/dev/null || { fail=$((fail + 1)); echo "FAIL  cluster start"; finish; }
db=apikeys_package
sql() { psql_local -q -d "$db" -tA "$@"; }
psql_local -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null

create_fresh() {
    sql -c "CREATE EXTENSION pg_apikeys" &&
    [ "$(sql -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_apikeys'")" = "$version" ]
}
check "CREATE EXTENSION pg_apikeys from the installed files gives $version" create_fresh

mint_verify() {
    local out
    out=$(sql <<'SQL'
SELECT apikeys.create_workspace('packaged') AS ws \gset
SELECT key FROM apikeys.create_key(:'ws', 'packaged-key', '{read}') \gset
SELECT count(*) FROM apikeys.verify_key(:'key', '{read}');
SELECT count(*) FROM apikeys.verify_key(:'key', '{write}');
SQL
)
    [ "$out" = $'1\n0' ]
}
check "a key minted from the package verifies (and not beyond its scopes)" mint_verify

update_path() {
    sql -c "DROP EXTENSION pg_apikeys" &&
    sql -c "CREATE EXTENSION pg_apikeys VERSION '0.1.0'" &&
    [ "$(sql -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_apikeys'")" = "0.1.0" ] &&
    sql -c "ALTER EXTENSION pg_apikeys UPDATE" &&
    [ "$(sql -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_apikeys'")" = "$version" ]
}
check "CREATE EXTENSION VERSION '0.1.0', then ALTER EXTENSION UPDATE to $version" update_path
psql_local -q -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null

# -- 4. dpkg -r ----------------------------------------------------------------------
removed() { $SUDO dpkg -r "$name" && [ ! -e "$pkglibdir/pg_apikeys.so" ] && [ ! -e "$extdir/pg_apikeys.control" ]; }
check "dpkg -r removes every file it installed" removed
# put the development build back for the other layers and make run
scripts/install.sh >/dev/null || { fail=$((fail + 1)); echo "FAIL  make install after dpkg -r"; }
finish
