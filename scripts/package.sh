#!/usr/bin/env bash
# Build the Debian package of pg_apikeys for PostgreSQL 15 (Debian's
# postgresql-15):
#   target/package/postgresql-15-pg-apikeys_<version>_<arch>.deb
# It holds the library, the control file, the install script of this version
# (generated from sql/*.sql by cargo pgrx package), every upgrade script
# sql/pg_apikeys--A--B.sql, the install scripts of released versions kept in
# sql/, and the licence. tests/package/check.sh installs it and uses it.
set -euo pipefail
PG_MAJOR=15
. "$(dirname "$0")/env.sh"
cd "$ROOT"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
arch="$(dpkg --print-architecture)"
name="postgresql-$PG_MAJOR-pg-apikeys"
out="$ROOT/target/package"
stage="$out/$name"
deb="$out/${name}_${version}_${arch}.deb"

say "packaging pg_apikeys $version for PostgreSQL $PG_MAJOR ($deb)"
rm -rf "$stage" "$deb"
mkdir -p "$stage"
if ! cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$stage" > "$out/build.log" 2>&1; then
    tail -40 "$out/build.log"
    echo "cargo pgrx package failed: see $out/build.log" >&2
    exit 1
fi
extdir="$stage$("$PG_CONFIG" --sharedir)/extension"
libdir="$stage$("$PG_CONFIG" --pkglibdir)"
test -f "$libdir/pg_apikeys.so"
test -f "$extdir/pg_apikeys--$version.sql"
# released install scripts (cargo pgrx copies only the upgrade scripts)
for f in sql/pg_apikeys--*.sql; do
    install -m 0644 "$f" "$extdir/"
done
doc="$stage/usr/share/doc/$name"
install -d "$doc"
install -m 0644 LICENSE "$doc/copyright"
gzip -9n < CHANGELOG.md > "$doc/changelog.gz"

installed_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
install -d "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: pg_apikeys developers <pg-apikeys@localhost>
Depends: postgresql-$PG_MAJOR, libc6
Section: database
Priority: optional
Installed-Size: $installed_kb
Description: API keys that live, are checked and die inside PostgreSQL
 pg_apikeys is a PostgreSQL extension that runs the whole API-key lifecycle
 in the database: mint (shown once, stored only as SHA-256), verify, rotate,
 revoke and import keys, resolve publishable keys, with row-level security,
 revocation latches and an append-only audit log.
 .
 This package is built for PostgreSQL $PG_MAJOR. Run CREATE EXTENSION pg_apikeys
 in a database, or ALTER EXTENSION pg_apikeys UPDATE to take a new version.
EOF
# every file root-owned and world-readable, whoever builds
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f ! -path "*/DEBIAN/*" -exec chmod 0644 {} +
chmod 0644 "$stage/DEBIAN/control"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
